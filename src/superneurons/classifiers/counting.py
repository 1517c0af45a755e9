"""How often each neuron's rule votes yes, counted for many thresholds and many row groups in one
pass over the slabs.

Every score a super-neuron classifier needs is a ratio of confusion counts, and a count is a sum
over rows: the votes of ``a > alpha`` (polarity +1) or ``a < alpha`` (-1) summed over the "yes"
rows and over the "no" rows of the probing set, and of its held-out part. So one read of a slab
serves every α of a sweep (a comparison each) and every probing subset of a size sweep (one
matrix product of an indicator of the subsets' rows with the votes). NaN never votes yes.

:meth:`SuperNeuronClassifier.count_votes` and :func:`subset_counts` give :class:`VoteCounts`
that ``SuperNeuronClassifier.fit(..., counts=...)`` takes instead of reading the slabs itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from superneurons.classifiers.base import layers_read, read_slab
from superneurons.metrics import metric_from_counts

# Group order of a count: (yes, fit part), (no, fit part), then (yes, held), (no, held).
_CHUNK = 255  # rows summed in uint8 before widening: no overflow


@dataclass
class VoteCounts:
    """Votes for "yes" per site, ``(P, G, n_layers, width)`` int64 (P: ``polarities``, G: the
    groups (yes, no) of the fit part then, with a held-out part, of the held part; -1 in layers
    not read), at threshold ``alpha``, with each group's size (``sizes``)."""

    alpha: float
    polarities: tuple[int, ...]
    counts: dict[str, np.ndarray]
    sizes: np.ndarray  # (G,)

    @property
    def has_held(self) -> bool:
        return len(self.sizes) == 4

    def scores(self, metric: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(scores on all rows, scores on the fit part (empty without a held-out part)):
        ``(P, n_layers, width)`` per site, NaN in the layers not read."""
        full, fit = {}, {}
        yes, no = self.sizes[0::2].sum(), self.sizes[1::2].sum()
        for site, counts in self.counts.items():
            unread = counts[:, 0] < 0
            tp, fp = counts[:, 0::2].sum(axis=1), counts[:, 1::2].sum(axis=1)
            scores = metric_from_counts(tp, fp, yes - tp, no - fp, metric)
            full[site] = np.where(unread, np.nan, scores)
            if self.has_held:
                tp, fp = counts[:, 0], counts[:, 1]
                fit_yes, fit_no = self.sizes[0], self.sizes[1]
                scores = metric_from_counts(tp, fp, fit_yes - tp, fit_no - fp, metric)
                fit[site] = np.where(unread, np.nan, scores)
        return full, fit


def row_groups(y: np.ndarray, held: np.ndarray | None) -> np.ndarray:
    """Each row's group: 0 yes and 1 no in the fit part, 2 yes and 3 no held out."""
    group = np.where(y, 0, 1)
    return group if held is None else group + 2 * held


def slab_pass(
    source,
    sites: Mapping[str, tuple[int, int]],
    n_rows: int,
    max_layer: int | None,
    visit: Callable[[str, int, np.ndarray], None],
    workers: int | None = None,
) -> None:
    """Call ``visit(site, layer, slab)`` once for every float32 (N, width) slab of the layers
    <= ``max_layer``, ``workers`` slabs at a time (numpy releases the GIL while it reads and
    compares; default: up to 2). ``visit`` writes each layer's results into its own slice."""
    jobs = [
        (site, layer, width)
        for site, (n_layers, width) in sites.items()
        for layer in layers_read(n_layers, max_layer)
    ]

    def one(job: tuple[str, int, int]) -> None:
        site, layer, width = job
        visit(site, layer, read_slab(source, site, layer, n_rows, width))

    workers = workers or min(2, os.cpu_count() or 1)
    if workers == 1:
        for job in jobs:
            one(job)
        return
    with ThreadPoolExecutor(workers) as pool:
        for done in pool.map(one, jobs):  # re-raises a slab's error here
            del done


def _votes(x: np.ndarray, alpha: float, polarity: int) -> np.ndarray:
    return x > alpha if polarity > 0 else x < alpha


def partition_counts(
    x: np.ndarray,
    alphas: Sequence[float],
    polarities: Sequence[int],
    order: np.ndarray,
    bounds: np.ndarray,
) -> np.ndarray:
    """(A, P, G, W) votes of slab ``x`` (N, W) summed over disjoint row groups: group g is rows
    ``order[bounds[g]:bounds[g + 1]]``."""
    ordered = x[order]
    out = np.zeros((len(alphas), len(polarities), len(bounds) - 1, x.shape[1]), np.int64)
    for a, alpha in enumerate(alphas):
        for p, polarity in enumerate(polarities):
            votes = _votes(ordered, alpha, polarity).view(np.uint8)
            for g in range(len(bounds) - 1):
                for start in range(bounds[g], bounds[g + 1], _CHUNK):
                    stop = min(start + _CHUNK, bounds[g + 1])
                    out[a, p, g] += np.add.reduce(votes[start:stop], axis=0, dtype=np.uint8)
    return out


def indicator_counts(
    x: np.ndarray, alpha: float, polarities: Sequence[int], indicator: np.ndarray
) -> np.ndarray:
    """(P, G, W) votes of slab ``x`` (N, W) summed over the rows of each group, ``indicator``
    (G, N) float32 of 0/1 (groups may overlap): a matrix product, exact below 2**24 rows."""
    out = np.empty((len(polarities), indicator.shape[0], x.shape[1]), np.int64)
    for p, polarity in enumerate(polarities):
        out[p] = np.rint(indicator @ _votes(x, alpha, polarity).astype(np.float32))
    return out


def vote_counts(
    source,
    sites: Mapping[str, tuple[int, int]],
    y: np.ndarray,
    held: np.ndarray | None,
    alphas: Sequence[float],
    polarities: tuple[int, ...],
    max_layer: int | None = None,
    workers: int | None = None,
    also: Callable[[str, int, np.ndarray], None] | None = None,
) -> list[VoteCounts]:
    """Per α of ``alphas``, the votes of every neuron summed over the yes and the no rows of
    the fit part and (with ``held``) of the held-out part: one pass over the slabs;
    ``also(site, layer, slab)`` is called with every slab read, for whatever else the caller
    counts in the same pass."""
    group, n_groups = row_groups(y, held), _n_groups(held)
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=n_groups)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    counts = {
        site: np.full((len(alphas), len(polarities), n_groups, n, w), -1, np.int64)
        for site, (n, w) in sites.items()
    }

    def visit(site: str, layer: int, slab: np.ndarray) -> None:
        counts[site][:, :, :, layer] = partition_counts(slab, alphas, polarities, order, bounds)
        if also is not None:
            also(site, layer, slab)

    slab_pass(source, sites, y.size, max_layer, visit, workers)
    return [
        VoteCounts(float(alpha), polarities, {s: c[a] for s, c in counts.items()}, sizes)
        for a, alpha in enumerate(alphas)
    ]


