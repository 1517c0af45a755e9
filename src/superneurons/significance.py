"""Paired comparisons of two answerers on the same questions: McNemar's exact test and a paired
bootstrap interval of the accuracy difference.

Both read per-question correctness only (True where an answerer is right), so they apply to any
pair of estimators — super neurons against the model, a baseline against the model — and pool
over several seeds by concatenating the questions.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from superneurons.metrics import bootstrap_resamples, percentile_interval


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two equal 1-D correctness vectors, got {a.shape} and {b.shape}")
    return a, b


def mcnemar(correct: np.ndarray, reference: np.ndarray) -> dict:
    """McNemar's exact test of ``correct`` against ``reference`` (per-question correctness).

    ``b``: questions only ``correct`` gets right; ``c``: only ``reference`` does. The two-sided
    p-value is the exact binomial test of b successes in b + c trials at 1/2
    (``scipy.stats.binomtest``); 1.0 when they never disagree.
    """
    correct, reference = _paired(correct, reference)
    b = int(np.count_nonzero(correct & ~reference))
    c = int(np.count_nonzero(~correct & reference))
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"b": b, "c": c, "p_value": p_value}


def paired_bootstrap_diff(
    correct: np.ndarray,
    reference: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy(correct) − accuracy(reference), resampling
    questions (the same ones for both); deterministic per seed."""
    correct, reference = _paired(correct, reference)
    if correct.size == 0:
        raise ValueError("paired_bootstrap_diff needs at least one question")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 1 and level in (0, 1), got {n_boot} and {level}")
    difference = correct.astype(np.int8) - reference.astype(np.int8)
    values = np.empty(n_boot)
    for start, idx in bootstrap_resamples(difference.size, n_boot, seed):
        values[start : start + len(idx)] = difference[idx].mean(axis=1)
    return percentile_interval(values, level)


def compare(correct: np.ndarray, reference: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"b", "c", "p_value", "diff_ci95"}``: McNemar and the paired bootstrap together."""
    low, high = paired_bootstrap_diff(correct, reference, n_boot, seed)
    return {**mcnemar(correct, reference), "diff_ci95": [round(low, 4), round(high, 4)]}


def unpaired_bootstrap_diff(
    correct: np.ndarray,
    reference: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy(correct) − accuracy(reference) for two sets of
    different questions, each resampled on its own; deterministic per seed."""
    correct, reference = (np.asarray(v, dtype=bool) for v in (correct, reference))
    if correct.size == 0 or reference.size == 0:
        raise ValueError("unpaired_bootstrap_diff needs questions on both sides")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 1 and level in (0, 1), got {n_boot} and {level}")
    means = []
    for offset, values in enumerate((correct, reference)):
        means.append(np.empty(n_boot))
        for start, idx in bootstrap_resamples(values.size, n_boot, seed + offset):
            means[-1][start : start + len(idx)] = values[idx].mean(axis=1)
    return percentile_interval(means[0] - means[1], level)
