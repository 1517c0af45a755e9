"""The fast input path gives the processor's own tensors, for every architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaProcessor

from models.tiny import BUILDERS, chat_prompts, tiny_images, tiny_llava
from superneurons.fast_inputs import FastInputs, fast_inputs, processor_inputs

QUESTIONS = ["is there a red cube in the image ?", "how many ?", "is it small ?"]
FAST = {"llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"}  # processors the fast path models


def _assert_same(got, want) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


def _images(tiny, n: int, seed: int) -> list:
    # Qwen-VL: images of different sizes have different numbers of image tokens, so rows differ
    # in length and the padding is real.
    sizes = [tiny.image_size, tiny.image_size * 2, tiny.image_size][:n]
    return [tiny_images(1, size, seed + i)[0] for i, size in enumerate(sizes)]


@pytest.mark.parametrize("architecture", sorted(BUILDERS))
def test_equal_to_the_processor_key_by_key(architecture):
    tiny = BUILDERS[architecture]()
    builder = FastInputs(tiny.processor)
    for seed, n in ((0, 3), (1, 1), (2, 2)):  # the first call is checked, the later ones are not
        images, prompts = _images(tiny, n, seed), chat_prompts(tiny.processor, QUESTIONS[:n])
        _assert_same(builder(images, prompts), processor_inputs(tiny.processor, images, prompts))
    assert builder.usable == (architecture in FAST)


def test_the_embedded_default_takes_the_fast_path_at_batch_16():
    from superneurons.bench import scene_set
    from superneurons.data.prompts import Prompter
    from superneurons.models.loading import load_model

    embedded = load_model(None)
    processor = embedded.processor
    prompter = Prompter.for_model("plain", embedded.architecture)
    images, records = scene_set(16, 3)
    prompts = [prompter.chat(processor, r.question, r.choices, r.context) for r in records]
    builder = FastInputs(processor)
    _assert_same(builder(images, prompts), processor_inputs(processor, images, prompts))
    assert builder.usable and builder.checked
    assert (builder(images, prompts)["attention_mask"] == 0).any()  # rows of different lengths


def test_a_prompt_without_its_image_placeholder_gets_the_processors_own_error():
    tiny = tiny_llava()
    images = tiny_images(2)
    prompts = [chat_prompts(tiny.processor, ["how many ?"])[0], "no image here"]
    with pytest.raises(ValueError, match="image"):
        processor_inputs(tiny.processor, images, prompts)
    with pytest.raises(ValueError, match="image"):
        fast_inputs(tiny.processor, images, prompts)


class _ProcessorWithAnExtraOutput(LlavaProcessor):
    """A processor whose call returns something the fast path does not build."""

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        out["extra"] = torch.ones(1)
        return out


def test_a_processor_it_does_not_reproduce_is_used_as_it_is():
    tiny = tiny_llava()
    p = tiny.processor
    other = _ProcessorWithAnExtraOutput(
        image_processor=p.image_processor,
        tokenizer=p.tokenizer,
        patch_size=p.patch_size,
        vision_feature_select_strategy=p.vision_feature_select_strategy,
        chat_template=p.chat_template,
        num_additional_image_tokens=p.num_additional_image_tokens,
    )
    builder = FastInputs(other)
    images, prompts = tiny_images(2), chat_prompts(other, QUESTIONS[:2])
    got = builder(images, prompts)
    assert builder.checked and not builder.usable
    _assert_same(got, processor_inputs(other, images, prompts))
    assert "extra" in got


def test_the_early_exit_bench_times_both_input_paths_on_the_embedded_default():
    from superneurons.bench import input_path_rows

    rows = input_path_rows([1, 4], repeats=2)
    assert [row["batch_size"] for row in rows] == [1, 4]
    for row in rows:
        assert row["fast_path_used"] and row["processor_ms"] > 0 and row["fast_ms"] > 0
        assert row["speedup"] == pytest.approx(row["processor_ms"] / row["fast_ms"], rel=0.01)
