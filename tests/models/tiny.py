"""Tiny random-weight VLMs of every supported architecture, for tests.

Each builder returns a :class:`Tiny`: a real ``*ForConditionalGeneration`` model (seeded, fp32,
eval mode) and a processor that turns ``(images, chat-formatted prompts)`` into model inputs the
way the model's own processor does. The processors are the real transformers classes wrapped
around a word-level tokenizer built in code (Qwen's with their video processor left out, see
:func:`_without_video`), except SmolVLM's, built by hand (see :class:`SmolVLMTinyProcessor`).

Sizes are chosen so that the three sites have three different widths (hidden 32, attention
``num_heads * head_dim`` = 48, MLP 64): a test that reads the wrong module sees the wrong width.
Qwen2-VL and Qwen2.5-VL are the exception: their attention derives ``head_dim`` from the hidden
size, so their attention width is 32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BatchFeature,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)
from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

from superneurons.capture import prepare_inputs
from superneurons.models.loading import LoadedModel

SEED = 0
HIDDEN = 32
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 12  # attention width 48 != hidden, so attn is told apart from resid
INTERMEDIATE = 64
LAYERS = 3

# Every token any tiny processor needs, at fixed ids, then a few words for prompts and answers.
SPECIAL_TOKENS = [
    "<unk>",
    "<pad>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    "<video>",
]
WORDS = [
    "user",
    "assistant",
    "system",
    "is",
    "there",
    "a",
    "an",
    "the",
    "cube",
    "sphere",
    "cylinder",
    "red",
    "blue",
    "green",
    "small",
    "large",
    "left",
    "right",
    "of",
    "in",
    "image",
    "picture",
    "yes",
    "no",
    "what",
    "color",
    "how",
    "many",
    "?",
    ".",
    ",",
    "answer",
    "question",
    "single",
    "word",
]
VOCAB = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
VOCAB_SIZE = len(VOCAB)
PAD_ID = VOCAB["<pad>"]
EOS_ID = VOCAB["<|im_end|>"]


def chatml_template(image_placeholder: str) -> str:
    """A ChatML chat template that renders an image part as ``image_placeholder``."""
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image_placeholder + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


def tiny_tokenizer(chat_template: str) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over :data:`VOCAB` (every special token of every processor)."""
    backend = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<unk>", "<pad>")],
        chat_template=chat_template,
    )
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_llama_text(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny Llama text config (LLaVA, Idefics3, SmolVLM decoders)."""
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=256,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=None,
        **overrides,
    )


def tiny_images(n: int, size: int = 16, seed: int = SEED) -> list[Image.Image]:
    """``n`` random RGB images of ``size`` × ``size`` pixels."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def chat_prompts(processor: Any, questions: list[str]) -> list[str]:
    """Chat-formatted prompts, one image and one question each, with the generation prompt."""
    return [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
        )
        for q in questions
    ]


@dataclass(frozen=True)
class Tiny:
    """A tiny model with the processor that builds its inputs."""

    model: PreTrainedModel
    processor: Any
    image_size: int = 16

    def inputs(self, questions: list[str], seed: int = SEED) -> BatchFeature:
        """Left-padded model inputs for one image per question."""
        images = tiny_images(len(questions), self.image_size, seed)
        return prepare_inputs(self.processor, images, chat_prompts(self.processor, questions))


def _finish(model: PreTrainedModel) -> PreTrainedModel:
    # Greedy generation must be able to stop and pad without warnings about missing ids.
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = EOS_ID
    return model.float().eval()


def tiny_llava() -> Tiny:
    """LLaVA-1.5 layout: CLIP tower (16-px images, 8-px patches, CLS dropped) → Llama decoder."""
    torch.manual_seed(SEED)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=HIDDEN,
            intermediate_size=INTERMEDIATE,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
            projection_dim=HIDDEN,
        ),
        text_config=LlamaConfig(**tiny_llama_text()),
        image_token_index=VOCAB["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=PAD_ID,
    )
    model = LlavaForConditionalGeneration(config)
    template = chatml_template("<image>\n")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"height": 16, "width": 16}, do_center_crop=False, do_resize=True
        ),
        tokenizer=tiny_tokenizer(template),
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=template,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return Tiny(_finish(model), processor)


