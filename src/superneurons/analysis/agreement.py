"""Agreement with the model as the selection threshold t falls (paper Fig. 4)."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from superneurons.analysis.run_data import RunData
from superneurons.classifiers import ModelAnswers
from superneurons.classifiers.super_neurons import _TOLERANCE, _rank, _votes, aggregate
from superneurons.metrics import agreement_rate

FORMAT = "superneurons-analysis-agreement/1"


def agreement(run: RunData, span: float = 0.15, step: float = 0.01) -> dict:
    """For t from the best probing score down by ``span`` in ``step``s: the number of neurons
    scoring >= t (the SNs at t, the classifier's rule and polarities), their aggregated vote's
    validation accuracy and AR@t, the agreement rate of their votes with the model's answers;
    and Spearman's rank correlation of AR@t with t.

    The neurons are ranked once; the SNs of every t are a prefix of that ranking, so their
    validation votes are read once, for the lowest t.
    """
    classifier = run.classifier
    scores, polarities = classifier.scores_, classifier.polarities_
    best = float(max(np.nanmax(array) for array in scores.values()))
    # Not rounded: the best score itself (a float32 in a loaded classifier) must stay >= t.
    thresholds = [best - i * step for i in range(int(np.floor(span / step + 1e-9)) + 1)]
    ranked = _rank(scores, polarities, thresholds[-1])
    ranked_scores = np.array([neuron.score for neuron in ranked])
    votes = _votes(run.val, ranked, classifier.alpha)
    split = run.val_split
    answers, valid = ModelAnswers().predict(split), ModelAnswers().valid(split)
    rows = []
    for t in thresholds:
        k = int(np.count_nonzero(ranked_scores >= t - _TOLERANCE))
        prediction = aggregate(votes[:, :k], classifier.aggregate)
        rate = agreement_rate(votes[:, :k], answers, valid)
        rows.append(
            {
                "t": round(t, 6),
                "n_sn": k,
                "accuracy": round(float(np.mean(prediction == split.labels)), 4),
                "agreement_rate": None if np.isnan(rate) else round(float(rate), 4),
            }
        )
    rated = [(r["t"], r["agreement_rate"]) for r in rows if r["agreement_rate"] is not None]
    rho = None  # undefined for fewer than 3 points or a constant AR
    if len(rated) > 2 and len({rate for _, rate in rated}) > 1:
        rho = round(float(spearmanr(*zip(*rated, strict=True)).statistic), 4)
    return {
        "format": FORMAT,
        "alpha": classifier.alpha,
        "metric": classifier.metric,
        "aggregate": classifier.aggregate,
        "model_val_accuracy": round(run.model_accuracy(split), 4),
        "thresholds": rows,
        "spearman_rho": rho,
        "ar_falls_as_t_rises": None if rho is None else rho < 0,
    }
