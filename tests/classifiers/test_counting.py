"""One pass of vote counts for many α and many probing subsets equals fitting each one alone,
on float16 and bfloat16 stores holding −0, values equal to the thresholds and (bfloat16) NaN
and ±inf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from superneurons.analysis.probe_size import RowSubset, balanced_subset
from superneurons.classifiers import Split, SuperNeuronClassifier
from superneurons.classifiers.counting import subset_counts, vote_counts
from superneurons.errors import ConfigError
from superneurons.metrics import confusion_counts
from superneurons.store import ActivationWriter

N, LAYERS, WIDTH = 300, 3, 24
ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def awkward_store(path, dtype: str, seed: int = 0):
    """Noise with a planted neuron per layer, and the values rules trip over: −0, exactly the
    thresholds, the extremes, and in bfloat16 (float16 stores refuse them) NaN and ±inf."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 2 == 0
    values = rng.normal(size=(N, LAYERS, WIDTH)).astype(np.float32)
    values[:, :, 2] += np.where(y, 0.7, -0.7)[:, None]
    values[:, 1, 5] -= np.where(y, 0.9, -0.9)  # separates yes from no the other way round
    flat = values.reshape(-1)
    extremes = [np.nan, np.inf, -np.inf] if dtype == "bfloat16" else [65504.0, -65504.0]
    specials = np.array([-0.0, 0.0, *extremes, *ALPHAS], np.float32)
    spots = rng.choice(flat.size, 400, replace=False)
    flat[spots] = specials[rng.integers(0, specials.size, spots.size)]
    records = [{"id": f"q{i}", "label": "yes" if y[i] else "no", "parsed": "yes"} for i in range(N)]
    data = {"resid": values, "mlp": values[:, :, ::-1].copy()}
    if dtype == "bfloat16":
        data = {site: torch.from_numpy(v).bfloat16() for site, v in data.items()}
    sites = {site: (LAYERS, WIDTH) for site in data}
    with ActivationWriter(path, sites, N, dtype) as writer:
        writer.append(data, records)
        return writer.finish()


def assert_same_fit(a: SuperNeuronClassifier, b: SuperNeuronClassifier) -> None:
    assert a.selected_ == b.selected_ and a.threshold_ == b.threshold_
    assert a.heldout_scores_ == b.heldout_scores_
    for site in a.scores_:
        np.testing.assert_array_equal(a.scores_[site], b.scores_[site])  # NaN where not read


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("polarity", ["positive", "both"])
def test_one_pass_for_every_alpha_equals_fitting_at_each_alpha(tmp_path, dtype, polarity):
    store = awkward_store(tmp_path / "s", dtype)
    split = Split.from_store(store)
    base = SuperNeuronClassifier(polarity=polarity, max_layer=1)
    counts = base.count_votes(split, split.labels, ALPHAS)
    for alpha, at_alpha in zip(ALPHAS, counts, strict=True):
        alone = clone(base).set_params(alpha=alpha).fit(split, split.labels)
        from_counts = clone(base).set_params(alpha=alpha).fit(split, split.labels, at_alpha)
        assert_same_fit(from_counts, alone)
        # ... and the counts themselves are the plain confusion counts per polarity.
        slab = store.layer("resid", 0)
        for p, sign in enumerate(base.polarities):
            tp, fp, _, _ = confusion_counts(slab, split.labels, alpha, sign)
            counted = at_alpha.counts["resid"][p, :, 0]
            np.testing.assert_array_equal(counted[0::2].sum(axis=0), tp)
            np.testing.assert_array_equal(counted[1::2].sum(axis=0), fp)
        assert (at_alpha.counts["resid"][:, :, 2] == -1).all()  # past max_layer: not read


def test_one_pass_for_many_subsets_equals_fitting_each_subset(tmp_path):
    store = awkward_store(tmp_path / "s", "float16", seed=1)
    labels = Split.from_store(store).labels
    rng = np.random.default_rng(0)
    subsets = [balanced_subset(labels, size, rng) for size in (40, 40, 100, 250, N)]
    for settings in ({}, {"selection": "top_k", "top_k": 3, "polarity": "both"}):
        classifier = SuperNeuronClassifier(**settings)
        counts = subset_counts(classifier, store, labels, subsets)
        for rows, subset_counts_ in zip(subsets, counts, strict=True):
            source = RowSubset(store, rows)
            alone = clone(classifier).fit(source, labels[rows])
            assert_same_fit(clone(classifier).fit(source, labels[rows], subset_counts_), alone)


def test_counts_do_not_depend_on_the_number_of_threads(tmp_path):
    store = awkward_store(tmp_path / "s", "float16", seed=2)
    y = Split.from_store(store).labels
    held = np.arange(y.size) % 5 == 0
    one, two = (
        vote_counts(store, store.sites, y, held, ALPHAS, (1, -1), workers=w) for w in (1, 2)
    )
    for a, b in zip(one, two, strict=True):
        for site in a.counts:
            np.testing.assert_array_equal(a.counts[site], b.counts[site])


