"""The checks before work starts: every prompt measured against the model's context with the
tokens of its own image, for processors whose image tokens grow with the image's size."""

from __future__ import annotations

import pytest
from PIL import Image

from superneurons.errors import DataError
from superneurons.preflight import (
    check_prompt_lengths,
    image_token_count,
    image_token_counts,
    overlong_prompts,
)
from tests.models.tiny import BUILDERS, chat_prompts, qwen2_vl_processor, tiny_qwen2_vl

SIZES = [(16, 16), (40, 24), (64, 64), (24, 72), (16, 16), (130, 20)]


def _image(size: tuple[int, int]) -> Image.Image:
    width, height = size
    return Image.frombytes("RGB", size, bytes((i * 7) % 251 for i in range(3 * width * height)))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_counts_by_size_equal_the_processor_on_each_image(name):
    processor = BUILDERS[name]().processor
    (prompt,) = chat_prompts(processor, ["is it red ?"])
    expected = [image_token_count(processor, _image(size), prompt) for size in SIZES]
    assert image_token_counts(processor, prompt, SIZES) == expected
    assert image_token_counts(processor, prompt, SIZES[::-1]) == expected[::-1]  # remembered


def test_counts_follow_the_image_size_where_the_processor_does():
    processor = qwen2_vl_processor(max_image_tokens=64)
    (prompt,) = chat_prompts(processor, ["is it red ?"])
    sizes = [(16, 16), (32, 32), (64, 64)]
    counts = image_token_counts(processor, prompt, sizes)
    assert counts == [image_token_count(processor, _image(s), prompt) for s in sizes]
    assert counts[0] < counts[1] < counts[2]


def test_a_later_larger_image_that_overflows_the_context_is_refused():
    # The first image's tokens fit; the third's, 16 times as many pixels (and tokens), do not.
    # Measured with the first image alone, as before, the third prompt passed and was read past
    # the model's context.
    processor = qwen2_vl_processor(max_image_tokens=64)
    config = tiny_qwen2_vl().model.config
    prompts = chat_prompts(processor, ["is it red ?"] * 3)
    sizes = [(16, 16), (16, 16), (64, 64)]
    small, large = (len(processor(images=[_image(s)], text=[prompts[0]])["input_ids"][0])
                    for s in (sizes[0], sizes[2]))  # fmt: skip
    config.text_config.max_position_embeddings = (small + large) // 2
    problems = overlong_prompts(config, processor, prompts, ["a", "b", "c"], sizes)
    assert problems[:2] == [None, None]
    assert problems[2] == (
        f"c: the prompt is {large} tokens (with the image), beyond the model's context of "
        f"{(small + large) // 2}; shorten the question"
    )
    with pytest.raises(DataError, match=r"^c: the prompt is"):
        check_prompt_lengths(config, processor, prompts, ["a", "b", "c"], sizes)
    check_prompt_lengths(config, processor, prompts[:2], ["a", "b"], sizes[:2])
