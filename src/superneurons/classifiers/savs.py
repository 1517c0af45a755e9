"""Sparse Attention Vectors (SAVs; Mitra et al. 2025): attention heads as nearest-class-mean
classifiers, the best ``k`` voting.

The ``attn`` site (the input of ``o_proj``: the concatenated head outputs) is split into heads,
``n_heads × head_dim``. Per head, one mean vector per class over the probing set; a head answers
with the class whose mean is nearer in cosine similarity; heads are scored by that accuracy on
the probing set, and the top ``k`` (default 20) vote by majority.

As in the reference code (github.com/chancharikmitra/SAVs, ``mllm_encode``/``mllm_classify``):
raw (unnormalised) activations at the last prompt position, arithmetic class means, cosine
similarity, heads scored on the same examples the means come from, majority vote with a tie
going to the best-ranked head's class. Where this departs from it, and why:

- the probing set is the method's (balanced, ~1,000–3,000 questions) rather than 20 examples per
  class, so that every estimator is fitted on the same data;
- a head whose two similarities are equal answers "no" (the reference takes the first class it
  saw, which depends on the order of the file);
- equal head scores rank by layer, then head (the reference's ``argsort`` is not stable);
- ``max_layer`` bounds the layers read, so that a forward pass can stop after the deepest
  selected head (the reference reads every layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone

from superneurons.classifiers.base import (
    ActivationEstimator,
    NotFittedError,
    layers_read,
    read_slab,
    reads_of,
    shapes_json,
)
from superneurons.classifiers.super_neurons import aggregate, as_activation_source
from superneurons.errors import ClassifierError, ConfigError


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of the last axis scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def head_votes(heads: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Each head's answer (N, H) bool, True = yes: ``heads`` (N, H, d) nearer, in cosine
    similarity, to the "yes" mean than to the "no" mean of ``means`` (2, H, d)."""
    unit = _unit(heads)
    similarity = np.einsum("nhd,chd->nhc", unit, _unit(means))
    return similarity[..., 1] > similarity[..., 0]


