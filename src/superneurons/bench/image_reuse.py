"""``superneurons bench image-reuse``: many questions about one image, with the image work
shared or not, side by side in one process.

A real architecture's shape with random weights (``bench.shapes``) is asked ``questions``
different questions about one image, one after another at batch 1 (a robot asking about a
frame; POPE asks six per image), through the early exit after layer k. Variants, interleaved
(one round of each in turn, fresh caches every round, so the first question of a round always
misses): plain early exit; the image-feature cache (the vision tower and projector run once per
image); the prefix KV cache (further questions run only their own tokens through layers 0..k);
both. The model is built with k + 1 text layers: the early exit never runs the layers after k,
so its time is the full-depth model's, in a fraction of the memory.
"""

from __future__ import annotations

import functools
import statistics

import torch

from superneurons.bench import device_description
from superneurons.bench.clock import timed
from superneurons.bench.shapes import SHAPES, ShapeModel
from superneurons.early_exit import early_exit_activations
from superneurons.image_cache import ImageFeatureCache
from superneurons.prefix_cache import PrefixKVCache

CACHE_BYTES = 1 << 30
QUESTION_TOKENS = 16  # of the shapes' text after the image, the part that differs per question


def question_inputs(shape: ShapeModel, questions: int, seed: int) -> list[dict]:
    """``questions`` batch-1 prompts about the shape's image: the same tokens but for the last
    ``QUESTION_TOKENS`` (seeded), all after the image."""
    base = shape.make_inputs(1)
    ids = base["input_ids"]
    rng = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(questions):
        question = ids.clone()
        question[:, -QUESTION_TOKENS:] = torch.randint(
            2, 30000, (1, QUESTION_TOKENS), generator=rng
        )
        prompts.append(dict(base, input_ids=question))
    return prompts


VARIANTS = {  # name -> (image-feature cache, prefix KV cache)
    "plain": (False, False),
    "image cache": (True, False),
    "prefix cache": (False, True),
    "both caches": (True, True),
}


def _answerer(model: torch.nn.Module, needed: dict, image: bool, prefix: bool):
    """(answer, its caches by name): one round's answerer, with fresh caches."""
    caches = {}
    if image:
        caches["image"] = ImageFeatureCache(CACHE_BYTES)
    if prefix:
        caches["prefix"] = PrefixKVCache(CACHE_BYTES)
    prepare = caches["image"].inject if image else None

    def answer(inputs: dict) -> dict:
        if prefix:
            return caches["prefix"].activations(model, inputs, needed, prepare)
        return early_exit_activations(model, prepare(model, inputs) if image else inputs, needed)

    return answer, caches


def _ask_all(answer, prompts: list[dict], exit_layer: int) -> list[torch.Tensor]:
    return [answer(inputs)[("resid", exit_layer)] for inputs in prompts]


def run_image_reuse_bench(
    shape_name: str,
    exit_layer: int,
    questions: int,
    repeats: int,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    device: str = "cpu",
    log=print,
) -> dict:
    """Median seconds per round of ``questions`` questions for each variant, their speedups over
    plain early exit, and the largest difference of any variant's values from plain's."""
    torch.manual_seed(seed)
    shape = SHAPES[shape_name](dtype=dtype, seed=seed, text_layers=exit_layer + 1, device=device)
    needed = {"resid": [exit_layer]}
    prompts = question_inputs(shape, questions, seed)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    values: dict[str, list[torch.Tensor]] = {}
    hits: dict[str, dict] = {}
    for round_ in range(repeats + 1):  # round 0 warms up and keeps the values
        for name, (image, prefix) in VARIANTS.items():
            answer, caches = _answerer(shape.model, needed, image, prefix)
            ask_all = functools.partial(_ask_all, answer, prompts, exit_layer)
            answers, elapsed = timed(ask_all, shape.model.device)
            if round_ == 0:
                values[name] = answers
                hits[name] = {
                    f"{c}_cache": [cache.hits, cache.misses] for c, cache in caches.items()
                }
            else:
                times[name].append(elapsed)
            log(f"{shape.name} k={exit_layer} {name}: {elapsed:.2f} s for {questions} questions")
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    rows = [
        {
            "variant": name,
            "seconds_per_question": medians[name] / questions,
            "speedup_over_plain": medians["plain"] / medians[name],
            "hits_misses_per_round": hits[name],
            "plain_max_abs_value": max(float(v.float().abs().max()) for v in values["plain"]),
            "max_abs_diff_from_plain": max(
                float((got.float() - want.float()).abs().max())
                for got, want in zip(values[name], values["plain"], strict=True)
            ),
        }
        for name in VARIANTS
    ]
    return {
        "format": "superneurons-bench-image-reuse/1",
        "shape": shape.name,
        "exit_layer": exit_layer,
        "questions_per_image": questions,
        "dtype": str(dtype).removeprefix("torch."),
        "repeats": repeats,
        **device_description(device),
        "rows": rows,
    }
