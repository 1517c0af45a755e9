"""The processor's inputs for one image per prompt, built without its generic per-call work.

A transformers processor's call validates its arguments, merges its keyword defaults, writes each
image placeholder out as the image's tokens in text and tokenizes the long result; on the
embedded default that is about a third of the call at batch 1 and a quarter at batch 16
(``superneurons bench early-exit`` times both paths: its ``input_path``). Here the defaults are
merged once; the images go through the processor's own image processor and its own
``replace_image_token``; each prompt is tokenized as written, its one placeholder is replaced in
id space by the replacement's token ids (tokenized once per distinct replacement, which begins
and ends with special tokens, so it tokenizes alike alone or in context), and rows are
left-padded. The first call for a processor is checked against the processor's own output, key
by key and value by value; where anything differs, or a prompt does not hold exactly one
placeholder, the processor's own call is used.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

_BUILDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor -> FastInputs


def processor_inputs(processor: Any, images: list[Image.Image], prompts: list[str]) -> Any:
    """Left-padded processor inputs for one image per chat-formatted prompt."""
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    # Left padding puts every row's last prompt token at position -1.
    tokenizer.padding_side = "left"
    try:
        return processor(images=images, text=prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side


def fast_inputs(processor: Any, images: list[Image.Image], prompts: list[str]) -> Any:
    """:func:`processor_inputs`, by the fast path where it gives the same tensors."""
    try:
        builder = _BUILDERS[processor]
    except (KeyError, TypeError):
        builder = FastInputs(processor)
        with contextlib.suppress(TypeError):  # not weakly referenceable: checked per call
            _BUILDERS[processor] = builder
    return builder(images, prompts)


class FastInputs:
    """Builds one processor's inputs; see the module's docstring."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.checked = False  # the first call was compared with the processor's own
        self.usable = _can_model(processor)
        self._replacements: dict[str, list[int]] = {}
        if self.usable:
            tokenizer = processor.tokenizer
            merged = processor._merge_kwargs(
                tokenizer_init_kwargs=tokenizer.init_kwargs, return_tensors="pt"
            )
            self._images_kwargs = merged["images_kwargs"]
            text_kwargs = merged["text_kwargs"]
            self._mm_token_types = text_kwargs.get(
                "return_mm_token_type_ids", merged.get("return_mm_token_type_ids", False)
            )
            self._add_special_tokens = text_kwargs.get("add_special_tokens", True)
            self._placeholder = tokenizer.convert_tokens_to_ids(processor.image_token)

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> Any:
        if not self.usable or len(images) != len(prompts):
            return processor_inputs(self.processor, images, prompts)
        built = self._build(images, prompts)
        if built is None:
            return processor_inputs(self.processor, images, prompts)
        if not self.checked:
            self.checked = True
            reference = processor_inputs(self.processor, images, prompts)
            if not _same(built, reference):
                self.usable = False
                return reference
        return built

    def _build(self, images: list[Image.Image], prompts: list[str]) -> BatchFeature | None:
        processor, tokenizer = self.processor, self.processor.tokenizer
        prompt_ids = tokenizer(list(prompts), add_special_tokens=self._add_special_tokens)
        rows = []
        for ids in prompt_ids["input_ids"]:
            if ids.count(self._placeholder) != 1:
                return None  # the processor says what is wrong
            rows.append(ids)
        processed = processor.image_processor(images, **self._images_kwargs)
        for index, ids in enumerate(rows):
            at = ids.index(self._placeholder)
            replacement = processor.replace_image_token(processed, image_idx=index)
            rows[index] = ids[:at] + self._tokens(replacement) + ids[at + 1 :]
        width = max(len(ids) for ids in rows)
        padded = [[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in rows]
        data = {
            "input_ids": torch.tensor(padded),
            "attention_mask": torch.tensor(
                [[0] * (width - len(ids)) + [1] * len(ids) for ids in rows]
            ),
        }
        if self._mm_token_types:
            data["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(padded))
        data.update(processed)
        unused = set(processor.unused_input_names)
        return BatchFeature({k: v for k, v in data.items() if k not in unused})

    def _tokens(self, replacement: str) -> list[int]:
        if replacement not in self._replacements:
            ids = self.processor.tokenizer(replacement, add_special_tokens=False)["input_ids"]
            self._replacements[replacement] = ids
        return self._replacements[replacement]


def _can_model(processor: Any) -> bool:
    """Whether the processor has the parts the fast path uses: one image token, its own
    ``replace_image_token``, a tokenizer with a pad token."""
    tokenizer = getattr(processor, "tokenizer", None)
    replace = getattr(type(processor), "replace_image_token", None)
    return (
        isinstance(processor, ProcessorMixin)
        and tokenizer is not None
        and getattr(processor, "image_processor", None) is not None
        and isinstance(getattr(processor, "image_token", None), str)
        and replace is not None
        and replace is not ProcessorMixin.replace_image_token
        and tokenizer.pad_token_id is not None
    )


def _array(tensor: torch.Tensor) -> np.ndarray:
    # Compared in numpy: a torch comparison in extract's prefetching thread starts a thread team
    # there whose spinning slowed every later forward on the main thread 1.5x (measured).
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _same(built: Any, reference: Any) -> bool:
    if set(built) != set(reference):
        return False
    for key in reference:
        a, b = built[key], reference[key]
        if isinstance(b, torch.Tensor):
            if not isinstance(a, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape:
                return False
            if not np.array_equal(_array(a), _array(b)):
                return False
        elif a != b:
            return False
    return True
