"""Super-neuron classifier: every scalar activation is a yes/no rule; keep the best rules.

A neuron's rule is ``a > alpha`` means "yes" (polarity +1) or, optionally, ``a < alpha``
(polarity -1). Every neuron of every site and layer is scored on a probing set; the neurons
scoring at least a threshold t are the super neurons (SNs); their votes are aggregated.

Activations come from an *activation source*: an object with ``sites`` (site -> (n_layers,
width)) and ``layer(site, l) -> (N, width)``. An on-disk store provides one; a mapping of arrays
``site -> (N, L, W)`` is wrapped in ``ArrayActivations``; an early exit's few layers are a
``LayerActivations``. Fitting reads one (site, layer) slab at a
time, so memory-mapped activations much larger than RAM are fine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.base import clone

from superneurons.classifiers.base import (
    ActivationEstimator,
    ActivationSource,
    NotFittedError,
    encode_labels,
    fit_sites,
    read_bits,
    read_columns,
    reads_of,
    stratified_heldout,
)
from superneurons.classifiers.counting import Slab, VoteCounts, scratch, vote_counts
from superneurons.errors import ClassifierError, ConfigError
from superneurons.metrics import METRICS, binary_metrics

SELECTIONS: tuple[str, ...] = ("heldout", "fixed", "top_k")
AGGREGATES: tuple[str, ...] = ("mean", "majority")
POLARITIES: dict[str, tuple[int, ...]] = {"positive": (1,), "negative": (-1,), "both": (1, -1)}
# Thresholds like t = best - delta are computed in floating point; a neuron scoring exactly t
# must not be lost to rounding. Distinct scores (ratios of counts) differ by far more than this.
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class SelectedNeuron:
    """One super neuron and its score on the probing set."""

    site: str
    layer: int
    index: int
    polarity: int  # +1: a > alpha means yes; -1: a < alpha means yes
    score: float


class ArrayActivations:
    """An activation source over arrays ``site -> (N, L, W)``; np.memmap arrays are read lazily."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        if not arrays:
            raise ValueError("no activation sites given")
        self._arrays: dict[str, np.ndarray] = {}
        self.sites: dict[str, tuple[int, int]] = {}
        sizes = {}
        for site, array in arrays.items():
            if np.ndim(array) != 3:
                raise ValueError(f"site {site!r} must be an (N, L, W) array, got {np.shape(array)}")
            self._arrays[site] = array
            self.sites[site] = (int(array.shape[1]), int(array.shape[2]))
            sizes[site] = int(array.shape[0])
        if len(set(sizes.values())) > 1:
            raise ValueError(f"sites disagree on the number of samples: {sizes}")
        self.n_samples = next(iter(sizes.values()))

    def layer(self, site: str, layer: int) -> np.ndarray:
        """The (N, W) float32 slab of one site and layer."""
        if site not in self._arrays:
            raise KeyError(f"unknown site {site!r}; available: {list(self._arrays)}")
        return np.ascontiguousarray(self._arrays[site][:, layer, :], dtype=np.float32)


class LayerActivations:
    """An activation source holding some layers only: ``{(site, layer): (N, width)}`` — what an
    early exit computes. ``sites`` gives the full (n_layers, width) of each site."""

    def __init__(
        self, values: Mapping[tuple[str, int], np.ndarray], sites: Mapping[str, tuple[int, int]]
    ) -> None:
        if not values:
            raise ValueError("no activation layers given")
        self.values, self.sites = dict(values), dict(sites)
        self.n_samples = len(next(iter(self.values.values())))

    def layer(self, site: str, layer: int) -> np.ndarray:
        """The (N, width) slab of one site and layer; only the layers given exist."""
        if (site, layer) not in self.values:
            raise KeyError(f"{site} layer {layer} was not computed; have {sorted(self.values)}")
        return self.values[(site, layer)]


