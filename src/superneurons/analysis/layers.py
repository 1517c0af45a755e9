"""Where the good neurons are (paper Fig. 3b): per site and layer."""

from __future__ import annotations

import numpy as np

from superneurons.analysis.run_data import RunData
from superneurons.classifiers.probes import fit_logistic

FORMAT = "superneurons-analysis-layers/1"


def layers(run: RunData, C: float = 1.0) -> dict:
    """Per site and layer, for the rule ``a > alpha`` of the run's classifier: the number of
    neurons whose probing accuracy beats the model's probing accuracy, the best neuron's index,
    probing and validation accuracy, and the validation accuracy of a logistic regression
    (standardised, ``C``) fitted on that layer's probing slab.

    Probing scores are the classifier's own (``scores_``, polarity +1); validation reads one
    column and one slab per layer.
    """
    classifier = run.classifier
    positive = classifier.polarities_.index(1) if 1 in classifier.polarities_ else 0
    probe_y, val_y = run.probe_split.labels, run.val_split.labels
    model_probe = run.model_accuracy(run.probe_split)
    sites = {}
    for site, scores in classifier.scores_.items():
        rows = []
        for layer, layer_scores in enumerate(scores[positive]):
            if np.isnan(layer_scores).all():
                continue  # past the classifier's max_layer
            best = int(np.nanargmax(layer_scores))
            column = run.val.column(site, layer, best)
            model = fit_logistic(run.probe.layer(site, layer), probe_y, C, 1e-4, 1000)
            probe_val = np.mean((model.decision(run.val.layer(site, layer)) > 0) == val_y)
            rows.append(
                {
                    "layer": layer,
                    "n_better_than_model": int(np.count_nonzero(layer_scores > model_probe)),
                    "best_index": best,
                    "best_probe": round(float(layer_scores[best]), 4),
                    "best_val": round(float(np.mean((column > classifier.alpha) == val_y)), 4),
                    "linear_probe_val": round(float(probe_val), 4),
                }
            )
        sites[site] = rows
    return {
        "format": FORMAT,
        "alpha": classifier.alpha,
        "metric": classifier.metric,
        "model_probe_accuracy": round(model_probe, 4),
        "model_val_accuracy": round(run.model_accuracy(run.val_split), 4),
        "sites": sites,
    }
