import json
from collections import Counter

import numpy as np
import pytest

from superneurons.classifiers import (
    ArrayActivations,
    NotFittedError,
    SelectedNeuron,
    SuperNeuronClassifier,
    as_activation_source,
)
from superneurons.metrics import neuron_scores

N = 160


def make_data(seed=0, n=N, planted=True):
    """Two sites of noise; with ``planted``, resid layer 1 index 5 is label ± small noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2 == 0)
    arrays = {
        "resid": rng.normal(size=(n, 3, 8)).astype(np.float32),
        "mlp": rng.normal(size=(n, 3, 12)).astype(np.float32),
    }
    if planted:
        arrays["resid"][:, 1, 5] = np.where(labels, 1.0, -1.0) + 0.3 * rng.normal(size=n)
    return arrays, labels


class CountingSource:
    """An activation source without ``n_samples`` that records every slab it serves."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.sites = {site: array.shape[1:] for site, array in arrays.items()}
        self.reads = []

    def layer(self, site, layer):
        self.reads.append((site, layer))
        return self.arrays[site][:, layer, :]


def all_scores(classifier):
    return np.concatenate([array.ravel() for array in classifier.scores_.values()])


def test_scores_are_neuron_scores_per_layer():
    arrays, labels = make_data()
    clf = SuperNeuronClassifier(selection="top_k", top_k=3, metric="f1").fit(arrays, labels)
    # One shape whatever the polarity: (polarities, layers, width).
    assert clf.scores_["resid"].shape == (1, 3, 8) and clf.scores_["mlp"].shape == (1, 3, 12)
    assert clf.polarities_ == (1,) and clf.classes_.tolist() == [False, True]
    for site, array in arrays.items():
        for layer in range(3):
            expected = neuron_scores(array[:, layer, :], labels, metric="f1")
            np.testing.assert_allclose(clf.scores_[site][0, layer], expected)
    assert clf.score(arrays, labels) == np.mean(clf.predict(arrays) == labels)
    assert clf.n_features_in_ == 3 * 8 + 3 * 12


@pytest.mark.parametrize("selection", ["heldout", "fixed", "top_k"])
def test_planted_neuron_is_selected_first(selection):
    arrays, labels = make_data()
    clf = SuperNeuronClassifier(selection=selection, threshold=0.9, top_k=1).fit(arrays, labels)
    best = clf.selected_[0]
    assert (best.site, best.layer, best.index, best.polarity) == ("resid", 1, 5, 1)
    assert best.score > 0.95
    assert best.score == pytest.approx(clf.scores_["resid"][0, 1, 5])
    assert (clf.predict(arrays) == labels).mean() > 0.95
    assert clf.exit_layer_ == max(neuron.layer for neuron in clf.selected_)


def test_inverted_neuron_needs_polarity_both():
    arrays, labels = make_data(planted=False)
    arrays["mlp"][:, 2, 3] = np.where(labels, -1.0, 1.0) + 0.3 * np.random.default_rng(1).normal(
        size=N
    )
    positive = SuperNeuronClassifier(selection="top_k", top_k=1).fit(arrays, labels)
    assert positive.selected_[0].score < 0.8
    assert positive.scores_["mlp"][0, 2, 3] < 0.05

    both = SuperNeuronClassifier(selection="top_k", top_k=1, polarity="both").fit(arrays, labels)
    best = both.selected_[0]
    assert (best.site, best.layer, best.index, best.polarity) == ("mlp", 2, 3, -1)
    assert both.scores_["mlp"].shape == (2, 3, 12)
    assert both.polarities_ == (1, -1)
    np.testing.assert_allclose(both.scores_["mlp"][0], positive.scores_["mlp"][0])
    # continuous activations never equal alpha, so the inverted rule is the complement
    np.testing.assert_allclose(both.scores_["mlp"][1], 1.0 - positive.scores_["mlp"][0])
    assert (both.predict(arrays) == labels).mean() > 0.95
    assert both.votes(arrays)[:, 0].tolist() == (arrays["mlp"][:, 2, 3] < 0).tolist()


EXPERTS = [
    ("resid", 0, 1),
    ("resid", 2, 0),
    ("mlp", 1, 4),
    ("mlp", 2, 7),
    ("resid", 1, 3),
    ("mlp", 0, 0),
    ("mlp", 2, 11),
]


def noisy_experts(seed=0):
    """Seven neurons, each wrong on its own random 20 % of samples: their vote beats any one."""
    arrays, labels = make_data(seed, planted=False)
    rng = np.random.default_rng(seed + 1)
    sign = np.where(labels, 1.0, -1.0)
    for site, layer, index in EXPERTS:
        wrong = rng.permutation(N) < N // 5
        magnitude = 0.5 + rng.random(N)
        arrays[site][:, layer, index] = np.where(wrong, -sign, sign) * magnitude
    return arrays, labels