def tiny_llava_with_other_weights(path: Path) -> LoadedModel:
    """The tiny LLaVA with every weight scaled by 1.5, as a model loaded from ``path``."""
    other = tiny_llava()
    with torch.no_grad():
        for p in other.model.parameters():
            p.mul_(1.5)
    return LoadedModel(other.model, other.processor, "other", path, "local")


def _qwen_ids() -> dict[str, int]:
    return dict(
        image_token_id=VOCAB["<|image_pad|>"],
        video_token_id=VOCAB["<|video_pad|>"],
        vision_start_token_id=VOCAB["<|vision_start|>"],
        vision_end_token_id=VOCAB["<|vision_end|>"],
    )


def _qwen_text(mrope_section: list[int], **extra: Any) -> dict[str, Any]:
    # mrope_section splits head_dim / 2 rotary frequencies between (time, height, width).
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope_section,
        },
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=None,
        **extra,
    )


def _without_video(cls: type) -> type:
    """``cls`` accepting ``video_processor=None``.

    Qwen processors type-check their video processor against ``VideoProcessorMixin``, which
    transformers only exports when torchvision is installed (it is not here). Images-only
    inputs never touch the video processor, so everything else is the real class.
    """

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = f"{cls.__name__}ImagesOnly"
    return ImagesOnly


def _qwen_processor(cls: type, patch_size: int, max_image_tokens: int = 4) -> Any:
    """Exactly 2×2 merged patches (4 image tokens) for any square input by default; with
    ``max_image_tokens`` larger, as many as the image's size gives, from 4 up to it."""
    template = chatml_template("<|vision_start|><|image_pad|><|vision_end|>")
    pixels = (2 * 2 * patch_size) ** 2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": pixels, "longest_edge": pixels * max_image_tokens // 4},
    )
    return _without_video(cls)(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(template),
        video_processor=None,
        chat_template=template,
    )


def qwen2_vl_processor(max_image_tokens: int) -> Any:
    """The tiny Qwen2-VL model's processor, its images' tokens growing with their size."""
    return _qwen_processor(Qwen2VLProcessor, patch_size=4, max_image_tokens=max_image_tokens)


def tiny_qwen2_vl() -> Tiny:
    """Qwen2-VL: ViT, 2×2 patch merging, M-RoPE; Qwen2 decoder (head_dim is hidden / heads)."""
    torch.manual_seed(SEED)
    config = Qwen2VLConfig(
        vision_config=dict(
            depth=2, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=2, patch_size=4, mlp_ratio=2
        ),
        text_config=_qwen_text([2, 1, 1]),
        **_qwen_ids(),
    )
    model = Qwen2VLForConditionalGeneration(config)
    return Tiny(_finish(model), _qwen_processor(Qwen2VLProcessor, patch_size=4))


def tiny_qwen2_5_vl() -> Tiny:
    """Qwen2.5-VL: windowed-attention ViT (one full-attention block) → Qwen2 decoder."""
    torch.manual_seed(SEED)
    config = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=2,
            hidden_size=HIDDEN,
            intermediate_size=INTERMEDIATE,
            num_heads=2,
            patch_size=4,
            out_hidden_size=HIDDEN,
            window_size=16,
            fullatt_block_indexes=[1],
        ),
        text_config=_qwen_text([2, 1, 1]),
        **_qwen_ids(),
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    return Tiny(_finish(model), _qwen_processor(Qwen2_5_VLProcessor, patch_size=4))


def tiny_qwen3_vl() -> Tiny:
    """Qwen3-VL: ViT whose layers 0 and 1 feed DeepStack features into decoder layers 0 and 1."""
    torch.manual_seed(SEED)
    config = Qwen3VLConfig(
        vision_config=dict(
            depth=2,
            hidden_size=HIDDEN,
            intermediate_size=INTERMEDIATE,
            num_heads=2,
            patch_size=4,
            out_hidden_size=HIDDEN,
            num_position_embeddings=16,
            deepstack_visual_indexes=[0, 1],
        ),
        text_config=_qwen_text([2, 2, 2], head_dim=HEAD_DIM),
        **_qwen_ids(),
    )
    model = Qwen3VLForConditionalGeneration(config)
    return Tiny(_finish(model), _qwen_processor(Qwen3VLProcessor, patch_size=4))


