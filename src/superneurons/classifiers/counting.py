"""How often each neuron's rule votes yes, counted for many thresholds and many row groups in one
pass over the slabs.

Every score a super-neuron classifier needs is a ratio of confusion counts, and a count is a sum
over rows: the votes of ``a > alpha`` (polarity +1) or ``a < alpha`` (-1) summed over the "yes"
rows and over the "no" rows of the probing set, and of its held-out part. So one read of a slab
serves every α of a sweep (a comparison each) and every probing subset of a size sweep (one
matrix product of an indicator of the subsets' rows with the votes). NaN never votes yes.

A store's 16-bit floats are compared on their bits (:class:`Slab`, :func:`bit_rule`), never
widened, in cache-sized blocks of rows that every α is compared on before the next block.

:meth:`SuperNeuronClassifier.count_votes` and :func:`subset_counts` give :class:`VoteCounts`
that ``SuperNeuronClassifier.fit(..., counts=...)`` takes instead of reading the slabs itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from threadpoolctl import threadpool_limits

from superneurons.classifiers.base import layers_read, read_bits, read_slab
from superneurons.metrics import metric_from_counts
from superneurons.store import widen

# Group order of a count: (yes, fit part), (no, fit part), then (yes, held), (no, held).
_BLOCK_BYTES = 2**19  # a block of rows compared at a time: small enough to stay in cache


@dataclass
class VoteCounts:
    """Votes for "yes" per site, ``(P, G, n_layers, width)`` int32 (P: ``polarities``, G: the
    groups (yes, no) of the fit part then, with a held-out part, of the held part; -1 in layers
    not read), at threshold ``alpha``, with each group's size (``sizes``)."""

    alpha: float
    polarities: tuple[int, ...]
    counts: dict[str, np.ndarray]
    sizes: np.ndarray  # (G,)
    _scored: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_held(self) -> bool:
        return len(self.sizes) == 4

    def scores(self, metric: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(scores on all rows, scores on the fit part (empty without a held-out part)):
        ``(P, n_layers, width)`` per site, NaN in the layers not read; computed once per metric
        (many classifiers refitted from the same counts share them: do not modify them)."""
        if metric not in self._scored:
            self._scored[metric] = self._compute_scores(metric)
        return self._scored[metric]

    def _compute_scores(self, metric: str) -> tuple[dict, dict]:
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


class Slab:
    """One (N, width) slab as read: float32 ``values``, or a store's 16-bit floats as their
    int16 bits (``dtype`` "float16" or "bfloat16"), whose rules are decided on the bits without
    widening them (:func:`bit_rule`); either way the votes are those of the float rule."""

    def __init__(
        self, values: np.ndarray, dtype: str = "float32", key_out: np.ndarray | None = None
    ) -> None:
        self.values, self.dtype = values, dtype
        self._key_out = key_out  # where the ordered keys go, when given
        self._coded: dict[bool, tuple[np.ndarray, int, int]] = {}

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> Slab:
        """The slab's ``rows``, in that order (into ``out`` when given)."""
        return Slab(np.take(self.values, rows, axis=0, out=out), self.dtype)

    def floats(self) -> np.ndarray:
        """The values as floats numpy computes with: float16 as they are, else float32."""
        if self.dtype == "float16":
            return self.values.view(np.float16)
        return self.float32()

    def float32(self) -> np.ndarray:
        """The values as float32 (widened from the bits when need be)."""
        return self.values if self.dtype == "float32" else widen(self.values, self.dtype)

    def votes(self, alpha: float, polarity: int, out: np.ndarray | None = None) -> np.ndarray:
        """(N, width) bool: ``a > alpha`` (polarity +1) or ``a < alpha`` (-1); NaN never
        (into ``out`` when given)."""
        if out is None:
            out = np.empty(self.values.shape, bool)
        if self.dtype == "float32":
            return (
                np.greater(self.values, alpha, out=out)
                if polarity > 0
                else np.less(self.values, alpha, out=out)
            )
        rule = bit_rule(self.dtype, float(alpha), polarity)
        if rule is None or self.values.size == 0:
            out[...] = False
            return out
        keyed, low, high = rule
        codes, least, most = self._codes(keyed)
        # One comparison where the slab's codes reach past an end of the interval (no NaN).
        if low <= least:
            if high >= most:
                out[...] = True
                return out
            return np.less_equal(codes, np.int16(high), out=out)
        if high >= most:
            return np.greater_equal(codes, np.int16(low), out=out)
        # low <= code <= high, as one unsigned comparison of code - low (int16, wrapping)
        shifted = np.subtract(codes, np.int16(low)).view(np.uint16)
        return np.less_equal(shifted, np.uint16(high - low), out=out)

    def _codes(self, keyed: bool) -> tuple[np.ndarray, int, int]:
        """(the bits or their ordered keys, their least, their greatest), computed once."""
        if keyed not in self._coded:
            codes = ordered_key(self.values, self._key_out) if keyed else self.values
            self._coded[keyed] = (codes, int(codes.min()), int(codes.max()))
        return self._coded[keyed]


def ordered_key(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 keys of 16-bit float bits, ordered as the floats are (-0 just below +0; NaNs
    outside the infinities): the negative floats' magnitude bits flipped."""
    key = np.right_shift(bits, 15, out=out)  # -1 for negative floats, else 0
    key &= np.int16(0x7FFF)
    key ^= bits
    return key


@lru_cache(maxsize=4)
def _pattern_values(dtype: str) -> np.ndarray:
    """float32 values of every 16-bit pattern, indexed by the pattern as uint16."""
    patterns = np.arange(2**16, dtype=np.uint32)
    if dtype == "float16":
        return patterns.astype(np.uint16).view(np.float16).astype(np.float32)
    return (patterns << 16).view(np.float32)  # bfloat16: the upper half of a float32


@lru_cache(maxsize=256)
def bit_rule(dtype: str, alpha: float, polarity: int) -> tuple[bool, int, int] | None:
    """A rule on 16-bit floats as an interval of their bits: a value votes yes exactly when
    ``low <= code <= high``, code its int16 bits (keyed False) or its :func:`ordered_key`
    (True); None when no value votes yes. Derived from the float rule on every pattern, so
    both agree by construction (a raw interval, cheaper, is used when there is one)."""
    yes = _votes(_pattern_values(dtype), alpha, polarity)
    if not yes.any():
        return None
    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.int16)
    for keyed, codes in ((False, patterns), (True, ordered_key(patterns))):
        chosen = codes[yes].astype(np.int32)
        low, high = int(chosen.min()), int(chosen.max())
        if high - low + 1 == chosen.size:
            return keyed, low, high
    raise AssertionError(f"{dtype} rule at alpha={alpha} is not an interval of ordered keys")


def slab_pass(
    source,
    sites: Mapping[str, tuple[int, int]],
    n_rows: int,
    max_layer: int | None,
    visit: Callable[[str, int, Slab], None],
    workers: int | None = None,
) -> None:
    """Call ``visit(site, layer, slab)`` once for every (N, width) :class:`Slab` of the layers
    <= ``max_layer`` (a store's 16-bit bits where the source has them, else float32),
    ``workers`` slabs at a time (numpy releases the GIL while it reads and compares; default:
    up to 2). ``visit`` writes each layer's results into its own slice."""
    jobs = [
        (site, layer, width)
        for site, (n_layers, width) in sites.items()
        for layer in layers_read(n_layers, max_layer)
    ]

    def one(job: tuple[str, int, int]) -> None:
        site, layer, width = job
        bits = read_bits(source, site, layer)
        if bits is None:
            slab = Slab(read_slab(source, site, layer, n_rows, width))
        else:
            if bits[0].shape != (n_rows, width):
                raise ValueError(
                    f"{site} layer {layer}: expected a ({n_rows}, {width}) slab, "
                    f"got {bits[0].shape}"
                )
            slab = Slab(*bits)
        visit(site, layer, slab)

    workers = workers or min(2, os.cpu_count() or 1)
    if workers == 1:
        for job in jobs:
            one(job)
        return
    # one BLAS thread per worker: the workers already keep the cores busy
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        for done in pool.map(one, jobs):  # re-raises a slab's error here
            del done


def _votes(x: np.ndarray, alpha: float, polarity: int) -> np.ndarray:
    return x > alpha if polarity > 0 else x < alpha


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A buffer of this thread's, reused from call to call: a fresh slab-sized array costs
    page faults that often outweigh the arithmetic done in it. Valid until the next call
    with the same ``name`` on this thread."""
    pool = _SCRATCH.__dict__.setdefault("pool", {})
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    if name not in pool or pool[name].size < size:
        pool[name] = np.empty(size, np.uint8)
    return pool[name][:size].view(dtype).reshape(shape)


_SCRATCH = threading.local()


def partition_counts(
    x: Slab,
    alphas: Sequence[float],
    polarities: Sequence[int],
    order: np.ndarray,
    bounds: np.ndarray,
) -> np.ndarray:
    """(A, P, G, W) votes of slab ``x`` (N, W) summed over disjoint row groups: group g is rows
    ``order[bounds[g]:bounds[g + 1]]``. Read in blocks of rows small enough to stay in cache
    while every α is compared, so the slab crosses memory once, not once per α."""
    width = x.values.shape[1]
    out = np.zeros((len(alphas), len(polarities), len(bounds) - 1, width), np.int64)
    # rows per block: cache-sized, and at most 255 so that uint8 sums cannot overflow
    step = int(np.clip(_BLOCK_BYTES // max(1, width * x.values.itemsize), 8, 255))
    for g in range(len(bounds) - 1):
        for start in range(bounds[g], bounds[g + 1], step):
            rows = order[start : min(start + step, bounds[g + 1])]
            shape = (rows.size, width)
            block = x.take(rows, scratch("rows", shape, x.values.dtype))
            if block.dtype != "float32":
                block = Slab(block.values, block.dtype, scratch("keys", shape, np.int16))
            votes = scratch("votes", shape, bool)
            for a, alpha in enumerate(alphas):
                for p, polarity in enumerate(polarities):
                    counted = block.votes(alpha, polarity, out=votes).view(np.uint8)
                    out[a, p, g] += np.add.reduce(counted, axis=0, dtype=np.uint8)
    return out


def indicator_counts(
    x: Slab,
    alpha: float,
    polarities: Sequence[int],
    order: np.ndarray,
    parts: Sequence[tuple[np.ndarray, slice, np.ndarray]],
) -> np.ndarray:
    """(P, G, W) votes of slab ``x`` (N, W) summed over the rows of each group (groups may
    overlap): matrix products, exact below 2**24 rows. The slab's rows are taken in ``order``;
    each part ``(groups, rows, indicator)`` counts its groups (numbers) from those rows alone
    (a slice of the ordered rows), ``indicator`` (len(groups), rows) float32 of 0/1 — groups of
    yes rows and groups of no rows each multiply only their half."""
    shape = (order.size, x.values.shape[1])
    ordered = x.take(order, scratch("rows", shape, x.values.dtype))
    if ordered.dtype != "float32":
        ordered = Slab(ordered.values, ordered.dtype, scratch("keys", shape, np.int16))
    n_groups = sum(len(groups) for groups, _, _ in parts)
    out = np.empty((len(polarities), n_groups, shape[1]), np.int64)
    votes, weights = scratch("votes", shape, bool), scratch("weights", shape, np.float32)
    for p, polarity in enumerate(polarities):
        np.copyto(weights, ordered.votes(alpha, polarity, out=votes))
        for groups, rows, indicator in parts:
            out[p, groups] = np.rint(indicator @ weights[rows])
    return out


def vote_counts(
    source,
    sites: Mapping[str, tuple[int, int]],
    y: np.ndarray,
    held: np.ndarray | None,
    alphas: Sequence[float],
    polarities: tuple[int, ...],
    max_layer: int | None = None,
    workers: int = 1,
    also: Callable[[str, int, Slab], None] | None = None,
) -> list[VoteCounts]:
    """Per α of ``alphas``, the votes of every neuron summed over the yes and the no rows of
    the fit part and (with ``held``) of the held-out part: one pass over the slabs;
    ``also(site, layer, slab)`` is called with every slab read, for whatever else the caller
    computes in the same pass, on a thread of its own beside the counting.

    One counting thread by default: its comparisons are many small operations on blocks in
    cache, whose dispatch holds the GIL, so that two threads count slower than one (measured
    on a LLaVA-1.5-7b-shaped store), while ``also``'s large array operations run beside it."""
    group, n_groups = row_groups(y, held), _n_groups(held)
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=n_groups)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    counts = {
        site: _unread((len(alphas), len(polarities), n_groups, n, w), 3, n, max_layer)
        for site, (n, w) in sites.items()
    }
    with ThreadPoolExecutor(1) as beside:
        pending = []

        def visit(site: str, layer: int, slab: Slab) -> None:
            if also is not None:
                pending.append(beside.submit(also, site, layer, slab))
            counts[site][:, :, :, layer] = partition_counts(slab, alphas, polarities, order, bounds)

        slab_pass(source, sites, y.size, max_layer, visit, workers)
        for done in pending:
            done.result()  # re-raises an error of ``also``
    return [
        VoteCounts(float(alpha), polarities, {s: c[a] for s, c in counts.items()}, sizes)
        for a, alpha in enumerate(alphas)
    ]


