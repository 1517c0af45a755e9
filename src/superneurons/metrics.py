"""Binary metrics, per-neuron scoring, agreement rate, answer parsing and bootstrap intervals.

Pure numpy. The positive class is ``True`` ("yes") throughout. Ratios whose denominator is zero
(precision with no positive prediction, recall with no positive label, ...) are 0.0, silently.
"""

from __future__ import annotations

import re

import numpy as np

from superneurons.data.prompts import LETTERS
from superneurons.errors import ConfigError

METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1")

_COLUMN_CHUNK = 4096  # columns scored at once: bounds the (N, chunk) boolean temporaries
_BOOT_CELLS = 2_000_000  # resampled labels held at once in bootstrap_ci


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def _check_polarity(polarity: int) -> None:
    if polarity not in (1, -1):
        raise ValueError(f"polarity must be +1 or -1, got {polarity!r}")


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def metric_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray, metric: str = "accuracy"
) -> np.ndarray:
    """The metric from confusion counts, elementwise; float64, 0.0 where undefined."""
    _check_metric(metric)
    tp, fp, fn, tn = (np.asarray(c, dtype=np.int64) for c in (tp, fp, fn, tn))
    if metric == "accuracy":
        return _safe_ratio(tp + tn, tp + fp + fn + tn)
    if metric == "precision":
        return _safe_ratio(tp, tp + fp)
    if metric == "recall":
        return _safe_ratio(tp, tp + fn)
    # Harmonic mean of precision and recall, written so that it is 0 whenever tp is 0.
    return _safe_ratio(2 * tp, 2 * tp + fp + fn)


