"""The exit-layer trade-off: what each exit layer costs and buys.

For every exit layer k, each activation estimator is refitted with ``max_layer = k`` (from what
its fit already computed: ``refit_up_to``) and scored on the validation split; the early exit
after its deepest layer is timed against the full model (greedy ``generate``), side by side in
one process on the same validation questions. A row is on the Pareto front when no other row is
at least as accurate and at least as fast, and strictly better in one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from superneurons.bench.early_exit import BenchTarget, bench_target
from superneurons.capture import prepare_inputs
from superneurons.classifiers import Estimator, Split
from superneurons.evaluate import MODEL, exit_layer
from superneurons.metrics import bootstrap_ci


def measure_speedups(
    loaded,
    images,
    prompts: Sequence[str],
    sites: Sequence[str],
    layers: Sequence[int],
    repeats: int = 3,
    max_new_tokens: int = 128,
    log=print,
) -> dict[int, float]:
    """Median time of the full model over that of the early exit after layer k, per k: one
    batch of ``images``/``prompts`` (the processor timed on both paths), interleaved rounds."""

    def make_batch(batch_size: int) -> dict:
        return prepare_inputs(
            loaded.processor, list(images[:batch_size]), list(prompts[:batch_size])
        )

    exits = {f"k={k}": {site: [k] for site in sites} for k in layers}
    target = BenchTarget(
        loaded.model_id, loaded.model, make_batch, {"max_new_tokens": max_new_tokens}, exits
    )
    rows = bench_target(target, [len(prompts)], repeats, warmup=1, log=log)
    return {row["k"]: row["speedup"] for row in rows}


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Whether each (accuracy, speedup) point is on the front (None speedup: never)."""
    on_front = []
    for a, s in points:
        dominated = s is None or any(
            s2 is not None and a2 >= a and s2 >= s and (a2 > a or s2 > s) for a2, s2 in points
        )
        on_front.append(not dominated)
    return on_front


def exit_tradeoff(
    fitted: Mapping[str, Estimator],
    probe: Split,
    val: Split,
    layers: Sequence[int],
    speedups: Mapping[int, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Rows ``{"k", "estimator", "exit_layer", "accuracy", "ci95", "speedup", "pareto"}``: each
    estimator of ``fitted`` with ``refit_up_to`` refitted at every k of ``layers`` (the model's
    own row, when ``"model"`` is in ``fitted``, at its last layer and speedup 1)."""
    n_layers = next(iter(val.sites.values()))[0]
    rows = []

    def row(k: int, name: str, estimator: Estimator) -> dict:
        predictions = np.asarray(estimator.predict(val), dtype=bool)
        low, high = bootstrap_ci(predictions, val.labels, "accuracy", n_boot=n_boot, seed=seed)
        deepest = exit_layer(estimator, n_layers)
        speedup = 1.0 if name == MODEL else (speedups or {}).get(deepest)
        return {
            "k": k,
            "estimator": name,
            "exit_layer": deepest,
            "accuracy": round(float(np.mean(predictions == val.labels)), 4),
            "ci95": [round(low, 4), round(high, 4)],
            "speedup": speedup,
        }

    for k in layers:
        for name, estimator in fitted.items():
            if hasattr(estimator, "refit_up_to"):
                rows.append(row(k, name, estimator.refit_up_to(probe, probe.labels, k)))
    if MODEL in fitted:
        rows.append(row(n_layers - 1, MODEL, fitted[MODEL]))
    front = pareto([(r["accuracy"], r["speedup"]) for r in rows])
    for r, on_front in zip(rows, front, strict=True):
        r["pareto"] = on_front
    return rows
