"""What every estimator over activations shares: labels, the held-out part of the probing set,
the (site, layer) slabs it may read, and scikit-learn's parameter handling.

The estimators derive from ``sklearn.base.BaseEstimator`` (``get_params``, ``set_params``,
``clone``, ``repr``): hyper-parameters are set in ``__init__`` and nothing else happens there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as _SklearnNotFitted

from superneurons.errors import ConfigError, DataError


class ActivationSource(Protocol):
    """What the estimators read: per-site shapes and one (N, width) layer slab at a time."""

    sites: dict[str, tuple[int, int]]

    def layer(self, site: str, layer: int) -> np.ndarray: ...


class NotFittedError(_SklearnNotFitted):
    """Raised when an estimator is used before ``fit`` (or before it is loaded)."""


class ActivationEstimator(BaseEstimator):
    """Base of the estimators that read activations: ``set_params`` refuses unknown names with
    a ConfigError; ``max_layer`` (every such estimator has it) bounds the layers read."""

    def set_params(self, **params: Any):
        known = self.get_params()
        for name in params:
            if name not in known:
                raise ConfigError(f"unknown parameter {name!r}; known: {sorted(known)}")
        return super().set_params(**params)

    def _fit_inputs(self, activations: Any, labels: Any, sites, pos_label: str = "yes"):
        """What every ``fit`` starts with: the parameters checked, then (source, the sites'
        shapes, bool labels), the labels' count checked against the source's."""
        from superneurons.classifiers.super_neurons import as_activation_source

        self.check_params()
        source = as_activation_source(activations)
        shapes = fit_sites(source, sites)
        y = encode_labels(labels, pos_label)
        if n_samples(source) != y.size:
            raise ValueError(
                f"activations hold {n_samples(source)} samples but labels has {y.size}"
            )
        return source, shapes, y

    def check_max_layer(self) -> None:
        max_layer = getattr(self, "max_layer", None)
        if max_layer is not None and (not isinstance(max_layer, int) or max_layer < 0):
            raise ConfigError(f"max_layer must be None or an integer >= 0, got {max_layer!r}")


def encode_labels(labels: Any, pos_label: str = "yes") -> np.ndarray:
    """Labels as a bool vector (True = positive class), checked for the two classes."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise DataError("the probing set is empty: no labels")
    if array.dtype == bool:
        y = array
    elif array.dtype.kind in "iuf":
        found = sorted(set(np.unique(array).tolist()))
        if not set(found) <= {0, 1}:
            raise DataError(f"numeric labels must be 0 or 1; found {found[:10]}")
        y = array == 1
    else:
        text = np.char.lower(np.char.strip(array.astype(str)))
        found = sorted(set(np.unique(text).tolist()))
        if not set(found) <= {"yes", "no"}:
            raise DataError(f"string labels must be 'yes' or 'no'; found {found[:10]}")
        y = text == pos_label
    if y.all() or not y.any():
        only = "positive" if y.all() else "negative"
        raise DataError(f"all {y.size} labels are {only}; the probing set needs both classes")
    return y


def stratified_heldout(y: np.ndarray, fraction: float, seed: int | None) -> np.ndarray:
    """A mask of held-out rows: ``fraction`` of each class, at least one in and one out."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"heldout_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = np.zeros(y.size, dtype=bool)
    for cls in (False, True):
        rows = np.flatnonzero(y == cls)
        if rows.size < 2:
            raise DataError(
                f"a held-out part needs at least 2 samples per class; class {cls} has {rows.size}"
            )
        k = min(rows.size - 1, max(1, round(fraction * rows.size)))
        held[rng.permutation(rows)[:k]] = True
    return held


def fit_sites(
    source: ActivationSource, sites: Sequence[str] | str | None
) -> dict[str, tuple[int, int]]:
    """The (n_layers, width) of the sites an estimator reads (``None``: all the source has)."""
    available = dict(source.sites)
    if sites is None:
        names = list(available)
    elif isinstance(sites, str):
        names = [sites]
    else:
        names = list(sites)
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise ConfigError(f"sites {names} not available; the activations hold {list(available)}")
    return {name: (int(available[name][0]), int(available[name][1])) for name in names}


def layers_read(n_layers: int, max_layer: int | None) -> range:
    """The layers an estimator with ``max_layer`` reads: 0 … min(max_layer, n_layers − 1)."""
    return range(n_layers if max_layer is None else min(n_layers, max_layer + 1))


def n_samples(source: ActivationSource) -> int:
    """N, from the source's ``n_samples`` when it has one, else from its first slab."""
    n = getattr(source, "n_samples", None)
    if n is None:
        site = next(iter(source.sites))
        n = np.asarray(source.layer(site, 0)).shape[0]
    return int(n)


def read_slab(source: ActivationSource, site: str, layer: int, n_rows: int, width: int):
    """One (N, width) float32 slab, its shape checked."""
    slab = np.asarray(source.layer(site, layer), dtype=np.float32)
    if slab.shape != (n_rows, width):
        raise ValueError(
            f"{site} layer {layer}: expected a ({n_rows}, {width}) slab, got {slab.shape}"
        )
    return slab


def read_columns(
    source: ActivationSource, site: str, layer: int, indices: Sequence[int], rows: Any = None
) -> np.ndarray:
    """float32 (N, K) values of some neurons of one slab (on ``rows`` only, when given): from
    the source's ``columns`` when it has one (a store reads just those), else from the slab."""
    if hasattr(source, "columns"):
        return np.asarray(source.columns(site, layer, indices, rows), dtype=np.float32)
    values = np.asarray(source.layer(site, layer), dtype=np.float32)[:, list(indices)]
    return values if rows is None else values[rows]


def read_bits(
    source: ActivationSource, site: str, layer: int, rows: Any = None
) -> tuple[np.ndarray, str] | None:
    """(int16 bits, "float16" or "bfloat16") of one slab, not widened, from a source that
    stores 16-bit floats (its ``bits``); None from any other source."""
    bits = getattr(source, "bits", None)
    return None if bits is None else bits(site, layer, rows)


def reads_of(pairs) -> dict[str, list[int]]:
    """``{site: [layers]}`` from (site, layer) pairs, in first-seen order."""
    reads: dict[str, list[int]] = {}
    for site, layer in pairs:
        if layer not in reads.setdefault(site, []):
            reads[site].append(layer)
    return reads


def shapes_json(sites: dict) -> dict[str, list[int]]:
    """``sites_`` as JSON: site -> [n_layers, width]."""
    return {site: [int(n) for n in shape] for site, shape in sites.items()}
