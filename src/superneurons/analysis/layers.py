"""Where the good neurons are (paper Fig. 3b): per site and layer."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from superneurons.analysis.run_data import RunData

FORMAT = "superneurons-analysis-layers/1"


def layers(run: RunData) -> dict:
    """Per site and layer, for the rule ``a > alpha`` of the run's classifier: the number of
    neurons whose probing accuracy beats the model's probing accuracy, the best neuron's index,
    probing and validation accuracy, and the validation accuracy of the run's linear probe
    fitted on that layer alone (its ``layer_models_``; None without a linear_probe baseline).

    Probing scores are the classifier's own (``scores_``, polarity +1); validation reads one
    column per layer, and one slab per layer for the linear probe; nothing is refitted.
    """
    classifier = run.classifier
    positive = classifier.polarities_.index(1) if 1 in classifier.polarities_ else 0
    val_y = run.val_split.labels
    model_probe = run.model_accuracy(run.probe_split)
    probe = run.baselines.get("linear_probe")
    models = getattr(probe, "layer_models_", {})
    fitted = [
        (site, layer)
        for site, scores in classifier.scores_.items()
        for layer in range(scores.shape[1])
        if site in models and models[site][layer] is not None
    ]

    def linear_accuracy(pair: tuple[str, int]) -> float:
        decision = probe.layer_decision(run.val, *pair)
        return round(float(np.mean((decision > 0) == val_y)), 4)

    # two slabs at a time: widening and the product release the GIL
    with ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        linear_val = dict(zip(fitted, pool.map(linear_accuracy, fitted), strict=True))
    sites = {}
    for site, scores in classifier.scores_.items():
        rows = []
        for layer, layer_scores in enumerate(scores[positive]):
            if np.isnan(layer_scores).all():
                continue  # past the classifier's max_layer
            best = int(np.nanargmax(layer_scores))
            column = run.val.column(site, layer, best)
            linear = linear_val.get((site, layer))
            rows.append(
                {
                    "layer": layer,
                    "n_better_than_model": int(np.count_nonzero(layer_scores > model_probe)),
                    "best_index": best,
                    "best_probe": round(float(layer_scores[best]), 4),
                    "best_val": round(float(np.mean((column > classifier.alpha) == val_y)), 4),
                    "linear_probe_val": linear,
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
