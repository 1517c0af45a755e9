"""Checks run before any work starts, each reporting every problem at once.

A bad image or an over-long question found halfway through an extraction would leave a partial
store and waste the time spent; these checks find them first.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from PIL import Image

from superneurons.data.images import DEFAULT_MAX_PIXELS
from superneurons.data.records import Record
from superneurons.errors import DataError, problems_error

Size = tuple[int, int]  # (width, height), as PIL's Image.size


def check_images(records: Sequence[Record], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Size]:
    """Open and fully decode every record's image; a DataError lists every one that fails.
    Returns each image's size (for :func:`check_prompt_lengths`)."""
    problems, sizes = [], []
    for record in records:
        try:
            sizes.append(record.load_image(max_pixels).size)
        except DataError as error:
            problems.append(str(error))
    if problems:
        raise problems_error(DataError, "images", problems)
    return sizes


def context_length(config) -> int | None:
    """The language model's context in tokens, when its (transformers) config states one."""
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None)


def image_token_count(processor, image: Image.Image, prompt: str) -> int:
    """How many tokens the processor adds for ``image`` beyond the prompt's own tokens."""
    with_image = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"]
    return int(with_image.shape[1]) - len(processor.tokenizer(prompt)["input_ids"])


class _ImageTokens:
    """One processor's image token counts by image size, each measured once (see
    :func:`image_token_counts`); the last ``max_sizes`` sizes seen are remembered."""

    def __init__(self, processor: Any, max_sizes: int = 4096) -> None:
        self.processor, self.max_sizes = processor, max_sizes
        self.by_size: OrderedDict[Size, int] = OrderedDict()
        self.by_predicted: dict[int, int] = {}  # the processor's own count -> measured

    def __call__(self, prompt: str, sizes: Sequence[Size]) -> list[int]:
        unknown = list(dict.fromkeys(s for s in sizes if s not in self.by_size))
        predicted = self._predicted(unknown)
        for index, size in enumerate(unknown):
            if predicted is None:
                self._remember(size, self._measure(prompt, size))
                continue
            if predicted[index] not in self.by_predicted:
                self.by_predicted[predicted[index]] = self._measure(prompt, size)
            self._remember(size, self.by_predicted[predicted[index]])
        counts = []
        for size in sizes:
            self.by_size.move_to_end(size)
            counts.append(self.by_size[size])
        return counts

    def _remember(self, size: Size, count: int) -> None:
        self.by_size[size] = count
        while len(self.by_size) > self.max_sizes:
            self.by_size.popitem(last=False)

    def _measure(self, prompt: str, size: Size) -> int:
        # The processor sizes an image's tokens by its size alone, so a blank one of that size
        # measures it.
        return image_token_count(self.processor, Image.new("RGB", size), prompt)

    def _predicted(self, sizes: list[Size]) -> list[int] | None:
        """The processor's own token count of each size (transformers' counting for vLLM), or
        None where it has none."""
        count = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if not sizes or count is None:
            return None
        try:
            predicted = count(image_sizes=[[height, width] for width, height in sizes])
            return [int(n) for n in predicted["num_image_tokens"]]
        except Exception:  # a processor whose counting fails: every size measured
            return None


_COUNTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor -> _ImageTokens


def image_token_counts(processor: Any, prompt: str, sizes: Sequence[Size]) -> list[int]:
    """:func:`image_token_count` of an image of each size, with ``prompt``.

    Each count is measured with the processor itself, on a blank image, once per count the
    processor's own formula (``_get_num_multimodal_tokens``) tells apart — once in all for
    LLaVA, whose images all have the same tokens; once per grid for Qwen-VL — or once per
    distinct size for a processor without one; then remembered for the processor.
    """
    try:
        counter = _COUNTERS[processor]
    except (KeyError, TypeError):
        counter = _ImageTokens(processor)
        with contextlib.suppress(TypeError):  # not weakly referenceable: counted afresh
            _COUNTERS[processor] = counter
    return counter(prompt, sizes)


def overlong_prompts(
    config, processor, prompts: Sequence[str], names: Sequence[str], sizes: Sequence[Size]
) -> list[str | None]:
    """For each prompt, with the image of its size (``sizes[i]``), None when it fits the model's
    context, else the problem in one line naming ``names[i]``.

    The activations are read at the last prompt position, so the prompt itself must fit; a
    longer one runs many times slower and answers nonsense.
    """
    context = context_length(config)
    if context is None or not prompts:
        return [None] * len(prompts)
    extras = image_token_counts(processor, prompts[0], sizes)
    lengths = [len(ids) for ids in processor.tokenizer(list(prompts))["input_ids"]]
    return [
        f"{name}: the prompt is {length + extra} tokens (with the image), beyond the model's "
        f"context of {context}; shorten the question"
        if length + extra >= context
        else None
        for name, length, extra in zip(names, lengths, extras, strict=True)
    ]


def check_prompt_lengths(
    config, processor, prompts: Sequence[str], names: Sequence[str], sizes: Sequence[Size]
) -> None:
    """Refuse prompts that do not fit the model's context, each measured with the tokens of an
    image of its size (``sizes[i]``, as PIL's ``Image.size``): :func:`overlong_prompts`."""
    problems = [p for p in overlong_prompts(config, processor, prompts, names, sizes) if p]
    if problems:
        raise problems_error(DataError, "questions", problems)
