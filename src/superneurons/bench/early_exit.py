"""``superneurons bench early-exit``: full model vs early exit, side by side in one process.

For each model and batch size, the variants run interleaved (one call of each per round) after
warm-up rounds (the first of which counts FLOPs), and the median of the timed rounds is reported.
Variants: the full model (processor + greedy ``generate`` until end of sequence, at most 128 new
tokens — or, for random-weight shapes, a fixed short answer of one word and end of sequence),
early exit at the classifier's exit layer, and early exit at k = 0 and k = 1. The ceiling of each
speedup is the ratio of FLOPs (counted by ``torch.utils.flop_counter`` on the same calls) of the
full model to the early exit; ``fraction_of_ceiling`` is how much of it the speedup reaches.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from superneurons.bench.clock import timed
from superneurons.capture import to_model
from superneurons.early_exit import early_exit_activations


@dataclass
class BenchTarget:
    """One model to benchmark: how to build a batch and run the full model on it."""

    name: str
    model: torch.nn.Module
    make_batch: Callable[[int], dict]  # batch size -> inputs for both paths (timed if it does work)
    generate_kwargs: dict  # how the full model answers
    exits: dict[str, Mapping[str, Sequence[int]]]  # variant name -> sites/layers read
    finish_early: Callable[[str, dict], object] | None = None  # turns scalars into answers


def _flops_and_median_times(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> tuple[dict[str, int], dict[str, float]]:
    """FLOPs of each variant (counted in the first, untimed round) and median seconds of the
    ``repeats`` rounds after the ``warmup`` rounds; one call of every variant per round, timed
    until the device has finished it."""
    flops, times = {}, defaultdict(list)
    for round_ in range(max(1, warmup) + repeats):
        for name, run in variants.items():
            if round_ == 0:
                with FlopCounterMode(display=False) as counter:
                    run()
                flops[name] = counter.get_total_flops()
                continue
            _, seconds = timed(run, device)
            if round_ >= warmup:
                times[name].append(seconds)
    return flops, {name: statistics.median(values) for name, values in times.items()}


def _variants(target: BenchTarget, batch_size: int) -> dict[str, Callable[[], object]]:
    model = target.model

    def full() -> object:
        inputs = to_model(target.make_batch(batch_size), model)
        with torch.inference_mode():
            return model.generate(**inputs, do_sample=False, num_beams=1, **target.generate_kwargs)

    def early(variant: str) -> Callable[[], object]:
        def answer() -> object:
            values = early_exit_activations(
                model, target.make_batch(batch_size), target.exits[variant]
            )
            return target.finish_early(variant, values) if target.finish_early else values

        return answer

    return {"full": full, **{name: early(name) for name in target.exits}}


def bench_target(
    target: BenchTarget, batch_sizes: Sequence[int], repeats: int, warmup: int, log=print
) -> list[dict]:
    """Rows of the benchmark table for one model."""
    rows = []
    for batch_size in batch_sizes:
        variants = _variants(target, batch_size)
        log(
            f"{target.name}, batch {batch_size}: timing {len(variants)} variants "
            f"({warmup} warm-up + {repeats} rounds)"
        )
        flops, times = _flops_and_median_times(variants, repeats, warmup, target.model.device)
        for name, needed in target.exits.items():
            speedup = times["full"] / times[name]
            ceiling = flops["full"] / flops[name]
            rows.append(
                {
                    "model": target.name,
                    "batch_size": batch_size,
                    "exit": name,
                    "k": max(layer for layers in needed.values() for layer in layers),
                    "full_s": round(times["full"], 5),
                    "early_s": round(times[name], 5),
                    "speedup": round(speedup, 3),
                    "ceiling": round(ceiling, 3),
                    "fraction_of_ceiling": round(speedup / ceiling, 3),
                    "full_gflops": round(flops["full"] / 1e9, 3),
                    "early_gflops": round(flops[name] / 1e9, 3),
                }
            )
    return rows
