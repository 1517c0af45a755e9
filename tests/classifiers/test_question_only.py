"""The question-only baseline learns what the question text gives away, and nothing more."""

from __future__ import annotations

import numpy as np
import pytest

from superneurons.classifiers import NotFittedError, QuestionOnlyClassifier
from superneurons.classifiers.question_only import question_features

NUMBERS = ["one", "two", "three", "four"]
THINGS = ["cubes", "spheres", "cylinders", "red things", "metal objects"]


def count_questions(rng: np.random.Generator, n: int, biased: bool) -> tuple[list, list]:
    """Count questions whose answer follows the number word (biased) or a coin (not)."""
    questions, labels = [], []
    for _ in range(n):
        number = NUMBERS[rng.integers(4)]
        questions.append(f"Are there exactly {number} {THINGS[rng.integers(len(THINGS))]}?")
        yes = number in ("one", "two") if biased else rng.random() < 0.5
        labels.append("yes" if yes else "no")
    return questions, labels


def test_features_are_words_and_word_pairs():
    assert question_features("Is there a Red cube?") == {
        "is", "there", "a", "red", "cube", "is there", "there a", "a red", "red cube",
    }  # fmt: skip


def test_learns_a_prior_the_question_gives_away():
    rng = np.random.default_rng(0)
    blind = QuestionOnlyClassifier().fit(*count_questions(rng, 200, biased=True))
    questions, labels = count_questions(rng, 200, biased=True)
    assert blind.predict(questions) == labels


def test_stays_at_chance_when_the_question_says_nothing():
    rng = np.random.default_rng(1)
    blind = QuestionOnlyClassifier().fit(*count_questions(rng, 400, biased=False))
    questions, labels = count_questions(rng, 1000, biased=False)
    accuracy = np.mean([p == y for p, y in zip(blind.predict(questions), labels, strict=True)])
    assert 0.4 < accuracy < 0.6


def test_same_data_give_the_same_model():
    data = count_questions(np.random.default_rng(2), 100, biased=True)
    first, second = QuestionOnlyClassifier().fit(*data), QuestionOnlyClassifier().fit(*data)
    assert np.array_equal(first.decision_function(data[0]), second.decision_function(data[0]))


def test_unknown_words_and_letters_are_fine():
    blind = QuestionOnlyClassifier().fit(["Which? A", "Which? B", "Which? C"], ["A", "B", "C"])
    assert blind.classes_ == ["A", "B", "C"]
    assert blind.predict(["never seen words"])[0] in {"A", "B", "C"}


def test_errors():
    with pytest.raises(NotFittedError):
        QuestionOnlyClassifier().predict(["Is there a cube?"])
    with pytest.raises(ValueError, match="2 questions but 1 labels"):
        QuestionOnlyClassifier().fit(["a", "b"], ["yes"])
