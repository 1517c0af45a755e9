"""The binarisation threshold α swept (paper Fig. 3a), and each site's activation scale."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import clone

from superneurons.analysis.run_data import RunData

FORMAT = "superneurons-analysis-alpha/1"
DEFAULT_GRID = tuple(round(a, 2) for a in np.arange(-3.0, 3.01, 0.5))
QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
_SAMPLE = 1_000_000  # values per site the quantiles are taken from (every k-th value)


def site_scale(store, site: str) -> dict:
    """Mean and standard deviation of every value of ``site`` (exact, one pass over its slabs)
    and quantiles of an evenly strided sample of them."""
    n_layers, width = store.sites[site]
    total = store.n * n_layers * width
    stride = max(1, total // _SAMPLE)
    count, mean, square, sample = 0, 0.0, 0.0, []
    offset = 0
    for layer in range(n_layers):
        values = store.layer(site, layer).astype(np.float64).ravel()
        count += values.size
        mean += values.sum()
        square += np.square(values).sum()
        sample.append(values[(-offset) % stride :: stride])
        offset += values.size
    mean /= count
    std = float(np.sqrt(max(square / count - mean**2, 0.0)))
    quantiles = np.quantile(np.concatenate(sample), QUANTILES)
    return {
        "mean": round(float(mean), 6),
        "std": round(std, 6),
        "quantiles": {
            str(q): round(float(v), 6) for q, v in zip(QUANTILES, quantiles, strict=True)
        },
    }


def alpha(run: RunData, grid: Sequence[float] = DEFAULT_GRID, relative: bool = False) -> dict:
    """For each α of ``grid`` (in units of the sites' pooled standard deviation when
    ``relative``): the best neuron's probing score and the super neurons' validation accuracy,
    the classifier refitted on the probing store with that α and otherwise the run's settings
    (every α's counts from one pass over the store).
    Per site: the activation mean, standard deviation and quantiles, and a note when the grid
    is far narrower than the site's spread (the grid then only probes the distribution's
    centre). The same sweep per site alone is ``by_site``."""
    classifier = run.classifier
    scale = {site: site_scale(run.probe, site) for site in classifier.sites_}
    unit = float(np.sqrt(np.mean([s["std"] ** 2 for s in scale.values()]))) if relative else 1.0
    span = max(abs(a) for a in grid) * unit
    notes = {
        site: f"std {s['std']:.3g} is over 3x the grid's reach ({span:.3g}): try relative=True"
        for site, s in scale.items()
        if s["std"] > 3 * span
    }
    values = [float(a) * unit for a in grid]
    # One pass over the probing store counts every α's votes; each refit reads only counts.
    counts = classifier.count_votes(run.probe_split, run.probe_split.labels, values)
    rows = _sweep(run, classifier, values, counts)
    by_site = {site: _sweep(run, clone(classifier).set_params(sites=[site]), values, counts)
               for site in classifier.sites_}  # fmt: skip
    return {
        "format": FORMAT,
        "metric": classifier.metric,
        "relative": relative,
        "unit": round(unit, 6),
        "grid": rows,
        "best_alpha": _best_alpha(rows),
        "by_site": {site: {"grid": r, "best_alpha": _best_alpha(r)} for site, r in by_site.items()},
        "sites": scale,
        "notes": notes,
    }


def _sweep(run: RunData, classifier, values: Sequence[float], counts) -> list[dict]:
    """The classifier refitted at each α of ``values`` from that α's counts: best probing
    score, SN validation accuracy, number of SNs."""
    probe, val = run.probe_split, run.val_split
    rows = []
    for value, at_alpha in zip(values, counts, strict=True):
        refitted = clone(classifier).set_params(alpha=value)
        refitted.fit(probe, probe.labels, counts=at_alpha)
        best = max(float(np.nanmax(s)) for s in refitted.scores_.values())
        accuracy = float(np.mean(refitted.predict(val) == val.labels))
        rows.append(
            {
                "alpha": round(value, 6),
                "best_probe": round(best, 4),
                "sn_val_accuracy": round(accuracy, 4),
                "n_sn": len(refitted.selected_),
            }
        )
    return rows


def _best_alpha(rows: list[dict]) -> float:
    """The α of the best validation accuracy (ties: the one nearer 0)."""
    return max(rows, key=lambda r: (r["sn_val_accuracy"], -abs(r["alpha"])))["alpha"]
