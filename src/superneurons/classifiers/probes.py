"""Linear probes on the activations: a logistic regression on one (site, layer), and a sparse
probe on the ``k`` best single neurons.

- :class:`LinearProbeClassifier`: scikit-learn's ``LogisticRegression`` on standardised features
  of one (site, layer); its regularisation chosen by cross-validation (``LogisticRegressionCV``)
  on the probing set less a stratified held-out part, the layer and site chosen on that
  held-out part — never on validation data — then refitted on the whole probing set. Every
  layer's held-out accuracy and model are kept (``layer_scores_``, ``layer_models_``).
- :class:`SparseProbeClassifier`: k-sparse probing (Gurnee et al. 2023), the bridge between
  super neurons and a linear probe: the neurons are ranked by their super-neuron accuracy (rule
  ``a > alpha``, either polarity), a logistic regression is fitted on the ``k`` best, ``k``
  chosen on the held-out part. Cheap to evaluate and early-exitable like super neurons.

Both read one (site, layer) slab at a time. With more features than rows (an MLP slab of
11,008 neurons, 3,000 questions), an L2-regularised logistic regression's weights lie in the
span of the rows, so it is fitted on the rows' coordinates in that span (the Cholesky factor
of their Gram matrix) and mapped back: the same model, at a fraction of the memory and time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import cholesky, solve_triangular
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from superneurons.classifiers.base import (
    ActivationEstimator,
    NotFittedError,
    encode_labels,
    layers_read,
    read_slab,
    reads_of,
    shapes_json,
    stratified_heldout,
)
from superneurons.classifiers.super_neurons import (
    _mask_layers,
    _rank,
    _score_pass,
    as_activation_source,
    neuron_values,
)
from superneurons.errors import ConfigError

DEFAULT_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)
_EIGEN_FLOOR = 1e-6  # Gram eigenvalues below this fraction of the largest are float32 noise
_CHUNK_ROWS = 256  # rows standardised at once: bounds the scaler's temporaries
LAYER_ARRAYS = ("mean", "scale", "coef")  # a LogisticModel's (W,) arrays


@dataclass
class LogisticModel:
    """A fitted standardise-then-logistic-regression model, as plain arrays."""

    mean: np.ndarray  # (W,) the scaler's
    scale: np.ndarray  # (W,)
    coef: np.ndarray  # (W,) on standardised features
    intercept: float

    def decision(self, x: np.ndarray) -> np.ndarray:
        """The log-odds of "yes" of rows ``x`` (N, W): the standardisation folded into the
        weights, one float64 product."""
        weights = self.coef / self.scale
        return np.asarray(x) @ weights + (self.intercept - self.mean @ weights)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": np.array([self.intercept]),
        }

    @classmethod
    def from_arrays(cls, arrays: dict, width: int) -> LogisticModel:
        parts = [np.asarray(arrays[k], np.float64) for k in ("mean", "scale", "coef")]
        if any(p.shape != (width,) for p in parts) or np.asarray(arrays["intercept"]).size != 1:
            raise ValueError(f"the logistic model's arrays do not have width {width}")
        return cls(*parts, float(np.asarray(arrays["intercept"]).ravel()[0]))


def standardise(x: np.ndarray, rows: np.ndarray | None = None) -> StandardScaler:
    """Standardise ``x`` (N, W) in place with the mean and deviation of its ``rows`` (a mask;
    all by default): scikit-learn's ``StandardScaler``, fitted and applied a few hundred rows
    at a time so that no temporary approaches the slab's size."""
    index = np.arange(len(x)) if rows is None else np.flatnonzero(rows)
    scaler = StandardScaler()
    for start in range(0, index.size, _CHUNK_ROWS):
        scaler.partial_fit(x[index[start : start + _CHUNK_ROWS]])
    for start in range(0, len(x), _CHUNK_ROWS):
        x[start : start + _CHUNK_ROWS] = scaler.transform(x[start : start + _CHUNK_ROWS])
    return scaler