class SAVClassifier(ActivationEstimator):
    """Sparse attention vectors: the ``k`` best heads of ``site``, nearest class mean each.

    ``n_heads`` is the language model's number of attention heads (the site's width is
    ``n_heads × head_dim``); ``max_layer`` bounds the layers read.
    """

    def __init__(
        self,
        n_heads: int | None = None,
        k: int = 20,
        max_layer: int | None = None,
        site: str = "attn",
    ) -> None:
        self.n_heads = n_heads
        self.k = k
        self.max_layer = max_layer
        self.site = site

    def check_params(self) -> None:
        if not isinstance(self.n_heads, int) or self.n_heads < 1:
            raise ConfigError(f"n_heads must be the model's number of heads, got {self.n_heads!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {self.k!r}")
        self.check_max_layer()

    def fit(self, activations: Any, labels: Any) -> SAVClassifier:
        """Class means and the accuracy of every head (layers <= max_layer); keep the top k."""
        source, sites, y = self._fit_inputs(activations, labels, self.site)
        ((n_layers, width),) = sites.values()
        if width % self.n_heads:
            raise ConfigError(
                f"{self.site} width {width} is not a multiple of {self.n_heads} heads"
            )
        head_dim = width // self.n_heads
        # NaN: a layer not read (past max_layer).
        self.class_means_ = np.full((n_layers, 2, self.n_heads, head_dim), np.nan, np.float32)
        self.head_scores_ = np.full((n_layers, self.n_heads), np.nan)
        for layer in layers_read(n_layers, self.max_layer):
            heads = read_slab(source, self.site, layer, y.size, width)
            heads = heads.reshape(y.size, self.n_heads, head_dim)
            means = np.stack([heads[~y].mean(axis=0), heads[y].mean(axis=0)])
            self.class_means_[layer] = means
            self.head_scores_[layer] = (head_votes(heads, means) == y[:, None]).mean(axis=0)
            del heads  # before the next slab is read
        self.sites_ = {self.site: (n_layers, width)}
        return self._select()

    def _select(self) -> SAVClassifier:
        """The top k heads by probing accuracy; ties by layer, then head."""
        layer, head = np.nonzero(~np.isnan(self.head_scores_))
        order = np.lexsort((head, layer, -self.head_scores_[layer, head]))[: self.k]
        self.heads_ = [(int(layer[i]), int(head[i])) for i in order]  # best first
        self.classes_ = np.array([False, True])
        return self

    def refit_up_to(self, activations: Any, labels: Any, max_layer: int) -> SAVClassifier:
        """A new classifier equal to this one fitted with ``max_layer``, without reading any
        activation again (the class means and head scores of every layer are kept)."""
        self._fitted()
        if self.max_layer is not None and max_layer > self.max_layer:
            raise ConfigError(f"fitted up to layer {self.max_layer}, not up to {max_layer}")
        restricted = clone(self).set_params(max_layer=max_layer)
        restricted.check_params()
        restricted.class_means_ = self.class_means_.copy()
        restricted.head_scores_ = self.head_scores_.copy()
        restricted.class_means_[max_layer + 1 :] = np.nan
        restricted.head_scores_[max_layer + 1 :] = np.nan
        restricted.sites_ = dict(self.sites_)
        return restricted._select()

    def _fitted(self) -> list[tuple[int, int]]:
        if not hasattr(self, "heads_"):
            raise NotFittedError("this SAVClassifier is not fitted; call fit first")
        return self.heads_

    @property
    def reads_(self) -> dict[str, list[int]]:
        """The layers of the selected heads: all a prediction reads."""
        return reads_of((self.site, layer) for layer, _ in self._fitted())

    def votes(self, activations: Any) -> np.ndarray:
        """Each selected head's vote (N, k) bool, best head first."""
        heads = self._fitted()
        source = as_activation_source(activations)
        n_layers, width = self.sites_[self.site]
        if tuple(source.sites.get(self.site, ())) != (n_layers, width):
            raise ClassifierError(
                f"SAVs read {self.site!r} as {(n_layers, width)} (layers, width); the "
                f"activations hold {source.sites.get(self.site)}"
            )
        head_dim = width // self.n_heads
        out = None
        for layer in sorted({layer for layer, _ in heads}):
            slab = np.asarray(source.layer(self.site, layer), dtype=np.float32)
            slab = slab.reshape(len(slab), self.n_heads, head_dim)
            columns = [k for k, (at, _) in enumerate(heads) if at == layer]
            chosen = [heads[k][1] for k in columns]
            if out is None:
                out = np.empty((len(slab), len(heads)), dtype=bool)
            means = self.class_means_[layer][:, chosen]
            out[:, columns] = head_votes(slab[:, chosen], means)
        return out

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What ``from_state`` needs: JSON-able settings and the arrays (for saving)."""
        self._fitted()
        state = {"heads": [list(h) for h in self.heads_], "sites": shapes_json(self.sites_)}
        return state, {"class_means": self.class_means_, "head_scores": self.head_scores_}

    @classmethod
    def from_state(cls, params: dict, state: dict, arrays: dict) -> SAVClassifier:
        estimator = cls(**params)
        estimator.check_params()
        estimator.sites_ = {site: tuple(shape) for site, shape in state["sites"].items()}
        n_layers, width = estimator.sites_[estimator.site]
        estimator.class_means_ = np.asarray(arrays["class_means"], np.float32)
        estimator.head_scores_ = np.asarray(arrays["head_scores"], np.float64)
        shape = (n_layers, 2, estimator.n_heads, width // estimator.n_heads)
        if estimator.class_means_.shape != shape:
            raise ValueError(f"class_means is {estimator.class_means_.shape}, expected {shape}")
        estimator._select()
        if [list(h) for h in estimator.heads_] != state["heads"]:
            raise ValueError("the saved heads are not the best of the saved head scores")
        return estimator

    def decision_function(self, activations: Any) -> np.ndarray:
        """The fraction of the selected heads voting yes."""
        return self.votes(activations).mean(axis=1)

    def predict(self, activations: Any) -> np.ndarray:
        """The heads' majority (a tie goes to the best head)."""
        return aggregate(self.votes(activations), "majority")