def _n_groups(held: np.ndarray | None) -> int:
    return 2 if held is None else 4


def subset_counts(
    classifier,
    source,
    labels: np.ndarray,
    subsets: Sequence[np.ndarray],
    workers: int | None = None,
) -> list[VoteCounts]:
    """For each subset of rows (indices into ``source``), the counts ``classifier`` fitted on
    that subset alone needs (its own held-out part included): one pass over the slabs, every
    subset's groups counted together."""
    sites = classifier.fit_sites(source)
    polarities = classifier.polarities
    groups, sizes = [], []
    for rows in subsets:
        held = classifier.heldout_rows(labels[rows])
        subset_group, n_groups = row_groups(labels[rows], held), _n_groups(held)
        for g in range(n_groups):
            member = np.zeros(labels.size, np.float32)
            member[rows[subset_group == g]] = 1.0
            groups.append(member)
        sizes.append(np.bincount(subset_group, minlength=n_groups))
    indicator = np.stack(groups)
    counts = {
        site: np.full((len(polarities), len(groups), n, w), -1, np.int64)
        for site, (n, w) in sites.items()
    }

    def visit(site: str, layer: int, slab: np.ndarray) -> None:
        counts[site][:, :, layer] = indicator_counts(slab, classifier.alpha, polarities, indicator)

    slab_pass(source, sites, labels.size, classifier.max_layer, visit, workers)
    result, start = [], 0
    for size in sizes:
        part = {site: c[:, start : start + len(size)] for site, c in counts.items()}
        result.append(VoteCounts(float(classifier.alpha), polarities, part, size))
        start += len(size)
    return result