def _unread(shape: tuple[int, ...], axis: int, n_layers: int, max_layer: int | None):
    """int32 counts of this shape, -1 in the layers (along ``axis``) past ``max_layer``; the
    layers read are left for the pass to fill (not written twice)."""
    counts = np.empty(shape, np.int32)
    unread = [slice(None)] * len(shape)
    unread[axis] = slice(len(layers_read(n_layers, max_layer)), None)
    counts[tuple(unread)] = -1
    return counts


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
    # The yes rows first: a group of yes rows (even group numbers) is counted from them alone.
    order = np.argsort(~labels, kind="stable")
    n_yes = int(np.count_nonzero(labels))
    groups, sizes = [], []
    for rows in subsets:
        held = classifier.heldout_rows(labels[rows])
        subset_group, n_groups = row_groups(labels[rows], held), _n_groups(held)
        for g in range(n_groups):
            member = np.zeros(labels.size, np.float32)
            member[rows[subset_group == g]] = 1.0
            groups.append(member[order])
        sizes.append(np.bincount(subset_group, minlength=n_groups))
    numbers = np.arange(len(groups))
    is_yes = np.concatenate([np.arange(len(size)) % 2 == 0 for size in sizes])
    indicator = np.stack(groups)
    parts = [
        (numbers[is_yes], slice(0, n_yes), np.ascontiguousarray(indicator[is_yes, :n_yes])),
        (numbers[~is_yes], slice(n_yes, None), np.ascontiguousarray(indicator[~is_yes, n_yes:])),
    ]
    counts = {
        site: _unread((len(polarities), len(groups), n, w), 2, n, classifier.max_layer)
        for site, (n, w) in sites.items()
    }

    def visit(site: str, layer: int, slab: Slab) -> None:
        counts[site][:, :, layer] = indicator_counts(
            slab, classifier.alpha, polarities, order, parts
        )

    slab_pass(source, sites, labels.size, classifier.max_layer, visit, workers)
    result, start = [], 0
    for size in sizes:
        part = {site: c[:, start : start + len(size)] for site, c in counts.items()}
        result.append(VoteCounts(float(classifier.alpha), polarities, part, size))
        start += len(size)
    return result
