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
from sklearn.base import BaseEstimator
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from superneurons.classifiers.base import NotFittedError, encode_labels
from superneurons.classifiers.contract import Split, split_questions

_WORD = r"[a-z0-9]+"


def question_features(text: str) -> set[str]:
    """The lower-cased words of ``text`` and its adjacent word pairs (what the model sees)."""
    words = re.findall(_WORD, text.lower())
    return set(words) | {f"{a} {b}" for a, b in pairwise(words)}


class QuestionOnlyClassifier(BaseEstimator):
    """scikit-learn's ``LogisticRegression`` (L2, lbfgs) on the presence of words and word pairs
    (``CountVectorizer(ngram_range=(1, 2), binary=True)``). Deterministic: the same data give
    the same model.

    ``C`` is scikit-learn's inverse regularisation strength; the default 2.0 is the penalty the
    hand-written baseline used before (½·l2·‖w‖² with l2 = 1 on a two-column softmax, which is
    ¼·‖w‖² on the binary weights). ``X`` is a :class:`Split` (its questions are read) or the
    question texts themselves; labels are "yes"/"no" (or bool, True = yes).
    """

    reads_: dict[str, list[int]] = {}  # noqa: RUF012 - a constant: it reads no activation

    def __init__(self, C: float = 2.0, max_iter: int = 1000) -> None:
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: Split | Sequence[str], labels: Sequence) -> QuestionOnlyClassifier:
        questions = split_questions(X)
        if len(questions) != len(labels):
            raise ValueError(f"{len(questions)} questions but {len(labels)} labels")
        if not questions:
            raise ValueError("no questions to fit")
        yes = encode_labels(labels, "yes")
        words = CountVectorizer(token_pattern=_WORD, ngram_range=(1, 2), binary=True)
        regression = LogisticRegression(C=self.C, max_iter=self.max_iter)
        self.pipeline_ = make_pipeline(words, regression).fit(questions, yes)
        self.vocabulary_ = words.vocabulary_
        self.classes_ = np.array([False, True])  # no, yes
        return self

    def decision_function(self, X: Split | Sequence[str]) -> np.ndarray:
        """Per question, the log-odds of "yes" (higher means yes)."""
        if not hasattr(self, "pipeline_"):
            raise NotFittedError("QuestionOnlyClassifier is not fitted; call fit first")
        return self.pipeline_.decision_function(split_questions(X))

    def predict(self, X: Split | Sequence[str]) -> np.ndarray:
        """True where the answer is "yes"."""
        return self.decision_function(X) > 0