def _split_rows(x: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the rows outside ``held``, the held rows) of ``x``: the held rows copied, the others
    moved up to the front of ``x`` in place and returned as a view, a few hundred rows at a
    time, so that no more than x and its held rows are ever in memory."""
    held_rows = x[held]
    keep = np.flatnonzero(~held)
    # keep[i] >= i: each chunk reads rows at or after the ones it overwrites.
    for start in range(0, keep.size, _CHUNK_ROWS):
        chunk = keep[start : start + _CHUNK_ROWS]
        x[start : start + chunk.size] = x[chunk]
    return x[: keep.size], held_rows


class RowSpan:
    """The span of ``rows`` (n, W), n < W, in an orthonormal basis: the rows' ``coordinates``
    (n, r) there, another row set's coordinates (``project``), and weights on the basis
    back in the rows' own features (``weights``).

    With the Gram matrix K = rows @ rows.T = L @ L.T (Cholesky), the basis is rows.T @ inv(L).T
    and the coordinates are L itself. When K is singular up to float32 rounding (rows that
    repeat, or a Cholesky pivot below 1e-6 of K's largest diagonal entry), its
    eigendecomposition K = U diag(λ) U.T is used instead, keeping the eigenvalues above 1e-6 of
    the largest (basis rows.T @ U / √λ, coordinates U √λ).
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        gram = (rows @ rows.T).astype(np.float64)
        largest = float(np.max(np.diag(gram)))
        self.factor = self.map = None
        try:
            # In place: K is symmetric, so its transpose is the Fortran-ordered K that LAPACK
            # factors without a copy, into U with U.T @ U = K; L = U.T.
            factor = cholesky(gram.T, lower=False, overwrite_a=True, check_finite=False).T
            # A pivot this small is float32 rounding, not a direction of the rows.
            if np.min(np.diag(factor)) ** 2 <= _EIGEN_FLOOR * largest:
                raise np.linalg.LinAlgError("nearly singular")
            self.factor = self.coordinates = factor
        except np.linalg.LinAlgError:
            gram = (rows @ rows.T).astype(np.float64)  # the failed factorisation overwrote it
            values, vectors = np.linalg.eigh(gram)
            del gram
            keep = values > _EIGEN_FLOOR * values[-1]
            keep[-1] = True  # rows without any variance still get one (zero) coordinate
            root = np.sqrt(np.maximum(values[keep], np.finfo(np.float64).tiny))
            self.coordinates = vectors[:, keep] * root
            self.map = vectors[:, keep] / root

    def project(self, other: np.ndarray) -> np.ndarray:
        """The coordinates (m, r) of ``other`` (m, W) on the basis."""
        cross = (self.rows @ other.T).astype(np.float64)  # (n, m)
        if self.factor is not None:
            return solve_triangular(self.factor, cross, lower=True).T
        return cross.T @ self.map

    def weights(self, beta: np.ndarray) -> np.ndarray:
        """The (W,) weights on the rows' features of weights ``beta`` on the basis."""
        if self.factor is not None:
            combination = solve_triangular(self.factor.T, beta, lower=False)
        else:
            combination = self.map @ beta
        # float32 on purpose: rows.T @ (a float64 vector) would widen the slab first
        return (self.rows.T @ combination.astype(self.rows.dtype)).astype(np.float64)


def fit_logistic(x: np.ndarray, y: np.ndarray, C: float, tol: float, max_iter: int):
    """Standardise ``x`` (in place: it is overwritten) and fit scikit-learn's
    ``LogisticRegression(C)`` on it (in the rows' span when there are more columns than rows):
    a :class:`LogisticModel`."""
    scaler = standardise(x)
    regression = LogisticRegression(C=C, tol=tol, max_iter=max_iter)
    if x.shape[1] > x.shape[0]:
        span = RowSpan(x)
        regression.fit(span.coordinates, y)
        coef = span.weights(regression.coef_[0])
    else:
        coef = regression.fit(np.asarray(x, np.float64), y).coef_[0]
    return _logistic_model(scaler, coef, regression.intercept_[0])


def _logistic_model(scaler: StandardScaler, coef: np.ndarray, intercept) -> LogisticModel:
    mean, scale = (np.asarray(v, np.float64) for v in (scaler.mean_, scaler.scale_))
    return LogisticModel(mean, scale, np.asarray(coef, np.float64), float(intercept))


class _LogisticProbe(ActivationEstimator):
    """What both probes share: the fitted model, the held-out split, predict."""

    def _held(self, y: np.ndarray) -> np.ndarray:
        return stratified_heldout(y, self.heldout_fraction, self.random_state)

    def _model(self) -> LogisticModel:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted; call fit first")
        return self.model_

    def predict(self, activations: Any) -> np.ndarray:
        return self.decision_function(activations) > 0

    @classmethod
    def from_state(cls, params: dict, state: dict, arrays: dict):
        estimator = cls(**params)
        estimator.check_params()
        estimator.sites_ = {site: tuple(shape) for site, shape in state["sites"].items()}
        estimator._restore(state, arrays)
        estimator.classes_ = np.array([False, True])
        return estimator

    def _check_refit(self, max_layer: int):
        self._model()
        if self.max_layer is not None and max_layer > self.max_layer:
            raise ConfigError(f"fitted up to layer {self.max_layer}, not up to {max_layer}")
        restricted = clone(self).set_params(max_layer=max_layer)
        restricted.check_params()
        return restricted


class LinearProbeClassifier(_LogisticProbe):
    """A logistic regression on one (site, layer), the best on the held-out part of the
    probing set among ``sites`` and the layers <= ``max_layer``.

    ``Cs``: the inverse regularisation strengths tried by ``cv``-fold cross-validation.
    """

    def __init__(
        self,
        sites: Sequence[str] | str | None = None,
        max_layer: int | None = None,
        Cs: Sequence[float] = DEFAULT_CS,
        cv: int = 3,
        heldout_fraction: float = 0.2,
        random_state: int | None = 0,
        tol: float = 1e-4,
        max_iter: int = 1000,
    ) -> None:
        self.sites = sites
        self.max_layer = max_layer
        self.Cs = Cs
        self.cv = cv
        self.heldout_fraction = heldout_fraction
        self.random_state = random_state
        self.tol = tol
        self.max_iter = max_iter

    def check_params(self) -> None:
        if not self.Cs or any(not np.isfinite(c) or c <= 0 for c in self.Cs):
            raise ConfigError(f"Cs must be positive numbers, got {self.Cs!r}")
        if not isinstance(self.cv, int) or self.cv < 2:
            raise ConfigError(f"cv must be an integer >= 2, got {self.cv!r}")
        self.check_max_layer()

    def fit(self, activations: Any, labels: Any) -> LinearProbeClassifier:
        """Score every (site, layer) on the held-out part; refit the best on all rows."""
        source, sites, y = self._fit_inputs(activations, labels, self.sites)
        held = self._held(y)
        # A probing set too small for cv folds per class gets as many as it can; below 2, C = 1.
        smallest = int(min(np.count_nonzero(y[~held]), np.count_nonzero(~y[~held])))
        folds = None
        if smallest >= 2:
            folds = StratifiedKFold(
                min(self.cv, smallest), shuffle=True, random_state=self.random_state
            )
        self.layer_scores_ = {site: np.full(n, np.nan) for site, (n, _) in sites.items()}
        self.layer_C_ = {site: np.full(n, np.nan) for site, (n, _) in sites.items()}
        self.layer_models_ = {site: [None] * n for site, (n, _) in sites.items()}
        for site, (n_layers, width) in sites.items():
            for layer in layers_read(n_layers, self.max_layer):
                # The slab is handed over, not kept: _score_layer standardises it in place.
                score, c, model = self._score_layer(
                    read_slab(source, site, layer, y.size, width), y, held, folds
                )
                self.layer_scores_[site][layer], self.layer_C_[site][layer] = score, c
                self.layer_models_[site][layer] = model
        self.sites_ = sites
        return self._choose(source, y)

    def _score_layer(self, slab, y, held, folds) -> tuple[float, float, LogisticModel]:
        """(held-out accuracy, chosen C, the model fitted on the fit rows) of one slab,
        standardised by its fit rows (the slab is overwritten and released: at most two slabs
        in memory)."""
        scaler = standardise(slab, ~held)
        fit_rows, held_rows = _split_rows(slab, held)
        del slab
        span = None
        if fit_rows.shape[1] > fit_rows.shape[0]:
            span = RowSpan(fit_rows)
            coordinates, held_rows = span.coordinates, span.project(held_rows)
        else:
            coordinates = fit_rows
        if folds is None:
            fitted = LogisticRegression(C=1.0, tol=self.tol, max_iter=self.max_iter)
        else:
            fitted = LogisticRegressionCV(
                Cs=list(self.Cs),
                cv=folds,
                l1_ratios=(0.0,),
                scoring="accuracy",
                use_legacy_attributes=False,
                tol=self.tol,
                max_iter=self.max_iter,
            )
        fitted.fit(np.asarray(coordinates, np.float64), y[~held])
        score = float(fitted.score(np.asarray(held_rows, np.float64), y[held]))
        coef = fitted.coef_[0] if span is None else span.weights(fitted.coef_[0])
        model = _logistic_model(scaler, coef, fitted.intercept_[0])
        return score, 1.0 if folds is None else float(fitted.C_), model

    def _choose(self, source, y) -> LinearProbeClassifier:
        """The best (site, layer) on the held-out part (ties: the earlier layer, then the site
        order), refitted on every probing row."""
        candidates = [
            (score, -layer, -s, site, layer)
            for s, (site, scores) in enumerate(self.layer_scores_.items())
            for layer, score in enumerate(scores)
            if not np.isnan(score)
        ]
        _, _, _, self.site_, self.layer_ = max(candidates)
        self.C_ = float(self.layer_C_[self.site_][self.layer_])
        width = self.sites_[self.site_][1]
        slab = read_slab(source, self.site_, self.layer_, y.size, width)
        self.model_ = fit_logistic(slab, y, self.C_, self.tol, self.max_iter)
        self.classes_ = np.array([False, True])
        return self

    def refit_up_to(self, activations: Any, labels: Any, max_layer: int) -> LinearProbeClassifier:
        """A new probe equal to this one fitted with ``max_layer``, from the layer scores
        already computed: only the chosen layer's slab is read again."""
        restricted = self._check_refit(max_layer)
        restricted.sites_ = dict(self.sites_)
        restricted.layer_scores_ = {s: v.copy() for s, v in self.layer_scores_.items()}
        restricted.layer_C_ = {s: v.copy() for s, v in self.layer_C_.items()}
        for scores in (*restricted.layer_scores_.values(), *restricted.layer_C_.values()):
            scores[max_layer + 1 :] = np.nan
        restricted.layer_models_ = {
            site: [m if k <= max_layer else None for k, m in enumerate(models)]
            for site, models in self.layer_models_.items()
        }
        source = as_activation_source(activations)
        return restricted._choose(source, encode_labels(labels))

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What ``from_state`` needs: JSON-able settings and the arrays (for saving)."""
        model = self._model()
        state = {
            "site": self.site_,
            "layer": self.layer_,
            "C": self.C_,
            "sites": shapes_json(self.sites_),
        }
        arrays = {f"model.{k}": v for k, v in model.arrays().items()}
        for site, (n_layers, width) in self.sites_.items():
            arrays[f"layer_scores.{site}"] = self.layer_scores_[site]
            arrays[f"layer_C.{site}"] = self.layer_C_[site]
            # Every layer's model, stacked (NaN: a layer not read), float32 to halve the file.
            stacked = {k: np.full((n_layers, width), np.nan, np.float32) for k in LAYER_ARRAYS}
            stacked["intercept"] = np.full(n_layers, np.nan, np.float32)
            for layer, model in enumerate(self.layer_models_[site]):
                if model is not None:
                    for key, value in model.arrays().items():
                        stacked[key][layer] = value.ravel()[0] if key == "intercept" else value
            arrays.update({f"layer_model.{site}.{k}": v for k, v in stacked.items()})
        return state, arrays

    def _restore(self, state: dict, arrays: dict) -> None:
        self.site_, self.layer_, self.C_ = (
            str(state["site"]),
            int(state["layer"]),
            float(state["C"]),
        )
        n_layers, width = self.sites_[self.site_]
        if not 0 <= self.layer_ < n_layers:
            raise ValueError(f"layer {self.layer_} is outside the site's {n_layers} layers")
        self.model_ = LogisticModel.from_arrays(_prefixed(arrays, "model."), width)
        self.layer_scores_ = {s: arrays[f"layer_scores.{s}"] for s in self.sites_}
        self.layer_C_ = {s: arrays[f"layer_C.{s}"] for s in self.sites_}
        self.layer_models_ = {}
        for site, (n_layers, width) in self.sites_.items():
            stacked = _prefixed(arrays, f"layer_model.{site}.")
            models = [None] * n_layers
            if stacked:  # absent in probes saved before every layer's model was kept
                for layer in range(n_layers):
                    if not np.isnan(stacked["intercept"][layer]):
                        row = {k: v[layer] for k, v in stacked.items()}
                        models[layer] = LogisticModel.from_arrays(row, width)
            self.layer_models_[site] = models

    def layer_decision(self, activations: Any, site: str, layer: int) -> np.ndarray:
        """The log-odds of "yes" of the model fitted on ``site`` and ``layer`` alone (on the
        probing set less its held-out part; ``layer_models_``)."""
        self._model()
        model = self.layer_models_[site][layer]
        if model is None:
            raise ConfigError(f"{site} layer {layer} was not fitted (max_layer {self.max_layer})")
        return model.decision(as_activation_source(activations).layer(site, layer))

    @property
    def reads_(self) -> dict[str, list[int]]:
        """The one (site, layer) the probe reads."""
        self._model()
        return {self.site_: [self.layer_]}

    def decision_function(self, activations: Any) -> np.ndarray:
        """The log-odds of "yes"."""
        model = self._model()
        return model.decision(as_activation_source(activations).layer(self.site_, self.layer_))


class SparseProbeClassifier(_LogisticProbe):
    """A logistic regression (``C``) on the ``k`` neurons of ``sites`` (layers <= max_layer)
    whose rule ``a > alpha`` best separates yes from no, in either polarity; ``k`` from ``ks``,
    chosen on the held-out part of the probing set (ties: the smaller k)."""

    def __init__(
        self,
        ks: Sequence[int] = DEFAULT_KS,
        sites: Sequence[str] | str | None = None,
        max_layer: int | None = None,
        alpha: float = 0.0,
        C: float = 1.0,
        heldout_fraction: float = 0.2,
        random_state: int | None = 0,
        tol: float = 1e-4,
        max_iter: int = 1000,
    ) -> None:
        self.ks = ks
        self.sites = sites
        self.max_layer = max_layer
        self.alpha = alpha
        self.C = C
        self.heldout_fraction = heldout_fraction
        self.random_state = random_state
        self.tol = tol
        self.max_iter = max_iter

    def check_params(self) -> None:
        if not self.ks or any(not isinstance(k, int | np.integer) or k < 1 for k in self.ks):
            raise ConfigError(f"ks must be integers >= 1, got {self.ks!r}")
        if not np.isfinite(self.C) or self.C <= 0:
            raise ConfigError(f"C must be a positive number, got {self.C!r}")
        self.check_max_layer()

    def fit(self, activations: Any, labels: Any) -> SparseProbeClassifier:
        """Rank every neuron (one pass over the slabs), then choose k on the held-out part."""
        source, sites, y = self._fit_inputs(activations, labels, self.sites)
        held = self._held(y)
        full, fit = _score_pass(
            source, sites, y, self.alpha, "accuracy", (1,), held, self.max_layer
        )
        # Either polarity: a neuron is as useful to a regression whichever way it separates.
        self.scores_ = {site: np.abs(s - 0.5) for site, s in full.items()}
        self.fit_scores_ = {site: np.abs(s - 0.5) for site, s in fit.items()}
        self.sites_ = sites
        return self._choose(source, y, held)

    def _choose(self, source, y, held) -> SparseProbeClassifier:
        ks = sorted(set(int(k) for k in self.ks))
        candidates = _top(self.fit_scores_, ks[-1])
        values = neuron_values(source, candidates)
        self.k_scores_ = {}
        for k in ks:
            if k > len(candidates):
                break
            model = fit_logistic(values[~held, :k], y[~held], self.C, self.tol, self.max_iter)
            self.k_scores_[k] = float(np.mean((model.decision(values[held, :k]) > 0) == y[held]))
        self.k_ = max(self.k_scores_, key=lambda k: (self.k_scores_[k], -k))
        self.neurons_ = _top(self.scores_, self.k_)
        values = neuron_values(source, self.neurons_)
        self.model_ = fit_logistic(values, y, self.C, self.tol, self.max_iter)
        self.classes_ = np.array([False, True])
        return self

    def refit_up_to(self, activations: Any, labels: Any, max_layer: int) -> SparseProbeClassifier:
        """A new probe equal to this one fitted with ``max_layer``, from the neuron scores
        already computed: only the candidates' values are read again."""
        restricted = self._check_refit(max_layer)
        restricted.sites_ = dict(self.sites_)
        restricted.scores_, restricted.fit_scores_ = (
            {site: _mask_layers(array, max_layer) for site, array in scores.items()}
            for scores in (self.scores_, self.fit_scores_)
        )
        y = encode_labels(labels)
        return restricted._choose(as_activation_source(activations), y, restricted._held(y))

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What ``from_state`` needs: JSON-able settings and the arrays (for saving)."""
        model = self._model()
        state = {
            "neurons": [list(n) for n in self.neurons_],
            "k": self.k_,
            "k_scores": {str(k): v for k, v in self.k_scores_.items()},
            "sites": shapes_json(self.sites_),
        }
        arrays = {f"model.{k}": v for k, v in model.arrays().items()}
        for site in self.sites_:
            arrays[f"scores.{site}"] = self.scores_[site]
            arrays[f"fit_scores.{site}"] = self.fit_scores_[site]
        return state, arrays

    def _restore(self, state: dict, arrays: dict) -> None:
        self.neurons_ = [(str(s), int(layer), int(i)) for s, layer, i in state["neurons"]]
        for site, layer, index in self.neurons_:
            n_layers, width = self.sites_[site]
            if not (0 <= layer < n_layers and 0 <= index < width):
                raise ValueError(f"neuron {site} {layer} #{index} is outside ({n_layers}, {width})")
        self.k_ = int(state["k"])
        self.k_scores_ = {int(k): float(v) for k, v in state["k_scores"].items()}
        self.model_ = LogisticModel.from_arrays(_prefixed(arrays, "model."), len(self.neurons_))
        self.scores_ = {s: arrays[f"scores.{s}"] for s in self.sites_}
        self.fit_scores_ = {s: arrays[f"fit_scores.{s}"] for s in self.sites_}

    @property
    def reads_(self) -> dict[str, list[int]]:
        """The (site, layers) of the chosen neurons."""
        self._model()
        return reads_of((site, layer) for site, layer, _ in self.neurons_)

    def decision_function(self, activations: Any) -> np.ndarray:
        """The log-odds of "yes"."""
        model = self._model()
        return model.decision(neuron_values(as_activation_source(activations), self.neurons_))


def _prefixed(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _top(scores: dict[str, np.ndarray], k: int) -> list[tuple[str, int, int]]:
    """The ``k`` best neurons (site, layer, index) of (1, L, W) scores, best first."""
    return [(n.site, n.layer, n.index) for n in _rank(scores, (1,), None, top_k=k)]
