"""Question-only ("blind") baseline: how much of a dataset the question text alone answers.

A logistic regression on the words and word pairs of the question, fit on the probing set and
never shown the image. Where it scores well above chance, the questions carry their answers'
priors (e.g. "Are there exactly four ...?" is mostly "no"), and a model — or a super neuron — can
score that much without looking at the image. It is the standard control of VQA benchmarks.

It follows the estimators' contract (:mod:`superneurons.classifiers.contract`): it reads a
split's questions and no activation (``reads_ == {}``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import torch

from superneurons.classifiers.contract import Split, split_questions
from superneurons.classifiers.super_neurons import NotFittedError, encode_labels

_WORD = re.compile(r"[a-z0-9]+")


def question_features(text: str) -> set[str]:
    """The lower-cased words of ``text`` and its adjacent word pairs."""
    words = _WORD.findall(text.lower())
    return set(words) | {f"{a} {b}" for a, b in pairwise(words)}


class QuestionOnlyClassifier:
    """Logistic regression (yes against no) on word and word-pair presence (L2, full-batch
    L-BFGS). Deterministic: no random initialisation, so the same data give the same model.

    ``X`` is a :class:`Split` (its questions are read) or the question texts themselves; labels
    are "yes"/"no" (or bool, True = yes).
    """

    reads_: dict[str, list[int]] = {}  # noqa: RUF012 - a constant: it reads no activation

    def __init__(self, l2: float = 1.0, max_iter: int = 200) -> None:
        self.l2 = l2
        self.max_iter = max_iter

    def _matrix(self, questions: Sequence[str]) -> torch.Tensor:
        x = torch.zeros(len(questions), len(self.vocabulary_) + 1, dtype=torch.float64)
        x[:, -1] = 1.0  # intercept
        for row, text in enumerate(questions):
            for feature in question_features(text):
                if (column := self.vocabulary_.get(feature)) is not None:
                    x[row, column] = 1.0
        return x

    def fit(self, X: Split | Sequence[str], labels: Sequence) -> QuestionOnlyClassifier:
        questions = split_questions(X)
        if len(questions) != len(labels):
            raise ValueError(f"{len(questions)} questions but {len(labels)} labels")
        if not questions:
            raise ValueError("no questions to fit")
        yes = encode_labels(labels, "yes")
        features = sorted(set().union(*(question_features(q) for q in questions)))
        self.vocabulary_ = {f: k for k, f in enumerate(features)}
        self.classes_ = np.array([False, True])  # no, yes
        x = self._matrix(questions)
        y = torch.tensor(yes.astype(np.int64))
        weights = torch.zeros(x.shape[1], len(self.classes_), dtype=torch.float64)
        weights.requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [weights], max_iter=self.max_iter, line_search_fn="strong_wolfe"
        )

        def loss() -> torch.Tensor:
            optimizer.zero_grad()
            value = torch.nn.functional.cross_entropy(x @ weights, y, reduction="sum")
            value = value + 0.5 * self.l2 * weights[:-1].pow(2).sum()  # intercept not penalised
            value.backward()
            return value

        optimizer.step(loss)
        self.coef_ = weights.detach()
        return self

    def decision_function(self, X: Split | Sequence[str]) -> np.ndarray:
        """Per question, the log-odds of "yes" (higher means yes)."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("QuestionOnlyClassifier is not fitted; call fit first")
        logits = (self._matrix(split_questions(X)) @ self.coef_).numpy()
        return logits[:, 1] - logits[:, 0]

    def predict(self, X: Split | Sequence[str]) -> np.ndarray:
        """True where the answer is "yes"."""
        return self.decision_function(X) > 0