def test_heldout_threshold_lies_within_the_sweep():
    arrays, labels = noisy_experts()
    clf = SuperNeuronClassifier(t_step=0.02, t_range=0.1).fit(arrays, labels)
    best = all_scores(clf).max()
    assert best == pytest.approx(0.8)  # every expert is right on exactly 80 %
    assert best - 0.1 - 1e-9 <= clf.threshold_ <= best
    assert sorted(clf.heldout_scores_) == [0.0, 0.02, 0.04, 0.06, 0.08, 0.1]
    # on the held-out part the experts' vote beats the best expert on the fit part alone
    chosen = max(clf.heldout_scores_.values())
    delta = min(d for d, value in clf.heldout_scores_.items() if value == chosen)
    assert delta > 0 and chosen > clf.heldout_scores_[0.0]
    assert clf.threshold_ == pytest.approx(best - delta)
    # the SNs are exactly the neurons reaching the threshold, best first
    assert len(clf.selected_) == np.count_nonzero(all_scores(clf) >= clf.threshold_ - 1e-12)
    assert {(n.site, n.layer, n.index) for n in clf.selected_} == set(EXPERTS)
    fresh, fresh_labels = noisy_experts(seed=3)
    assert (clf.predict(fresh) == fresh_labels).mean() > 0.9
    again = SuperNeuronClassifier(t_step=0.02, t_range=0.1).fit(arrays, labels)
    assert again.selected_ == clf.selected_ and again.heldout_scores_ == clf.heldout_scores_


def test_heldout_candidates_are_capped_by_max_neurons():
    arrays, labels = noisy_experts()
    clf = SuperNeuronClassifier(t_range=0.1, max_neurons=3).fit(arrays, labels)
    assert len(clf.selected_) == 3
    assert {(n.site, n.layer, n.index) for n in clf.selected_} <= set(EXPERTS)


def test_fixed_top_k_and_max_neurons():
    arrays, labels = noisy_experts()
    fixed = SuperNeuronClassifier(selection="fixed", threshold=0.7).fit(arrays, labels)
    assert fixed.threshold_ == 0.7
    assert len(fixed.selected_) == np.count_nonzero(all_scores(fixed) >= 0.7) > 1
    assert all(neuron.score >= 0.7 for neuron in fixed.selected_)

    top = SuperNeuronClassifier(selection="top_k", top_k=4).fit(arrays, labels)
    assert top.threshold_ is None
    assert [n.score for n in top.selected_] == pytest.approx(sorted(all_scores(top))[::-1][:4])

    capped = SuperNeuronClassifier(selection="fixed", threshold=0.7, max_neurons=2)
    assert capped.fit(arrays, labels).selected_ == fixed.selected_[:2]


def test_predict_reads_only_selected_slabs_once_and_accepts_memmaps(tmp_path):
    arrays, labels = noisy_experts()
    clf = SuperNeuronClassifier(selection="top_k", top_k=4).fit(arrays, labels)
    expected = clf.predict(ArrayActivations(arrays))

    source = CountingSource(arrays)
    np.testing.assert_array_equal(clf.predict(source), expected)
    needed = {(neuron.site, neuron.layer) for neuron in clf.selected_}
    assert Counter(source.reads) == dict.fromkeys(needed, 1)

    mapped = {}
    for site, array in arrays.items():
        path = tmp_path / f"{site}.npy"
        np.save(path, array.astype(np.float16))
        mapped[site] = np.load(path, mmap_mode="r")
    assert isinstance(mapped["resid"], np.memmap)
    np.testing.assert_array_equal(clf.predict(mapped), expected)
    # fitting on the memory-mapped float16 copy finds the same SNs
    refit = SuperNeuronClassifier(selection="top_k", top_k=4).fit(mapped, labels)
    assert [(n.site, n.layer, n.index) for n in refit.selected_] == [
        (n.site, n.layer, n.index) for n in clf.selected_
    ]


def test_fit_on_a_generic_source_and_predict_on_truncated_layers():
    arrays, labels = make_data()
    clf = SuperNeuronClassifier(sites=["resid"], selection="top_k", top_k=1)
    clf.fit(CountingSource(arrays), labels)
    assert set(clf.scores_) == {"resid"}
    assert clf.exit_layer_ == 1
    # an early-exit run only has the layers up to the exit layer
    truncated = {"resid": arrays["resid"][:, : clf.exit_layer_ + 1]}
    np.testing.assert_array_equal(clf.predict(truncated), clf.predict(arrays))
    with pytest.raises(ValueError, match="layer 1"):
        clf.predict({"resid": arrays["resid"][:, :1]})
    with pytest.raises(ValueError, match="lack site"):
        clf.predict({"mlp": arrays["mlp"]})


