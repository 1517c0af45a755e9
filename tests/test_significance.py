"""McNemar's exact test and the paired bootstrap, against scipy and hand-made counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from superneurons.significance import compare, mcnemar, paired_bootstrap_diff
from superneurons.tradeoff import pareto


def paired(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize("counts", [(50, 12, 3, 5), (10, 0, 7, 2), (4, 5, 5, 0), (9, 30, 1, 0)])
def test_mcnemar_counts_and_p_values_match_scipy(counts):
    a, b = paired(*counts)
    result = mcnemar(a, b)
    assert (result["b"], result["c"]) == (counts[1], counts[2])
    expected = binomtest(counts[1], counts[1] + counts[2], 0.5).pvalue
    assert result["p_value"] == pytest.approx(expected, rel=1e-12)


def test_mcnemar_without_disagreement_is_one():
    a, b = paired(8, 0, 0, 3)
    assert mcnemar(a, b) == {"b": 0, "c": 0, "p_value": 1.0}


def test_the_paired_bootstrap_brackets_the_difference_and_is_deterministic():
    rng = np.random.default_rng(0)
    truth = rng.random(400) < 0.8
    other = np.where(rng.random(400) < 0.2, ~truth, truth)
    low, high = paired_bootstrap_diff(truth, other, seed=3)
    difference = truth.mean() - other.mean()
    assert low < difference < high and low > 0  # clearly better: the interval excludes 0
    assert paired_bootstrap_diff(truth, other, seed=3) == (low, high)
    assert compare(truth, truth)["diff_ci95"] == [0.0, 0.0]


def test_paired_inputs_are_checked():
    with pytest.raises(ValueError, match="equal 1-D"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


def test_the_pareto_front():
    points = [(0.8, 1.0), (0.7, 3.0), (0.75, 2.0), (0.7, 2.0), (0.9, None)]
    assert pareto(points) == [True, True, True, False, False]


def test_the_unpaired_interval_brackets_the_difference_of_two_independent_sets():
    from superneurons.significance import unpaired_bootstrap_diff

    rng = np.random.default_rng(5)
    a, b = rng.random(400) < 0.8, rng.random(300) < 0.6
    low, high = unpaired_bootstrap_diff(a, b, n_boot=2000, seed=1)
    assert low < a.mean() - b.mean() < high and low > 0  # ~20 points apart: above 0
    assert (low, high) == unpaired_bootstrap_diff(a, b, n_boot=2000, seed=1)  # seeded
    # The same set on both sides: a paired interval would be [0, 0]; resampled apart, it is not.
    same = rng.random(400) < 0.7
    width = np.subtract(*unpaired_bootstrap_diff(same, same, n_boot=2000)[::-1])
    assert width > 0.05
