import warnings

import numpy as np
import pytest

from superneurons.metrics import (
    METRICS,
    agreement_rate,
    binary_metrics,
    bootstrap_ci,
    confusion_counts,
    neuron_scores,
    parse_choice,
    parse_yes_no,
)


def test_binary_metrics_match_hand_counts():
    pred = np.array([1, 1, 0, 0, 1, 1, 0], dtype=bool)
    labels = np.array([1, 0, 1, 0, 1, 0, 0], dtype=bool)
    # tp = 2 (rows 0, 4), fp = 2 (rows 1, 5), fn = 1 (row 2), tn = 2 (rows 3, 6)
    result = binary_metrics(pred, labels)
    assert result == pytest.approx(
        {"accuracy": 4 / 7, "precision": 2 / 4, "recall": 2 / 3, "f1": 2 * 2 / (2 * 2 + 2 + 1)}
    )
    assert all(type(value) is float for value in result.values())


def test_binary_metrics_undefined_ratios_are_zero_without_warnings():
    labels = np.array([True, False, True])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        never_yes = binary_metrics(np.zeros(3, dtype=bool), labels)
        no_positives = binary_metrics(np.array([True, False, False]), np.zeros(3, dtype=bool))
    assert never_yes["accuracy"] == pytest.approx(1 / 3)
    assert never_yes["precision"] == never_yes["recall"] == never_yes["f1"] == 0.0
    assert no_positives["recall"] == 0.0 and no_positives["f1"] == 0.0
    assert no_positives["accuracy"] == pytest.approx(2 / 3)


def naive_scores(activations, labels, alpha, metric, polarity):
    scores = []
    for column in activations.T:
        pred = column > alpha if polarity == 1 else column < alpha
        scores.append(binary_metrics(pred, labels)[metric])
    return np.array(scores)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("polarity", [1, -1])
def test_neuron_scores_equal_a_per_column_loop(metric, polarity):
    rng = np.random.default_rng(3)
    # Integer activations put many values exactly at alpha: the rule is strict either way.
    activations = rng.integers(-2, 3, size=(60, 37)).astype(np.float32)
    activations[:, 5] = -5.0  # a column that never (or always) says yes
    labels = rng.random(60) < 0.4
    for alpha in (0.0, 1.0):
        scores = neuron_scores(activations, labels, alpha, metric, polarity)
        assert scores.dtype == np.float64 and scores.shape == (37,)
        expected = naive_scores(activations, labels, alpha, metric, polarity)
        np.testing.assert_allclose(scores, expected)


def test_neuron_scores_chunking_covers_every_column():
    rng = np.random.default_rng(0)
    activations = rng.normal(size=(8, 4096 + 7)).astype(np.float32)
    labels = np.array([True, False] * 4)
    scores = neuron_scores(activations, labels, metric="f1")
    np.testing.assert_allclose(scores[-7:], naive_scores(activations[:, -7:], labels, 0.0, "f1", 1))
    tp, fp, fn, tn = confusion_counts(activations, labels)
    np.testing.assert_array_equal(tp + fp + fn + tn, np.full(activations.shape[1], 8))


def test_neuron_scores_rejects_unknown_metric_and_polarity():
    with pytest.raises(ValueError, match="accuracy, precision, recall, f1"):
        neuron_scores(np.zeros((2, 2)), np.array([True, False]), metric="auc")
    with pytest.raises(ValueError, match="polarity"):
        neuron_scores(np.zeros((2, 2)), np.array([True, False]), polarity=0)
    with pytest.raises(ValueError, match="rows"):
        neuron_scores(np.zeros((3, 2)), np.array([True, False]))


def test_agreement_rate_counts_matching_pairs():
    votes = np.array([[True, False], [True, True], [False, False]])
    answers = np.array([True, False, False])
    # row 0: 1 of 2 agree, row 1: 0 of 2, row 2: 2 of 2
    assert agreement_rate(votes, answers) == pytest.approx(3 / 6)
    valid = np.array([True, False, True])
    assert agreement_rate(votes, answers, valid=valid) == pytest.approx(3 / 4)
    assert np.isnan(agreement_rate(votes, answers, valid=np.zeros(3, dtype=bool)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", "yes"),
        ("No, there is not.", "no"),
        ("There is no cat.", "no"),
        ("yes", "yes"),
        ("  YES  ", "yes"),
        ("Yes, there is a dog. No cat though.", "yes"),
        ("Not really", "no"),
        ("", None),
        (None, None),
        ("Maybe", None),
        ("There isn't one.", None),
        (". Yes", None),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("B. red", "B"),
        ("(C) a sphere", "C"),
        ("The answer is B", "B"),
        ("The answer is (D).", "D"),
        (" A ", "A"),
        ("E", None),  # beyond four choices
        ("A red cube", None),  # an article, not an option
        ("The answer is Blue", None),
        ("red", None),
        ("", None),
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text, 4) == expected


def test_bootstrap_ci_brackets_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.5
    pred = np.where(rng.random(300) < 0.8, labels, ~labels)
    for metric in METRICS:
        point = binary_metrics(pred, labels)[metric]
        low, high = bootstrap_ci(pred, labels, metric=metric, n_boot=500, seed=4)
        assert low <= point <= high
        assert 0.0 < high - low < 0.25
        assert bootstrap_ci(pred, labels, metric=metric, n_boot=500, seed=4) == (low, high)
    assert bootstrap_ci(pred, labels, n_boot=500, seed=5) != bootstrap_ci(pred, labels, n_boot=500)
    narrow = bootstrap_ci(pred, labels, n_boot=500, seed=4, level=0.5)
    wide = bootstrap_ci(pred, labels, n_boot=500, seed=4, level=0.99)
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1]