def test_majority_ties_go_to_the_best_neuron_and_mean_says_yes():
    arrays, labels = make_data()
    rng = np.random.default_rng(5)
    sign = np.where(labels, 1.0, -1.0)
    flipped = rng.random(N) < 0.2
    arrays["resid"][:, 0, 0] = np.where(flipped, -sign, sign)  # right on ~80 %
    kwargs = {"selection": "top_k", "top_k": 2}
    majority = SuperNeuronClassifier(aggregate="majority", **kwargs).fit(arrays, labels)
    mean = SuperNeuronClassifier(aggregate="mean", **kwargs).fit(arrays, labels)
    votes = majority.votes(arrays)
    assert votes.shape == (N, 2)
    disagree = votes[:, 0] != votes[:, 1]
    assert disagree.sum() > 10
    np.testing.assert_array_equal(majority.predict(arrays), votes[:, 0])
    np.testing.assert_array_equal(mean.predict(arrays), votes.any(axis=1))
    np.testing.assert_allclose(mean.vote_score(arrays), votes.mean(axis=1))
    np.testing.assert_allclose(mean.decision_function(arrays), votes.mean(axis=1))


def test_label_encodings_agree():
    arrays, labels = make_data()
    kwargs = {"selection": "top_k", "top_k": 3}
    as_bool = SuperNeuronClassifier(**kwargs).fit(arrays, labels).selected_
    as_int = SuperNeuronClassifier(**kwargs).fit(arrays, labels.astype(int)).selected_
    text = np.where(labels, "Yes", "no")
    as_text = SuperNeuronClassifier(**kwargs).fit(arrays, text).selected_
    assert as_bool == as_int == as_text
    flipped = SuperNeuronClassifier(pos_label="no", **kwargs).fit(arrays, text)
    assert flipped.scores_["resid"][0, 1, 5] < 0.05


def test_bad_inputs_raise_clear_errors():
    arrays, labels = make_data()
    with pytest.raises(ValueError, match="empty"):
        SuperNeuronClassifier().fit({"resid": np.zeros((0, 2, 3))}, [])
    with pytest.raises(ValueError, match="both classes"):
        SuperNeuronClassifier().fit(arrays, np.ones(N, dtype=bool))
    with pytest.raises(ValueError, match="maybe"):
        SuperNeuronClassifier().fit(arrays, ["yes", "maybe"] * (N // 2))
    with pytest.raises(ValueError, match="0 or 1"):
        SuperNeuronClassifier().fit(arrays, np.arange(N) % 3)
    with pytest.raises(ValueError, match=f"{N} samples but labels has {N - 1}"):
        SuperNeuronClassifier().fit(arrays, labels[:-1])
    with pytest.raises(ValueError, match="threshold"):
        SuperNeuronClassifier(selection="fixed").fit(arrays, labels)
    with pytest.raises(ValueError, match="no neuron scores"):
        SuperNeuronClassifier(selection="fixed", threshold=1.01).fit(arrays, labels)
    with pytest.raises(ValueError, match="metric"):
        SuperNeuronClassifier(metric="auc").fit(arrays, labels)
    with pytest.raises(ValueError, match="attn"):
        SuperNeuronClassifier(sites=["attn"]).fit(arrays, labels)
    with pytest.raises(ValueError, match="2 samples per class"):
        SuperNeuronClassifier().fit({"resid": arrays["resid"][:3]}, [True, False, False])
    with pytest.raises(TypeError):
        as_activation_source(np.zeros((2, 2, 2)))
    with pytest.raises(NotFittedError):
        SuperNeuronClassifier().predict(arrays)


def test_to_dict_round_trip_predicts_identically():
    arrays, labels = noisy_experts()
    clf = SuperNeuronClassifier(aggregate="majority", polarity="both", sites=("resid", "mlp"))
    clf.fit(arrays, labels)
    data = json.loads(json.dumps(clf.to_dict()))
    assert "scores" not in data
    restored = SuperNeuronClassifier.from_dict(data)
    assert restored.get_params()["polarity"] == "both"
    assert restored.selected_ == clf.selected_
    assert all(isinstance(neuron, SelectedNeuron) for neuron in restored.selected_)
    assert restored.threshold_ == clf.threshold_
    assert restored.heldout_scores_ == clf.heldout_scores_
    assert restored.exit_layer_ == clf.exit_layer_
    np.testing.assert_array_equal(restored.predict(arrays), clf.predict(arrays))
    fresh, _ = noisy_experts(seed=9)
    np.testing.assert_array_equal(restored.votes(fresh), clf.votes(fresh))
