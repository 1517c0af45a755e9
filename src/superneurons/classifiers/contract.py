"""One contract for everything that answers: super neurons, baselines, the model itself.

An *estimator* is fitted on the probing split and answers another one::

    estimator.fit(split, labels) -> estimator
    estimator.predict(split) -> (N,) bool, True = "yes"
    estimator.decision_function(split) -> (N,) float, higher = "yes"
    estimator.reads_ -> {site: [layers]} it reads; {} for a text-only one; None: the whole model

A :class:`Split` carries what any of them may read — the activations (any activation source: a
store, arrays, early-exit values), the question texts and the model's own parsed answers — so
evaluation loops over ``{name: estimator}`` and the predictor early-exits for any estimator that
reads activations: it runs the model only to the deepest layer in ``reads_``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from superneurons.classifiers.base import read_bits, read_columns


class Estimator(Protocol):
    reads_: dict[str, list[int]] | None

    def fit(self, split: Split, labels: Any) -> Estimator: ...

    def predict(self, split: Split) -> np.ndarray: ...

    def decision_function(self, split: Split) -> np.ndarray: ...


@dataclass
class Split:
    """One split as every estimator sees it; also an activation source itself (``sites``,
    ``layer``), so it goes wherever activations do.

    ``labels`` (bool, True = "yes") are known for probing and validation splits; the model's
    answers are scored against them (an unparseable answer counts as wrong).
    """

    activations: Any = None
    questions: Sequence[str] | None = None
    model_answers: Sequence[str | None] | None = None  # parsed: "yes", "no" or None
    labels: np.ndarray | None = None

    @classmethod
    def from_store(cls, store, questions: Sequence[str] | None = None) -> Split:
        """A store's activations, labels and the model's parsed answers (``questions``: the
        texts of its records, in store order, for text-only estimators)."""
        labels = np.array([label == "yes" for label in store.labels])
        if questions is not None and len(questions) != len(labels):
            raise ValueError(f"{len(questions)} questions for a store of {len(labels)} samples")
        return cls(store, questions, store.field("parsed"), labels)

    @property
    def sites(self) -> dict[str, tuple[int, int]]:
        return {} if self.activations is None else self.activations.sites

    def layer(self, site: str, layer: int) -> np.ndarray:
        return self.activations.layer(site, layer)

    def columns(self, site: str, layer: int, indices, rows=None) -> np.ndarray:
        return read_columns(self.activations, site, layer, indices, rows)

    def bits(self, site: str, layer: int, rows=None) -> tuple[np.ndarray, str] | None:
        return read_bits(self.activations, site, layer, rows)

    @property
    def n_samples(self) -> int:
        for part in (self.labels, self.questions, self.model_answers):
            if part is not None:
                return len(part)
        n = getattr(self.activations, "n_samples", None)
        return n if n is not None else len(self.activations.records)


def split_questions(split: Split | Sequence[str]) -> list[str]:
    """The question texts of ``split`` (a plain sequence of strings is taken as they are)."""
    questions = split.questions if isinstance(split, Split) else split
    if questions is None:
        raise ValueError("this estimator reads the questions, and the split has none")
    return list(questions)


class ModelAnswers:
    """The model's own answers as an estimator: nothing to fit, the whole model runs.

    An unparseable answer counts as wrong (the opposite of the split's label), so the model is
    never credited for an answer it did not give.
    """

    reads_: dict[str, list[int]] | None = None

    def fit(self, split: Split, labels: Any = None) -> ModelAnswers:
        return self

    def valid(self, split: Split) -> np.ndarray:
        """Where the model's answer parses."""
        return np.array([answer is not None for answer in split.model_answers])

    def predict(self, split: Split) -> np.ndarray:
        if split.model_answers is None or split.labels is None:
            raise ValueError("scoring the model's answers needs the split's answers and labels")
        return np.array(
            [
                answer == "yes" if answer is not None else not label
                for answer, label in zip(split.model_answers, split.labels, strict=True)
            ]
        )

    def decision_function(self, split: Split) -> np.ndarray:
        return self.predict(split).astype(float)
