"""The question-only baseline learns what the question text gives away, and nothing more."""

from __future__ import annotations

import numpy as np
import pytest

from superneurons.classifiers import NotFittedError, QuestionOnlyClassifier, Split
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
    assert blind.predict(questions).tolist() == [label == "yes" for label in labels]


def test_stays_at_chance_when_the_question_says_nothing():
    rng = np.random.default_rng(1)
    blind = QuestionOnlyClassifier().fit(*count_questions(rng, 400, biased=False))
    questions, labels = count_questions(rng, 1000, biased=False)
    truth = np.array([label == "yes" for label in labels])
    accuracy = np.mean(blind.predict(questions) == truth)
    assert 0.4 < accuracy < 0.6


def test_same_data_give_the_same_model():
    data = count_questions(np.random.default_rng(2), 100, biased=True)
    first, second = QuestionOnlyClassifier().fit(*data), QuestionOnlyClassifier().fit(*data)
    assert np.array_equal(first.decision_function(data[0]), second.decision_function(data[0]))


def test_it_answers_a_split_on_the_estimators_contract():
    questions, labels = count_questions(np.random.default_rng(3), 100, biased=True)
    split = Split(questions=questions)
    blind = QuestionOnlyClassifier().fit(split, labels)
    assert blind.reads_ == {}  # text only: no activation, nothing to exit early after
    assert blind.predict(split).dtype == bool
    np.testing.assert_array_equal(blind.predict(split), blind.decision_function(split) > 0)
    assert blind.predict(Split(questions=["never seen words"])).shape == (1,)


def test_errors():
    with pytest.raises(NotFittedError):
        QuestionOnlyClassifier().predict(["Is there a cube?"])
    with pytest.raises(ValueError, match="2 questions but 1 labels"):
        QuestionOnlyClassifier().fit(["a", "b"], ["yes"])
