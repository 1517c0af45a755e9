"""The embedded default model: a small LLaVA-architecture VLM over synthetic scenes.

A 3-layer CLIP vision tower (64 wide, one token per 8-px patch of a 64-px image) and LLaVA's
two-layer projector feed an 8-layer Llama decoder (128 wide) trained from scratch with a
word-level vocabulary. Everything is a plain transformers class, so the checkpoint loads with
``AutoProcessor`` / ``AutoModelForImageTextToText`` like any other LLaVA checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

IMAGE_SIZE = 64
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
UNKNOWN_TOKEN = "<unk>"
START_OF_TURN = "<|im_start|>"
END_OF_TURN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, UNKNOWN_TOKEN, IMAGE_TOKEN, START_OF_TURN, END_OF_TURN)
LEADING_PADS = 8  # pad tokens the chat template writes first, attended to like any token

VISION_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    hidden_act="quick_gelu",
)
TEXT_CONFIG = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    # Tied, the answer's softmax drags the embeddings of words not yet told apart together until
    # the decoder cannot tell them apart at all (runs 33-34 in the runs log,
    # git show ff343f0:docs/embedded-model.md).
    tie_word_embeddings=False,
)

# ChatML without a system prompt, after LEADING_PADS pads. Content may be a string or a list of
# {"type": "image"} / {"type": "text", "text": ...} parts. The text comes before the image,
# whatever the order of the parts: image tokens then attend to the question, so each can check its
# own patch against it (a small decoder learns to answer from the image far more easily that way).
# The decoder was trained with attended left padding and leans on it (run 26 in the runs log,
# git show ff343f0:docs/embedded-model.md): the pads in front give it that context whatever
# the batch.
CHAT_TEMPLATE = (
    "{{ '" + PAD_TOKEN * LEADING_PADS + "' }}"
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

# Words: a newline, a run of letters/digits, or one punctuation mark; spaces only separate.
_PRE_TOKENIZER = pre_tokenizers.Sequence(
    [
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Split(Regex(" +"), behavior="removed"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ]
)


def split_words(text: str) -> list[str]:
    """``text`` cut into the tokenizer's words (special tokens are not recognised here)."""
    return [word for word, _ in _PRE_TOKENIZER.pre_tokenize_str(text)]


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word of ``texts`` (sorted, after the
    special tokens and the chat template's words); other words map to ``<unk>``."""
    words = {"user", "assistant", "\n"}
    for text in texts:
        words.update(split_words(text))
    vocab = {token: k for k, token in enumerate([*SPECIAL_TOKENS, *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNKNOWN_TOKEN))
    backend.pre_tokenizer = _PRE_TOKENIZER
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNKNOWN_TOKEN,
        eos_token=END_OF_TURN,
        extra_special_tokens=[IMAGE_TOKEN, START_OF_TURN],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """A LLaVA processor: CLIP-normalised 64-px images, one token per 8-px patch."""
    image_processor = CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False,
        do_resize=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def build_config(tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    """The LLaVA config: :data:`VISION_CONFIG`'s tower, :data:`TEXT_CONFIG`'s decoder."""
    text_config = LlamaConfig(
        **TEXT_CONFIG,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
    )
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION_CONFIG).to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=NUM_IMAGE_TOKENS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=TEXT_CONFIG["tie_word_embeddings"],
    )
