"""The binarisation threshold α swept (paper Fig. 3a), and each site's activation scale."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import clone

from superneurons.analysis.run_data import RunData
from superneurons.classifiers.super_neurons import fit_each

FORMAT = "superneurons-analysis-alpha/1"
DEFAULT_GRID = tuple(round(a, 2) for a in np.arange(-3.0, 3.01, 0.5))
QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
_SAMPLE = 1_000_000  # values per site the quantiles are taken from (every k-th value)
_ROWS = 64  # rows of a slab widened at a time


class SiteScale:
    """Exact mean and standard deviation of every value of one site, and quantiles of an evenly
    strided sample of them, from its slabs in any order (``add`` each (N, width) slab once)."""

    def __init__(self, n_samples: int, n_layers: int, width: int) -> None:
        self.per_layer = n_samples * width
        self.stride = max(1, self.per_layer * n_layers // _SAMPLE)
        # layer -> (sum, sum of squares, sample): one entry per slab, so that slabs read on
        # several threads never update the same number.
        self.parts: dict[int, tuple[float, float, np.ndarray]] = {}

    def add(self, layer: int, slab: np.ndarray) -> None:
        """One (N, width) slab of floats (float16 or float32), summed in float64 in cache-sized
        chunks (no widened copy of the slab)."""
        total = squares = 0.0
        for start in range(0, slab.shape[0], _ROWS):
            chunk = slab[start : start + _ROWS].astype(np.float32)
            total += float(np.sum(chunk, dtype=np.float64))
            squares += float(np.sum(np.square(chunk), dtype=np.float64))
        values = slab.reshape(-1)
        first = (-layer * self.per_layer) % self.stride  # every stride-th value of the site
        # a float32 copy: a view would keep the whole slab
        self.parts[layer] = (total, squares, values[first :: self.stride].astype(np.float32))

    def result(self) -> dict:
        count = self.per_layer * len(self.parts)
        mean = sum(part[0] for part in self.parts.values()) / count
        squares = sum(part[1] for part in self.parts.values())
        std = float(np.sqrt(max(squares / count - mean**2, 0.0)))
        sample = np.concatenate([self.parts[k][2] for k in sorted(self.parts)])
        quantiles = np.quantile(sample, QUANTILES)
        return {
            "mean": round(float(mean), 6),
            "std": round(std, 6),
            "quantiles": {
                str(q): round(float(v), 6) for q, v in zip(QUANTILES, quantiles, strict=True)
            },
        }


def _scales(store, sites) -> dict[str, SiteScale]:
    return {site: SiteScale(store.n, *store.sites[site]) for site in sites}


def site_scale(store, site: str) -> dict:
    """Mean and standard deviation of every value of ``site`` (exact, one pass over its slabs)
    and quantiles of an evenly strided sample of them."""
    scale = _scales(store, [site])[site]
    for layer in range(store.sites[site][0]):
        scale.add(layer, store.layer(site, layer))
    return scale.result()


def alpha(run: RunData, grid: Sequence[float] = DEFAULT_GRID, relative: bool = False) -> dict:
    """For each α of ``grid`` (in units of the sites' pooled standard deviation when
    ``relative``): the best neuron's probing score and the super neurons' validation accuracy,
    the classifier refitted on the probing store with that α and otherwise the run's settings
    (every α's counts from one pass over the store).
    Per site: the activation mean, standard deviation and quantiles, and a note when the grid
    is far narrower than the site's spread (the grid then only probes the distribution's
    centre). The same sweep per site alone is ``by_site``."""
    classifier = run.classifier
    if relative:  # the grid's unit is known only after a pass over the store
        scale = {site: site_scale(run.probe, site) for site in classifier.sites_}
        unit = float(np.sqrt(np.mean([s["std"] ** 2 for s in scale.values()])))
        values = [float(a) * unit for a in grid]
        counts = classifier.count_votes(run.probe_split, run.probe_split.labels, values)
    else:
        # One pass over the probing store counts every α's votes and the sites' scale.
        accumulators = _scales(run.probe, classifier.sites_)
        unit, values = 1.0, [float(a) for a in grid]
        counts = classifier.count_votes(
            run.probe_split,
            run.probe_split.labels,
            values,
            also=lambda site, layer, slab: accumulators[site].add(layer, slab.floats()),
        )
        scale = {site: accumulator.result() for site, accumulator in accumulators.items()}
    span = max(abs(a) for a in grid) * unit
    notes = {
        site: f"std {s['std']:.3g} is over 3x the grid's reach ({span:.3g}): try relative=True"
        for site, s in scale.items()
        if s["std"] > 3 * span
    }
    # Every refit (each α, pooled and per site) in one call: their held-out sweeps share reads.
    variants = [classifier] + [clone(classifier).set_params(sites=[s]) for s in classifier.sites_]
    refits = [clone(v).set_params(alpha=a) for v in variants for a in values]
    fitted = fit_each(refits, run.probe_split, run.probe_split.labels, counts * len(variants))
    rows, *per_site = (
        _rows(run, fitted[i * len(values) : (i + 1) * len(values)]) for i in range(len(variants))
    )
    by_site = dict(zip(classifier.sites_, per_site, strict=True))
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


def _rows(run: RunData, fitted: Sequence) -> list[dict]:
    """Per classifier refitted at an α: best probing score, SN validation accuracy, SNs."""
    val = run.val_split
    rows = []
    for refitted in fitted:
        best = max(float(np.nanmax(s)) for s in refitted.scores_.values())
        accuracy = float(np.mean(refitted.predict(val) == val.labels))
        rows.append(
            {
                "alpha": round(float(refitted.alpha), 6),
                "best_probe": round(best, 4),
                "sn_val_accuracy": round(accuracy, 4),
                "n_sn": len(refitted.selected_),
            }
        )
    return rows


def _best_alpha(rows: list[dict]) -> float:
    """The α of the best validation accuracy (ties: the one nearer 0)."""
    return max(rows, key=lambda r: (r["sn_val_accuracy"], -abs(r["alpha"])))["alpha"]