def _as_bool_vector(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr.astype(bool)


def binary_metrics(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of boolean predictions against boolean labels."""
    pred = _as_bool_vector(pred, "pred")
    labels = _as_bool_vector(labels, "labels")
    if pred.shape != labels.shape:
        raise ValueError(f"pred has {pred.size} entries but labels has {labels.size}")
    tp = np.count_nonzero(pred & labels)
    fp = np.count_nonzero(pred & ~labels)
    fn = np.count_nonzero(~pred & labels)
    tn = np.count_nonzero(~pred & ~labels)
    return {m: float(metric_from_counts(tp, fp, fn, tn, m)) for m in METRICS}


def confusion_counts(
    activations: np.ndarray, labels: np.ndarray, alpha: float = 0.0, polarity: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-column (tp, fp, fn, tn) of the rule ``a > alpha`` (polarity +1) or ``a < alpha`` (-1).

    ``activations`` is (N, M), ``labels`` (N,) bool; each count is an int64 array (M,).
    NaN activations never vote yes.
    """
    _check_polarity(polarity)
    if np.ndim(activations) != 2:
        raise ValueError(f"activations must be (N, M), got shape {np.shape(activations)}")
    labels = _as_bool_vector(labels, "labels")
    n, m = activations.shape
    if labels.size != n:
        raise ValueError(f"activations have {n} rows but labels has {labels.size} entries")
    n_pos = int(np.count_nonzero(labels))
    predicted_pos = np.empty(m, dtype=np.int64)
    tp = np.empty(m, dtype=np.int64)
    for start in range(0, m, _COLUMN_CHUNK):
        block = activations[:, start : start + _COLUMN_CHUNK]
        pred = block > alpha if polarity == 1 else block < alpha
        end = start + pred.shape[1]
        predicted_pos[start:end] = pred.sum(axis=0)
        tp[start:end] = pred[labels].sum(axis=0)
    fp = predicted_pos - tp
    fn = n_pos - tp
    tn = (n - n_pos) - fp
    return tp, fp, fn, tn


def neuron_scores(
    activations: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.0,
    metric: str = "accuracy",
    polarity: int = 1,
) -> np.ndarray:
    """The metric of every column's rule ``a > alpha`` (or ``a < alpha``): float64 array (M,)."""
    _check_metric(metric)
    return metric_from_counts(*confusion_counts(activations, labels, alpha, polarity), metric)


def agreement_rate(
    votes: np.ndarray, model_answers: np.ndarray, valid: np.ndarray | None = None
) -> float:
    """Fraction of (sample, SN) pairs where the SN's vote equals the model's answer.

    ``votes`` is (N, K) bool, ``model_answers`` (N,) bool; ``valid`` (N,) bool keeps only the
    rows whose model answer could be parsed. NaN when no pair is left.
    """
    votes = np.asarray(votes, dtype=bool)
    if votes.ndim == 1:
        votes = votes[:, None]
    answers = _as_bool_vector(model_answers, "model_answers")
    if votes.shape[0] != answers.size:
        raise ValueError(f"votes have {votes.shape[0]} rows but model_answers {answers.size}")
    if valid is not None:
        keep = _as_bool_vector(valid, "valid")
        if keep.size != answers.size:
            raise ValueError(f"valid has {keep.size} entries but model_answers {answers.size}")
        votes, answers = votes[keep], answers[keep]
    if votes.size == 0:
        return float("nan")
    return float(np.mean(votes == answers[:, None]))


_PUNCTUATION = re.compile(r"[^\w\s]")


def parse_yes_no(text: str | None) -> str | None:
    """The verdict of a generated yes/no answer: "yes", "no" or None (unparseable).

    LLaVA's POPE rule on the first sentence (text up to the first '.'), lower-cased with
    punctuation removed: a word "no" or "not" means "no". LLaVA maps everything else to "yes";
    here "yes" needs the word "yes", and an answer with neither (empty, "Maybe", "There isn't")
    is None, so that callers can count it instead of silently calling it yes.
    """
    if not text:
        return None
    first = text.split(".", 1)[0]
    words = _PUNCTUATION.sub(" ", first).lower().split()
    if "no" in words or "not" in words:
        return "no"
    if "yes" in words:
        return "yes"
    return None


# "B", "B.", "(B)", "B)", "(B).", "B:"
_CHOICE_ALONE = re.compile(r"\(?([A-Z])\)?[.:]?")
# "B. red", "(B) red", "B) red", "B: red"; a bare "A red cube" is an article, not an option.
_CHOICE_LEADING = re.compile(r"\(?([A-Z])(?:\)[.:]?|[.:])\s")
# "The answer is B", "answer is: (C)"
_CHOICE_PHRASE = re.compile(r"(?i:answer is)\s*:?\s*\(?([A-Z])(?![A-Za-z])")


def parse_choice(text: str | None, n_choices: int) -> str | None:
    """The option letter ("A", "B", ...) a generated answer names, or None.

    Accepts the letter alone or parenthesised ("B", "B.", "(B)"), the letter followed by its
    option ("B. red"), and "The answer is B". Letters beyond ``n_choices`` are None.
    """
    if not 1 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices must be in 1..{len(LETTERS)}, got {n_choices}")
    if not text:
        return None
    stripped = text.strip()
    match = (
        _CHOICE_ALONE.fullmatch(stripped)
        or _CHOICE_LEADING.match(stripped)
        or _CHOICE_PHRASE.search(stripped)
    )
    if match is None:
        return None
    letter = match.group(1)
    return letter if letter in LETTERS[:n_choices] else None


def bootstrap_ci(
    pred: np.ndarray,
    labels: np.ndarray,
    metric: str = "accuracy",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric``, resampling samples; deterministic per seed."""
    _check_metric(metric)
    pred = _as_bool_vector(pred, "pred")
    labels = _as_bool_vector(labels, "labels")
    if pred.shape != labels.shape:
        raise ValueError(f"pred has {pred.size} entries but labels has {labels.size}")
    if pred.size == 0:
        raise ValueError("bootstrap_ci needs at least one sample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = pred.size
    values = np.empty(n_boot)
    for start, idx in bootstrap_resamples(n, n_boot, seed):
        p, y = pred[idx], labels[idx]
        tp = np.count_nonzero(p & y, axis=1)
        fp = np.count_nonzero(p & ~y, axis=1)
        fn = np.count_nonzero(~p & y, axis=1)
        values[start : start + len(idx)] = metric_from_counts(tp, fp, fn, n - tp - fp - fn, metric)
    return percentile_interval(values, level)


def bootstrap_resamples(n: int, n_boot: int, seed: int):
    """``(start, indices)`` chunks of ``n_boot`` resamples of ``n`` rows with replacement, each
    chunk a (rows, n) index array of at most ~2M cells; deterministic per seed."""
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _BOOT_CELLS // n)
    for start in range(0, n_boot, rows_per_chunk):
        yield start, rng.integers(0, n, size=(min(rows_per_chunk, n_boot - start), n))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap ``values``."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)
