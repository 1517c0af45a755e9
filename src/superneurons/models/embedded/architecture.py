"""The embedded default model: a LLaVA-architecture VLM over synthetic scenes.

A small CLIP-style vision tower and a two-layer projector feed SmolLM2-135M-Instruct (30 Llama
decoder layers, or only its first ones: the training record says how many). Everything here is a
plain transformers class, so the assembled checkpoint loads with ``AutoProcessor`` /
``AutoModelForImageTextToText`` like any other LLaVA checkpoint.
"""

from __future__ import annotations

from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)

IMAGE_SIZE = 64
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<|endoftext|>"
END_OF_TURN = "<|im_end|>"

VISION_CONFIG = dict(
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    hidden_act="quick_gelu",
)

# ChatML, as SmolLM2 was tuned on, without its system prompt (it would triple the text length).
# Content may be a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
# The text comes before the image, whatever the order of the parts: image tokens then attend to
# the question, so each can check its own patch against it — a small language model learns to
# answer from the image far more easily that way than when it must search the image from the
# last position (a run with the image first stayed at chance after 4 K training answers).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '\n<image>' }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the image token, padding and the chat template to SmolLM2's tokenizer (in place)."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.padding_side = "left"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerBase) -> LlavaProcessor:
    """A LLaVA processor: CLIP-normalised 64-px images, one token per 8-px patch."""
    image_processor = CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False,
        do_resize=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=prepare_tokenizer(tokenizer),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def build_config(
    text_config, tokenizer: PreTrainedTokenizerBase, decoder_layers: int | None = None
) -> LlavaConfig:
    """LLaVA config around SmolLM2's text config, the image token appended to its vocabulary.

    ``decoder_layers`` keeps only SmolLM2's first layers (None: all 30).
    """
    text_config = text_config.to_dict() if hasattr(text_config, "to_dict") else dict(text_config)
    if decoder_layers is not None:
        available = text_config["num_hidden_layers"]
        if not 1 <= decoder_layers <= available:
            raise ValueError(f"decoder_layers must be 1..{available}, got {decoder_layers}")
        text_config["num_hidden_layers"] = decoder_layers
    text_config.pop("quantization_config", None)
    text_config.pop("_name_or_path", None)
    text_config["vocab_size"] = len(tokenizer)
    text_config["pad_token_id"] = tokenizer.pad_token_id
    text_config["eos_token_id"] = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    text_config["dtype"] = "float32"
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION_CONFIG).to_dict(),
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=NUM_IMAGE_TOKENS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