def as_activation_source(activations: Any) -> ActivationSource:
    """The activation source itself, or a mapping of arrays wrapped in ``ArrayActivations``."""
    if hasattr(activations, "sites") and callable(getattr(activations, "layer", None)):
        return activations
    if isinstance(activations, Mapping):
        return ArrayActivations(activations)
    raise TypeError(
        "activations must be a mapping site -> (N, L, W) array or provide `sites` and "
        f"`layer(site, l)`; got {type(activations).__name__}"
    )


class SuperNeuronClassifier(ActivationEstimator):
    """Answers yes/no from the votes of the neurons that best separate yes from no.

    ``selection``: "heldout" picks t = best - delta by sweeping delta over 0, t_step, ... <=
    t_range on a stratified held-out part of the probing set; "fixed" keeps scores >= threshold;
    "top_k" keeps the top_k best. ``max_neurons`` caps the SNs in every rule; ``max_layer``
    scores only layers <= max_layer (a forward pass may then stop after it). ``aggregate``:
    "mean" says yes when at least half the SNs do; "majority" when more than half do, an exact
    tie going to the best SN. String labels are "yes"/"no", with ``pos_label`` the positive class.
    """

    def __init__(
        self,
        alpha: float = 0.0,
        metric: str = "accuracy",
        sites: Sequence[str] | None = None,
        selection: str = "heldout",
        threshold: float | None = None,
        top_k: int | None = None,
        t_step: float = 0.01,
        t_range: float = 0.03,
        heldout_fraction: float = 0.2,
        aggregate: str = "mean",
        polarity: str = "positive",
        max_neurons: int | None = None,
        random_state: int | None = 0,
        pos_label: str = "yes",
        max_layer: int | None = None,
    ) -> None:
        self.alpha = alpha
        self.metric = metric
        self.sites = sites
        self.selection = selection
        self.threshold = threshold
        self.top_k = top_k
        self.t_step = t_step
        self.t_range = t_range
        self.heldout_fraction = heldout_fraction
        self.aggregate = aggregate
        self.polarity = polarity
        self.max_neurons = max_neurons
        self.random_state = random_state
        self.pos_label = pos_label
        self.max_layer = max_layer

    # -- parameters ---------------------------------------------------------------------------

    def check_params(self) -> None:
        """Raise ConfigError for hyper-parameters that cannot work (``fit`` calls it first)."""
        for name, value, allowed in (
            ("metric", self.metric, METRICS),
            ("selection", self.selection, SELECTIONS),
            ("aggregate", self.aggregate, AGGREGATES),
            ("polarity", self.polarity, tuple(POLARITIES)),
            ("pos_label", self.pos_label, ("yes", "no")),
        ):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not one of {allowed}")
        for name, value in (("alpha", self.alpha), ("threshold", self.threshold)):
            if value is not None and not _is_finite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if self.selection == "fixed" and self.threshold is None:
            raise ConfigError("selection='fixed' needs a threshold")
        if self.selection == "top_k" and (self.top_k is None or self.top_k < 1):
            raise ConfigError(f"selection='top_k' needs top_k >= 1, got {self.top_k}")
        if self.selection == "heldout":
            if self.t_step <= 0 or self.t_range < 0:
                raise ConfigError(
                    f"need t_step > 0 and t_range >= 0, got {self.t_step} and {self.t_range}"
                )
            if not 0.0 < self.heldout_fraction < 1.0:
                raise ConfigError(
                    f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}"
                )
        if self.max_neurons is not None and self.max_neurons < 1:
            raise ConfigError(f"max_neurons must be None or >= 1, got {self.max_neurons}")
        self.check_max_layer()

    # -- fitting ------------------------------------------------------------------------------

    def fit(
        self, activations: Any, labels: Any, counts: VoteCounts | None = None
    ) -> SuperNeuronClassifier:
        """Score every neuron on the probing set and select the super neurons; returns self.

        ``counts``: the vote counts of these rows at this α, computed already (by
        :meth:`count_votes` or :func:`~superneurons.classifiers.counting.subset_counts`, one
        pass for many α or many subsets); the slabs are then not read again.
        """
        return fit_each([self], activations, labels, None if counts is None else [counts])[0]

    def count_votes(
        self,
        activations: Any,
        labels: Any,
        alphas: Sequence[float] | None = None,
        also: Callable[[str, int, np.ndarray], None] | None = None,
    ) -> list[VoteCounts]:
        """The vote counts ``fit`` needs for each α of ``alphas`` (default: this α), in one
        pass over the slabs: ``clone(self).set_params(alpha=a).fit(X, y, counts=c)``;
        ``also(site, layer, slab)`` sees every slab of that pass."""
        source, sites, y = self._fit_inputs(activations, labels, self.sites, self.pos_label)
        alphas = [self.alpha] if alphas is None else list(alphas)
        return self._count(source, sites, y, alphas, also)

    def _count(self, source, sites, y, alphas, also=None) -> list[VoteCounts]:
        held = self.heldout_rows(y)
        return vote_counts(
            source, sites, y, held, alphas, self.polarities, self.max_layer, also=also
        )

    @property
    def polarities(self) -> tuple[int, ...]:
        """The polarities scored: (1,), (-1,) or (1, -1)."""
        return POLARITIES[self.polarity]

    def heldout_rows(self, y: np.ndarray) -> np.ndarray | None:
        """The held-out part of a probing set with labels ``y`` (None unless "heldout")."""
        if self.selection != "heldout":
            return None
        return stratified_heldout(y, self.heldout_fraction, self.random_state)

    def fit_sites(self, activations: Any) -> dict[str, tuple[int, int]]:
        """The (n_layers, width) of the sites ``fit`` reads from ``activations``."""
        return fit_sites(as_activation_source(activations), self.sites)

    def _scored(self, activations: Any, labels: Any, counts: VoteCounts | None) -> _Scored:
        """The inputs checked and every neuron scored (from ``counts`` when given)."""
        source, sites, y = self._fit_inputs(activations, labels, self.sites, self.pos_label)
        held = self.heldout_rows(y)
        if counts is None:
            counts = self._count(source, sites, y, [self.alpha])[0]
        elif counts.alpha != float(self.alpha) or counts.polarities != self.polarities:
            raise ConfigError(
                f"counts are for alpha={counts.alpha} and polarities {counts.polarities}; "
                f"this classifier has alpha={self.alpha} and polarities {self.polarities}"
            )
        full, fit = counts.scores(self.metric)
        full = {site: full[site] for site in sites}
        fit = {site: fit[site] for site in sites} if fit else {}
        return _Scored(source, sites, y, held, full, fit)

    def _select(
        self, source, y, sites, polarities, full, fit, held, swept=None
    ) -> SuperNeuronClassifier:
        """Choose the super neurons from the scores of the scoring pass (NaN: a layer not read);
        ``swept``: the held-out sweep's (delta, results), when done already."""
        if self.selection == "heldout":
            if swept is None:
                swept = self._sweep_heldout(source, y, polarities, fit, held)
            delta, self.heldout_scores_ = swept
            self.threshold_ = _best(full) - delta
        else:
            self.heldout_scores_ = {}
            self.threshold_ = float(self.threshold) if self.selection == "fixed" else None

        top_k = self.top_k if self.selection == "top_k" else None
        self.selected_ = _rank(full, polarities, self.threshold_, top_k, self.max_neurons)
        if not self.selected_:
            raise ConfigError(
                f"no neuron scores >= threshold {self.threshold_}; the best scores {_best(full)}"
            )
        self.scores_ = full  # site -> (P, n_layers, width), P indexing polarities_; NaN: not read
        self.fit_scores_ = fit  # the same on the probing set less its held-out part (heldout)
        self.polarities_ = polarities
        self.classes_ = np.array([False, True])  # predict's labels: no, yes
        self.sites_ = sites
        self.n_features_in_ = sum(n_layers * width for n_layers, width in sites.values())
        return self

    def refit_up_to(self, activations: Any, labels: Any, max_layer: int) -> SuperNeuronClassifier:
        """A new classifier equal to this one fitted with ``max_layer`` (<= this one's), from
        the scores already computed: only the held-out votes of a few neurons are read again."""
        self._fitted_selection()
        if self.max_layer is not None and max_layer > self.max_layer:
            raise ConfigError(f"fitted up to layer {self.max_layer}, not up to {max_layer}")
        restricted = clone(self).set_params(max_layer=max_layer)
        restricted.check_params()
        source = as_activation_source(activations)
        y = encode_labels(labels, self.pos_label)
        held = self.heldout_rows(y)
        full, fit = (
            {site: _mask_layers(array, max_layer) for site, array in scores.items()}
            for scores in (self.scores_, self.fit_scores_)
        )
        return restricted._select(source, y, self.sites_, self.polarities_, full, fit, held)

    def _sweep_heldout(
        self,
        source: ActivationSource,
        y: np.ndarray,
        polarities: tuple[int, ...],
        fit: dict[str, np.ndarray],
        held: np.ndarray,
    ) -> tuple[float, dict[float, float]]:
        """The offset delta that did best on the held-out part, and every offset's result."""
        plan = self._sweep_plan(fit, polarities)
        ((yes, first),) = _prefix_yes_votes(source, [plan], held)
        return self._sweep_result(plan, yes, first, y[held])

    def _sweep_plan(self, fit: dict[str, np.ndarray], polarities: tuple[int, ...]) -> _SweepPlan:
        """What the held-out sweep reads: the neurons any offset could select, best first."""
        best_fit = _best(fit)
        # Only neurons within t_range of the best can be SNs for any offset: read just those.
        # They are sorted best first, so the SNs of every offset are a prefix of them.
        ranked = _ranked(fit, best_fit - self.t_range, None, self.max_neurons)
        offsets = _offsets(self.t_step, self.t_range)
        ks = [int(np.count_nonzero(ranked.score >= best_fit - d - _TOLERANCE)) for d in offsets]
        return _SweepPlan(list(fit), polarities, ranked, float(self.alpha), offsets, ks)

    def _sweep_result(
        self, plan: _SweepPlan, yes: np.ndarray, first: np.ndarray, y_held: np.ndarray
    ) -> tuple[float, dict[float, float]]:
        """The best offset and every offset's held-out score, from the plan's yes votes."""
        results = {}
        for delta, k, yes_votes in zip(plan.offsets, plan.ks, yes, strict=True):
            if self.aggregate == "mean":
                pred = 2 * yes_votes >= k
            else:  # majority, an exact tie going to the best SN's vote (as ``aggregate``)
                pred = np.where(2 * yes_votes == k, first, 2 * yes_votes > k)
            results[delta] = binary_metrics(pred, y_held)[self.metric]
        best_delta = max(results, key=lambda d: (results[d], -d))  # ties: the smaller offset
        return best_delta, results

    # -- prediction ---------------------------------------------------------------------------

    def votes(self, activations: Any) -> np.ndarray:
        """Each SN's yes/no vote, (N, K) bool, columns in ``selected_`` order."""
        selected = self._fitted_selection()
        source = as_activation_source(activations)
        _check_source(source, selected)
        return _votes(source, selected, self.alpha)

    def vote_score(self, activations: Any) -> np.ndarray:
        """The fraction of SNs voting yes, (N,) float."""
        return self.votes(activations).mean(axis=1)

    def decision_function(self, activations: Any) -> np.ndarray:
        """Same as ``vote_score``: higher means yes."""
        return self.vote_score(activations)

    def predict(self, activations: Any) -> np.ndarray:
        """The aggregated answer, (N,) bool: True is the positive class."""
        return self.aggregate_votes(self.votes(activations))

    def score(self, activations: Any, labels: Any) -> float:
        """Accuracy of ``predict`` against ``labels`` (scikit-learn's ``score``)."""
        return float(np.mean(self.predict(activations) == encode_labels(labels, self.pos_label)))

    def aggregate_votes(self, votes: np.ndarray) -> np.ndarray:
        """The aggregated answer from ``votes`` (N, K) already computed."""
        return aggregate(votes, self.aggregate)

    @property
    def reads_(self) -> dict[str, list[int]]:
        """The (site, layers) the super neurons sit in: all a prediction reads."""
        return reads_of((neuron.site, neuron.layer) for neuron in self._fitted_selection())

    @property
    def exit_layer_(self) -> int:
        """The deepest layer holding an SN: a forward pass may stop after it."""
        return max(neuron.layer for neuron in self._fitted_selection())

    def _fitted_selection(self) -> list[SelectedNeuron]:
        if not hasattr(self, "selected_"):
            raise NotFittedError("this SuperNeuronClassifier is not fitted; call fit first")
        return self.selected_

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Hyper-parameters and the learned selection as a JSON-able dict (no ``scores_``)."""
        selected = self._fitted_selection()
        params = {name: _plain(value) for name, value in self.get_params().items()}
        if params["sites"] is not None and not isinstance(params["sites"], str):
            params["sites"] = list(params["sites"])
        return {
            "estimator": type(self).__name__,
            "params": params,
            "selected": [asdict(neuron) for neuron in selected],
            "threshold": self.threshold_,
            "sites": {site: list(shape) for site, shape in self.sites_.items()},
            "n_features_in": self.n_features_in_,
            # JSON keys are strings; repr of a float reads back exactly
            "heldout_scores": {repr(delta): value for delta, value in self.heldout_scores_.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuperNeuronClassifier:
        """A fitted classifier from ``to_dict``'s output; it predicts as the original did."""
        name = data.get("estimator", cls.__name__)
        if name != cls.__name__:
            raise ClassifierError(f"this dict describes a {name}, not a {cls.__name__}")
        estimator = cls(**data["params"])
        estimator.selected_ = [SelectedNeuron(**neuron) for neuron in data["selected"]]
        threshold = data["threshold"]
        estimator.threshold_ = None if threshold is None else float(threshold)
        estimator.sites_ = {site: (int(s[0]), int(s[1])) for site, s in data["sites"].items()}
        estimator.n_features_in_ = int(data["n_features_in"])
        estimator.heldout_scores_ = {
            float(delta): float(value) for delta, value in data["heldout_scores"].items()
        }
        estimator.polarities_ = POLARITIES[estimator.polarity]
        estimator.classes_ = np.array([False, True])
        return estimator


