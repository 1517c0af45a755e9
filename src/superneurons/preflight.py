"""Checks run before any work starts, each reporting every problem at once.

A bad image or an over-long question found halfway through an extraction would leave a partial
store and waste the time spent; these checks find them first.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from superneurons.data.images import DEFAULT_MAX_PIXELS
from superneurons.data.records import Record
from superneurons.errors import DataError, problems_error


def check_images(records: Sequence[Record], max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Open and fully decode every record's image; a DataError lists every one that fails."""
    problems = []
    for record in records:
        try:
            record.load_image(max_pixels)
        except DataError as error:
            problems.append(str(error))
    if problems:
        raise problems_error(DataError, "images", problems)


def context_length(config) -> int | None:
    """The language model's context in tokens, when its (transformers) config states one."""
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None)


def image_token_count(processor, image: Image.Image, prompt: str) -> int:
    """How many tokens the processor adds for ``image`` beyond the prompt's own tokens."""
    with_image = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"]
    return int(with_image.shape[1]) - len(processor.tokenizer(prompt)["input_ids"])


def check_prompt_lengths(
    config,
    processor,
    prompts: Sequence[str],
    names: Sequence[str],
    image: Image.Image,
) -> None:
    """Refuse prompts that do not fit the model's context (measured with ``image``'s tokens).

    The activations are read at the last prompt position, so the prompt itself must fit; a
    longer one runs many times slower and answers nonsense.
    """
    context = context_length(config)
    if context is None or not prompts:
        return
    extra = image_token_count(processor, image, prompts[0])
    lengths = processor.tokenizer(list(prompts))["input_ids"]
    problems = [
        f"{name}: the prompt is {len(ids) + extra} tokens (with the image), beyond the model's "
        f"context of {context}; shorten the question"
        for name, ids in zip(names, lengths, strict=True)
        if len(ids) + extra >= context
    ]
    if problems:
        raise problems_error(DataError, "questions", problems)