def test_counts_for_another_alpha_are_refused(tmp_path):
    store = awkward_store(tmp_path / "s", "float16")
    split = Split.from_store(store)
    counts = SuperNeuronClassifier().count_votes(split, split.labels, [0.5])[0]
    with pytest.raises(ConfigError, match=r"alpha=0\.5"):
        SuperNeuronClassifier(alpha=0.0).fit(split, split.labels, counts)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_store_columns_equal_the_slab_read_whole(tmp_path, dtype):
    store = awkward_store(tmp_path / "s", dtype)
    slab = store.layer("mlp", 2)
    indices = [7, 2, 2, 23]
    mask = np.arange(N) % 3 == 0
    np.testing.assert_array_equal(store.columns("mlp", 2, indices), slab[:, indices])
    np.testing.assert_array_equal(store.columns("mlp", 2, indices, mask), slab[mask][:, indices])
    rows = np.array([5, 1, 299])
    np.testing.assert_array_equal(store.columns("mlp", 2, indices, rows), slab[rows][:, indices])


@pytest.mark.parametrize("aggregate", ["mean", "majority"])
@pytest.mark.parametrize("alpha", [0.0, -60000.0])  # the second: every neuron ties at 0.5
def test_the_heldout_sweep_equals_aggregating_every_candidates_votes(tmp_path, aggregate, alpha):
    from superneurons.classifiers.super_neurons import _offsets, _rank, _votes
    from superneurons.classifiers.super_neurons import aggregate as combine
    from superneurons.metrics import binary_metrics

    store = awkward_store(tmp_path / "s", "float16", seed=3)
    split = Split.from_store(store)
    fitted = SuperNeuronClassifier(alpha=alpha, aggregate=aggregate, polarity="both")
    fitted.fit(split, split.labels)
    held = fitted.heldout_rows(split.labels)
    best = max(float(np.nanmax(a)) for a in fitted.fit_scores_.values())
    candidates = _rank(fitted.fit_scores_, fitted.polarities, best - fitted.t_range)
    votes = _votes(store, candidates, alpha, rows=held)
    scores = np.array([c.score for c in candidates])
    for delta in _offsets(fitted.t_step, fitted.t_range):
        k = int(np.count_nonzero(scores >= best - delta - 1e-12))
        expected = binary_metrics(combine(votes[:, :k], aggregate), split.labels[held])
        assert fitted.heldout_scores_[delta] == expected["accuracy"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_rules_read_on_the_bits_equal_the_float_rule_on_every_pattern(dtype):
    """Every 16-bit pattern (±0, subnormals, ±inf, NaNs) at thresholds between, on and
    beyond representable values votes as its float32 value does."""
    from superneurons.classifiers.counting import Slab

    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.int16).reshape(256, 256)
    slab = Slab(bits, dtype)
    values = slab.float32()
    if dtype == "float16":
        np.testing.assert_array_equal(values, bits.view(np.float16).astype(np.float32))
    else:
        expected = torch.from_numpy(bits.copy()).view(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(values, expected)
    tiny = float(np.finfo(np.float16).smallest_subnormal)
    for alpha in (0.0, -0.0, 0.1, -0.1, 2.5, -3.0, tiny, -tiny, 1e-40, 65504.0, 1e30, np.inf,
                  -np.inf):  # fmt: skip
        for polarity in (1, -1):
            expected = values > alpha if polarity > 0 else values < alpha
            np.testing.assert_array_equal(slab.votes(alpha, polarity), expected, f"{alpha}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_counts_on_the_bits_equal_counts_on_the_widened_floats(tmp_path, dtype):
    from superneurons.classifiers import ArrayActivations

    store = awkward_store(tmp_path / "s", dtype, seed=4)
    y = Split.from_store(store).labels
    widened = ArrayActivations(
        {
            site: np.stack([store.layer(site, k) for k in range(LAYERS)], axis=1)
            for site in store.sites
        }
    )
    held = np.arange(y.size) % 4 == 0
    alphas = (*ALPHAS, -np.inf, 65504.0)
    on_bits, on_floats = (
        vote_counts(source, store.sites, y, held, alphas, (1, -1)) for source in (store, widened)
    )
    for a, b in zip(on_bits, on_floats, strict=True):
        for site in a.counts:
            np.testing.assert_array_equal(a.counts[site], b.counts[site])


def test_fitting_many_together_equals_fitting_each_alone(tmp_path):
    """fit_each shares the held-out reads of many refits (α, sites, selections, aggregates)."""
    from superneurons.classifiers.super_neurons import fit_each

    store = awkward_store(tmp_path / "s", "bfloat16", seed=5)
    split = Split.from_store(store)
    estimators = [
        SuperNeuronClassifier(alpha=alpha, sites=sites, aggregate=aggregate, polarity="both")
        for alpha in ALPHAS
        for sites in (None, ["mlp"])
        for aggregate in ("mean", "majority")
    ]
    estimators += [
        SuperNeuronClassifier(selection="top_k", top_k=4),
        SuperNeuronClassifier(random_state=7, max_layer=1),  # another held-out part
        SuperNeuronClassifier(alpha=-60000.0),  # every neuron ties: all are candidates
    ]
    together = fit_each([clone(e) for e in estimators], split, split.labels)
    for estimator, fitted in zip(estimators, together, strict=True):
        assert_same_fit(fitted, clone(estimator).fit(split, split.labels))
    counts = estimators[0].count_votes(split, split.labels, ALPHAS)
    refits = [clone(estimators[0]).set_params(alpha=alpha) for alpha in ALPHAS]
    expected = together[: 4 * len(ALPHAS) : 4]  # None sites, mean, at each alpha
    for fitted, alone in zip(fit_each(refits, split, split.labels, counts), expected, strict=True):
        assert_same_fit(fitted, alone)