# -- helpers ----------------------------------------------------------------------------------


def _is_finite(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    """Numpy scalars as Python ones, so that the value is JSON-able."""
    return value.item() if isinstance(value, np.generic) else value


def _score_pass(
    source: ActivationSource,
    sites: dict[str, tuple[int, int]],
    y: np.ndarray,
    alpha: float,
    metric: str,
    polarities: tuple[int, ...],
    held: np.ndarray | None = None,
    max_layer: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Scores (P, L, W) per site on all rows, and on the rows outside ``held`` when given; NaN
    in the layers past ``max_layer``, which are not read. Each slab is read once."""
    return vote_counts(source, sites, y, held, [alpha], polarities, max_layer)[0].scores(metric)


def _best(scores: dict[str, np.ndarray]) -> float:
    """The best score (NaN: a layer not read, ignored)."""
    return float(max(np.nanmax(array) for array in scores.values()))


def _mask_layers(scores: np.ndarray, max_layer: int) -> np.ndarray:
    """(P, L, W) scores with the layers past ``max_layer`` NaN, as a scoring pass leaves them."""
    masked = scores.copy()
    masked[:, max_layer + 1 :] = np.nan
    return masked


def _offsets(step: float, span: float) -> list[float]:
    """0, step, 2 step, ... up to span (inclusive, despite floating-point division)."""
    count = int(np.floor(span / step + 1e-9))
    return [round(i * step, 12) for i in range(count + 1)]


@dataclass(frozen=True)
class _Ranked:
    """Neurons best first, as arrays: site number (in the scores' order), polarity number,
    layer, index and score."""

    site: np.ndarray
    polarity: np.ndarray
    layer: np.ndarray
    index: np.ndarray
    score: np.ndarray


def _ranked(
    scores: dict[str, np.ndarray],
    threshold: float | None,
    top_k: int | None = None,
    cap: int | None = None,
) -> _Ranked:
    """Neurons scoring >= threshold (or the top_k best), best first, at most ``cap`` of them.
    Equal scores keep a fixed order: site, polarity, layer, index."""
    if top_k is not None:
        flat = np.concatenate([array.ravel() for array in scores.values()])
        flat = flat[~np.isnan(flat)]
        k = min(top_k, flat.size)
        threshold = float(np.partition(flat, flat.size - k)[flat.size - k])
    found = [np.nonzero(array >= threshold - _TOLERANCE) for array in scores.values()]
    site = np.concatenate([np.full(f[0].size, s) for s, f in enumerate(found)])
    polarity, layer, index = (np.concatenate([f[axis] for f in found]) for axis in range(3))
    value = np.concatenate([array[f] for array, f in zip(scores.values(), found, strict=True)])
    # nonzero lists each site's neurons in (polarity, layer, index) order, and the sites come
    # in order: a stable sort on the score alone keeps that order among equal scores
    order = np.argsort(-value, kind="stable")
    limits = [limit for limit in (top_k, cap) if limit is not None]
    if limits:
        order = order[: min(limits)]
    return _Ranked(site[order], polarity[order], layer[order], index[order], value[order])


def _rank(
    scores: dict[str, np.ndarray],
    polarities: tuple[int, ...],
    threshold: float | None,
    top_k: int | None = None,
    cap: int | None = None,
) -> list[SelectedNeuron]:
    """:func:`_ranked` as :class:`SelectedNeuron` s; ``scores`` holds (P, L, W) arrays, P
    indexing ``polarities``."""
    ranked = _ranked(scores, threshold, top_k, cap)
    names = list(scores)
    return [
        SelectedNeuron(
            site=names[s], layer=int(layer), index=int(index), polarity=polarities[p],
            score=float(value),
        )
        for s, p, layer, index, value in zip(
            ranked.site, ranked.polarity, ranked.layer, ranked.index, ranked.score, strict=True
        )
    ]  # fmt: skip


@dataclass(frozen=True)
class _SweepPlan:
    """One held-out sweep: the candidate neurons (``ranked`` over the sites ``sites``), the
    offsets and how many of the ranked neurons each selects."""

    sites: list[str]
    polarities: tuple[int, ...]
    ranked: _Ranked
    alpha: float
    offsets: list[float]
    ks: list[int]


@dataclass(frozen=True)
class _Scored:
    """A classifier's inputs with every neuron scored: what selecting the SNs starts from."""

    source: Any
    sites: dict[str, tuple[int, int]]
    y: np.ndarray
    held: np.ndarray | None
    full: dict[str, np.ndarray]
    fit: dict[str, np.ndarray]


def fit_each(
    estimators: Sequence[SuperNeuronClassifier],
    activations: Any,
    labels: Any,
    counts: Sequence[VoteCounts] | None = None,
) -> list[SuperNeuronClassifier]:
    """``[e.fit(activations, labels, counts=c) for e, c in zip(estimators, counts)]``, with the
    held-out sweeps of all of them reading the held-out rows together: each (site, layer) once
    per held-out part, not once per estimator (what a sweep over many α refits)."""
    counts = [None] * len(estimators) if counts is None else list(counts)
    if len(counts) != len(estimators):
        raise ValueError(f"{len(counts)} counts for {len(estimators)} estimators")
    scored = [e._scored(activations, labels, c) for e, c in zip(estimators, counts, strict=True)]
    swept: list[tuple[float, dict[float, float]] | None] = [None] * len(estimators)
    by_held: dict[bytes, list[int]] = {}
    for i, (estimator, part) in enumerate(zip(estimators, scored, strict=True)):
        if estimator.selection == "heldout":
            by_held.setdefault(np.packbits(part.held).tobytes(), []).append(i)
    for members in by_held.values():
        first = scored[members[0]]
        plans = [estimators[i]._sweep_plan(scored[i].fit, estimators[i].polarities)
                 for i in members]  # fmt: skip
        votes = _prefix_yes_votes(first.source, plans, first.held)
        for i, plan, (yes, best) in zip(members, plans, votes, strict=True):
            swept[i] = estimators[i]._sweep_result(plan, yes, best, first.y[first.held])
    return [
        estimator._select(
            part.source, part.y, part.sites, estimator.polarities, part.full, part.fit,
            part.held, sweep,
        )
        for estimator, part, sweep in zip(estimators, scored, swept, strict=True)
    ]  # fmt: skip


def _prefix_yes_votes(
    source: ActivationSource, plans: Sequence[_SweepPlan], rows: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per plan: (yes votes of its first k ranked neurons per row, for each k of its ``ks``; its
    first neuron's vote), on ``rows``. Each (site, layer) any plan needs is read once, for the
    union of their neurons there, and its votes at each (α, polarity) computed once (on a
    store's bits); a sweep may rank every neuron when many tie."""
    n_rows = int(np.count_nonzero(rows)) if rows.dtype == bool else len(rows)
    out = [(np.zeros((len(p.ks), n_rows), np.int64), np.zeros(n_rows, bool)) for p in plans]
    wanted: dict[tuple[str, int], list[tuple[int, np.ndarray]]] = {}
    for i, plan in enumerate(plans):
        # group the ranked neurons by (site, layer), each group in rank order
        pair = plan.ranked.site.astype(np.int64) * (1 + int(plan.ranked.layer.max()))
        pair += plan.ranked.layer
        order = np.argsort(pair, kind="stable")
        starts = np.flatnonzero(np.diff(pair[order], prepend=-1))
        for members in np.split(order, starts[1:]):
            site, layer = (
                plan.sites[plan.ranked.site[members[0]]],
                int(plan.ranked.layer[members[0]]),
            )
            wanted.setdefault((site, layer), []).append((i, members))
    for (site, layer), needs in wanted.items():
        indices = np.unique(np.concatenate([plans[i].ranked.index[m] for i, m in needs]))
        held = _HeldVotes(_held_slab(source, site, layer, indices, rows))
        for i, members in needs:
            plan, (yes, first) = plans[i], out[i]
            columns = np.searchsorted(indices, plan.ranked.index[members])
            polarity = np.asarray(plan.polarities)[plan.ranked.polarity[members]]
            # members keep rank order, so the first k ranked neurons are a prefix of them
            start, running = 0, np.zeros(n_rows, np.int64)
            for j, end in enumerate(np.searchsorted(members, plan.ks)):
                for sign in np.unique(polarity[start:end]):
                    segment = columns[start:end][polarity[start:end] == sign]
                    running += held.yes_among(plan.alpha, int(sign), segment)
                yes[j] += running
                start = max(start, end)
            if members[0] == 0:  # the best neuron is its first column
                first[:] = held.votes(plan.alpha, int(polarity[0]), columns[:1])[:, 0]
    return out


def _held_slab(source, site: str, layer: int, indices: np.ndarray, rows: np.ndarray) -> Slab:
    """The columns ``indices`` of one (site, layer) on ``rows``: for many columns a store's
    bits, for a few (or from another source) just those columns as float32."""
    width = source.sites[site][1]
    bits = read_bits(source, site, layer, rows) if indices.size * 8 > width else None
    if bits is None:
        return Slab(read_columns(source, site, layer, indices, rows))
    values, dtype = bits
    return Slab(values if indices.size == values.shape[1] else values[:, indices], dtype)


class _HeldVotes:
    """A slab's votes at each (α, polarity), computed once and kept packed 64 columns to a
    word: per-row counts over many column sets then cost a popcount of words."""

    def __init__(self, slab: Slab) -> None:
        self.slab = slab
        self._packed: dict[tuple[float, int], np.ndarray] = {}

    def packed(self, alpha: float, polarity: int) -> np.ndarray:
        """(n, ceil(width / 64)) uint64: the votes, column c at bit 7 - c % 8 of byte c // 8."""
        if (alpha, polarity) not in self._packed:
            votes = self.slab.votes(
                alpha, polarity, out=scratch("held", self.slab.values.shape, bool)
            )
            self._packed[(alpha, polarity)] = _packed_words(votes)
        return self._packed[(alpha, polarity)]

    def votes(self, alpha: float, polarity: int, columns: np.ndarray) -> np.ndarray:
        """(n, len(columns)) bool: the votes of some columns."""
        packed = self.packed(alpha, polarity).view(np.uint8)
        return (packed[:, columns >> 3] >> (7 - (columns & 7)).astype(np.uint8)) & 1 == 1

    def yes_among(self, alpha: float, polarity: int, columns: np.ndarray) -> np.ndarray:
        """Per row, the yes votes among ``columns`` (distinct)."""
        if columns.size <= _FEW_COLUMNS:
            return np.count_nonzero(self.votes(alpha, polarity, columns), axis=1)
        chosen = np.zeros((1, self.slab.values.shape[1]), bool)
        chosen[0, columns] = True
        words = self.packed(alpha, polarity) & _packed_words(chosen)
        return np.bitwise_count(words).sum(axis=1, dtype=np.int64)


_FEW_COLUMNS = 64  # column sets up to this size are counted from their unpacked bits


def _packed_words(bits: np.ndarray) -> np.ndarray:
    """(n, width) bool packed along the columns into (n, ceil(width / 64)) uint64 words."""
    packed = np.packbits(bits, axis=1)
    padding = -packed.shape[1] % 8
    if padding:
        packed = np.pad(packed, ((0, 0), (0, padding)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _check_source(source: ActivationSource, selected: list[SelectedNeuron]) -> None:
    """The source must reach every SN; it may hold fewer layers (e.g. an early-exit run)."""
    for neuron in selected:
        if neuron.site not in source.sites:
            raise ClassifierError(
                f"activations lack site {neuron.site!r}, which holds selected SNs"
            )
        n_layers, width = source.sites[neuron.site]
        if not (0 <= neuron.layer < n_layers and 0 <= neuron.index < width):
            raise ClassifierError(
                f"activations for {neuron.site!r} are ({n_layers}, {width}) layers x width; "
                f"an SN sits at layer {neuron.layer}, index {neuron.index}"
            )


def neuron_values(
    source: ActivationSource,
    neurons: Sequence[tuple[str, int, int]],
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(N, K) float32 values of ``neurons`` given as (site, layer, index) (on ``rows`` only,
    when given); each (site, layer) is read once, and from a store only those columns."""
    groups: dict[tuple[str, int], list[int]] = {}
    for k, (site, layer, _) in enumerate(neurons):
        groups.setdefault((site, layer), []).append(k)
    out: np.ndarray | None = None
    for (site, layer), members in groups.items():
        columns = read_columns(source, site, layer, [neurons[k][2] for k in members], rows)
        if out is None:
            out = np.empty((columns.shape[0], len(neurons)), dtype=np.float32)
        elif columns.shape[0] != out.shape[0]:
            raise ValueError(f"{site} layer {layer}: {columns.shape[0]} rows, not {out.shape[0]}")
        out[:, members] = columns
    if out is None:
        raise ValueError("no neurons to read")
    return out


def _votes(
    source: ActivationSource,
    neurons: list[SelectedNeuron],
    alpha: float,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(N, K) bool votes of ``neurons`` (on ``rows`` only, when given)."""
    values = neuron_values(source, [(n.site, n.layer, n.index) for n in neurons], rows)
    return _rule_votes(values, np.array([neuron.polarity > 0 for neuron in neurons]), alpha)


def _rule_votes(values: np.ndarray, positive: np.ndarray, alpha: float) -> np.ndarray:
    """(N, K) votes of K neurons' rules: ``a > alpha`` where ``positive``, else ``a < alpha``."""
    return np.where(positive, values > alpha, values < alpha)


def aggregate(votes: np.ndarray, rule: str) -> np.ndarray:
    """Combine (N, K) votes into (N,) answers by the "mean" or "majority" rule (an exact tie
    going to the first column's vote, the best voter's)."""
    k = votes.shape[1]
    twice_yes = 2 * np.count_nonzero(votes, axis=1)
    if rule == "mean":
        return twice_yes >= k  # vote share >= 0.5
    answer = twice_yes > k
    tie = twice_yes == k
    answer[tie] = votes[tie, 0]  # the best SN decides an exact tie
    return answer