def _idefics_vision() -> dict[str, Any]:
    # 32-px images, 8-px patches → 16 patches; pixel shuffle by 2 → 4 image tokens.
    return dict(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )


IDEFICS_IMAGE_SEQ_LEN = 4


def tiny_idefics3() -> Tiny:
    """Idefics3: SigLIP-style tower, pixel shuffle, Llama decoder at ``model.text_model``."""
    torch.manual_seed(SEED)
    config = Idefics3Config(
        vision_config=_idefics_vision(),
        text_config=tiny_llama_text(),
        image_token_id=VOCAB["<image>"],
        scale_factor=2,
        pad_token_id=PAD_ID,
    )
    model = Idefics3ForConditionalGeneration(config)
    template = chatml_template("<image>")
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            do_image_splitting=False,
            size={"longest_edge": 32},
            max_image_size={"longest_edge": 32},
        ),
        tokenizer=tiny_tokenizer(template),
        image_seq_len=IDEFICS_IMAGE_SEQ_LEN,
        chat_template=template,
    )
    return Tiny(_finish(model), processor, image_size=32)


class SmolVLMTinyProcessor:
    """Builds SmolVLM inputs as ``SmolVLMProcessor`` does for unsplit images.

    The real processor cannot be constructed here: it requires the optional ``num2words``
    package and a video processor (torchvision). This one uses the real SmolVLM image processor
    and transformers' own ``get_image_prompt_string`` to expand each ``<image>``.
    """

    def __init__(self, image_processor: SmolVLMImageProcessorPil, tokenizer: Any, seq_len: int):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.image_seq_len = seq_len

    def apply_chat_template(self, conversation: list[dict], **kwargs: Any) -> str:
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, **kwargs)

    def __call__(self, images: list[Image.Image], text: list[str], **kwargs: Any) -> BatchFeature:
        return_tensors = kwargs.pop("return_tensors", None)
        nested = [[image] for image in images]
        image_inputs = self.image_processor(
            nested, return_tensors=return_tensors, return_row_col_info=True
        )
        rows, cols = image_inputs.pop("rows"), image_inputs.pop("cols")
        expanded = []
        for i, prompt in enumerate(text):
            placeholder = get_image_prompt_string(
                rows[i][0],
                cols[i][0],
                self.image_seq_len,
                fake_token_around_image="<fake_token_around_image>",
                image_token="<image>",
                global_image_token="<global-img>",
            )
            expanded.append(prompt.replace("<image>", placeholder, 1))
        text_inputs = self.tokenizer(expanded, return_tensors=return_tensors, **kwargs)
        return BatchFeature({**text_inputs, **image_inputs}, tensor_type=return_tensors)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)


def tiny_smolvlm() -> Tiny:
    """SmolVLM: Idefics3 layout (decoder at ``model.text_model``); hand-built processor."""
    torch.manual_seed(SEED)
    config = SmolVLMConfig(
        vision_config=_idefics_vision(),
        text_config=tiny_llama_text(),
        image_token_id=VOCAB["<image>"],
        scale_factor=2,
        pad_token_id=PAD_ID,
    )
    model = SmolVLMForConditionalGeneration(config)
    template = chatml_template("<image>")
    processor = SmolVLMTinyProcessor(
        SmolVLMImageProcessorPil(
            do_image_splitting=False,
            size={"longest_edge": 32},
            max_image_size={"longest_edge": 32},
        ),
        tiny_tokenizer(template),
        IDEFICS_IMAGE_SEQ_LEN,
    )
    return Tiny(_finish(model), processor, image_size=32)


BUILDERS: dict[str, Callable[[], Tiny]] = {
    "llava": tiny_llava,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "qwen3_vl": tiny_qwen3_vl,
    "idefics3": tiny_idefics3,
    "smolvlm": tiny_smolvlm,
}

QUESTIONS_FOR_BENCH = ["is there a red cube in the image ?", "how many ?"]
