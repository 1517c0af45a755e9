"""Metrics as the probing set grows (paper Fig. 5)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import clone

from superneurons.analysis.run_data import RunData
from superneurons.classifiers import ModelAnswers
from superneurons.classifiers.counting import subset_counts
from superneurons.metrics import METRICS, binary_metrics

FORMAT = "superneurons-analysis-probe-size/1"
DEFAULT_SIZES = (100, 250, 500, 1000, 2000, 3000)


class RowSubset:
    """An activation source over some rows of a store (what a smaller probing set reads)."""

    def __init__(self, store, rows: np.ndarray) -> None:
        self.store, self.rows = store, rows
        self.sites = store.sites
        self.n_samples = len(rows)

    def layer(self, site: str, layer: int) -> np.ndarray:
        return self.store.layer(site, layer, self.rows)

    def columns(self, site: str, layer: int, indices, rows=None) -> np.ndarray:
        subset = self.rows if rows is None else self.rows[rows]
        return self.store.columns(site, layer, indices, subset)

    def bits(self, site: str, layer: int, rows=None) -> tuple[np.ndarray, str]:
        return self.store.bits(site, layer, self.rows if rows is None else self.rows[rows])


def balanced_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` rows, half of each class (the odd one a "no"), sorted."""
    yes, no = np.flatnonzero(labels), np.flatnonzero(~labels)
    n_yes = min(size // 2, yes.size)
    n_no = min(size - n_yes, no.size)
    return np.sort(np.concatenate([rng.choice(yes, n_yes, False), rng.choice(no, n_no, False)]))


def probe_size(
    run: RunData, sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = 10, seed: int = 0
) -> dict:
    """For each probing-set size up to what the probing store holds, ``repeats`` balanced
    subsets (seeded): the classifier refitted with the run's settings on each (every subset's
    counts from one pass over the store), its validation accuracy, precision, recall and F1 as
    mean ± sd over the repeats; and the model's own validation metrics (the line to beat)."""
    probe, val = run.probe_split, run.val_split
    rng = np.random.default_rng(seed)
    plan = [
        (size, balanced_subset(probe.labels, size, rng))
        for size in sorted({min(s, run.probe.n) for s in sizes})
        for _ in range(repeats if size < run.probe.n else 1)  # the whole set is one subset
    ]
    # One pass over the probing store counts the votes of every subset at once.
    counts = subset_counts(run.classifier, run.probe, probe.labels, [rows for _, rows in plan])
    values: dict[int, dict[str, list[float]]] = {}
    for (size, subset), subset_counts_ in zip(plan, counts, strict=True):
        fitted = clone(run.classifier).fit(
            RowSubset(run.probe, subset), probe.labels[subset], counts=subset_counts_
        )
        scored = binary_metrics(fitted.predict(val), val.labels)
        for metric, value in scored.items():
            values.setdefault(size, {m: [] for m in METRICS})[metric].append(value)
    rows = [
        {
            "size": size,
            "repeats": len(by_metric["accuracy"]),
            **{
                m: {"mean": round(float(np.mean(v)), 4), "sd": round(float(np.std(v)), 4)}
                for m, v in by_metric.items()
            },
        }
        for size, by_metric in values.items()
    ]
    model_metrics = binary_metrics(ModelAnswers().predict(val), val.labels)
    return {
        "format": FORMAT,
        "seed": seed,
        "sizes": rows,
        "model": {m: round(v, 4) for m, v in model_metrics.items()},
    }
