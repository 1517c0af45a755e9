"""The baselines on planted sources: SAVs, the linear probe and the sparse probe find the
signal, equal a direct computation, bound their layers and save without loss."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from superneurons.classifiers import ArrayActivations, SuperNeuronClassifier
from superneurons.classifiers.artifact import load_classifier, save_classifier
from superneurons.classifiers.probes import LinearProbeClassifier, SparseProbeClassifier
from superneurons.classifiers.savs import SAVClassifier, head_votes
from superneurons.errors import ClassifierError

N, LAYERS, HEADS, HEAD_DIM, MLP = 240, 4, 4, 8, 40


def planted(seed: int = 0) -> tuple[dict, np.ndarray]:
    """Noise everywhere but head 1 of layer 2 (attn) and neuron 3 of layer 1 (mlp)."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 2 == 0
    sign = np.where(y, 1.0, -1.0)
    attn = rng.normal(size=(N, LAYERS, HEADS * HEAD_DIM)).astype(np.float32)
    attn[:, 2, HEAD_DIM : 2 * HEAD_DIM] += 0.9 * sign[:, None]
    mlp = rng.normal(size=(N, LAYERS, MLP)).astype(np.float32)
    mlp[:, 1, 3] += 1.5 * sign
    return {"attn": attn, "mlp": mlp}, y


class Recording(ArrayActivations):
    """Arrays that remember every (site, layer) read."""

    def __init__(self, arrays):
        super().__init__(arrays)
        self.read: set[tuple[str, int]] = set()

    def layer(self, site, layer):
        self.read.add((site, layer))
        return super().layer(site, layer)


def test_savs_pick_the_planted_head_and_ignore_the_noise_heads():
    arrays, y = planted()
    savs = SAVClassifier(n_heads=HEADS, k=1).fit(arrays, y)
    assert savs.heads_ == [(2, 1)]
    assert savs.reads_ == {"attn": [2]}
    assert np.mean(savs.predict(arrays) == y) > 0.95
    noise = np.delete(savs.head_scores_.ravel(), 2 * HEADS + 1)
    assert noise.max() < 0.7 < savs.head_scores_[2, 1]


def test_sav_head_accuracies_equal_a_direct_numpy_computation():
    arrays, y = planted(1)
    savs = SAVClassifier(n_heads=HEADS, k=5).fit(arrays, y)
    for layer in range(LAYERS):
        for head in range(HEADS):
            x = arrays["attn"][:, layer, head * HEAD_DIM : (head + 1) * HEAD_DIM].astype(np.float64)
            means = [x[~y].mean(axis=0), x[y].mean(axis=0)]
            cosine = [x @ m / (np.linalg.norm(x, axis=1) * np.linalg.norm(m)) for m in means]
            expected = np.mean((cosine[1] > cosine[0]) == y)
            assert savs.head_scores_[layer, head] == pytest.approx(expected, abs=1e-12)
    # The top 5 by score, voting by majority (a tie to the best head).
    order = sorted(np.ndindex(LAYERS, HEADS), key=lambda lh: (-savs.head_scores_[lh], lh))
    assert savs.heads_ == order[:5]
    votes = savs.votes(arrays)
    assert votes.shape == (N, 5)
    np.testing.assert_array_equal(savs.predict(arrays), votes.sum(axis=1) >= 3)


def test_head_votes_tie_to_no():
    heads = np.ones((1, 1, 2), np.float32)
    means = np.ones((2, 1, 2), np.float32)
    assert head_votes(heads, means).tolist() == [[False]]


@pytest.mark.parametrize("width", [MLP, 600], ids=["fewer-features", "more-features-than-rows"])
def test_the_linear_probe_equals_scikit_learn_fitted_directly_on_the_slab(width):
    rng = np.random.default_rng(2)
    y = np.arange(N) % 2 == 0
    x = rng.normal(size=(N, 2, width)).astype(np.float32)
    x[:, 1, :5] += 0.8 * np.where(y, 1.0, -1.0)[:, None]
    probe = LinearProbeClassifier(tol=1e-8).fit({"mlp": x}, y)
    assert (probe.site_, probe.layer_) == ("mlp", 1)
    direct = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C_, tol=1e-8))
    direct.fit(x[:, 1], y)
    test = rng.normal(size=(50, 2, width)).astype(np.float32)
    ours = probe.decision_function({"mlp": test})
    np.testing.assert_allclose(ours, direct.decision_function(test[:, 1]), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(probe.predict({"mlp": test}), direct.predict(test[:, 1]))
    assert set(probe.layer_scores_) == {"mlp"} and probe.layer_scores_["mlp"][1] > 0.8


def test_the_sparse_probe_finds_the_planted_neuron_with_few_neurons():
    arrays, y = planted(3)
    sparse = SparseProbeClassifier().fit(arrays, y)
    assert sparse.neurons_[0] == ("mlp", 1, 3)
    assert sparse.k_ == min(sparse.k_scores_, key=lambda k: (-sparse.k_scores_[k], k))
    assert np.mean(sparse.predict(arrays) == y) > 0.9


def estimators():
    return [
        SuperNeuronClassifier(),
        SAVClassifier(n_heads=HEADS, k=3),
        LinearProbeClassifier(),
        SparseProbeClassifier(ks=(1, 2, 4)),
    ]


@pytest.mark.parametrize("estimator", estimators(), ids=lambda e: type(e).__name__)
def test_max_layer_bounds_every_layer_read(estimator):
    arrays, y = planted(4)
    source = Recording(arrays)
    estimator.set_params(max_layer=1).fit(source, y)
    assert max(layer for _, layer in source.read) <= 1
    assert max(max(layers) for layers in estimator.reads_.values()) <= 1


@pytest.mark.parametrize("estimator", estimators(), ids=lambda e: type(e).__name__)
def test_refit_up_to_a_layer_equals_fitting_with_that_max_layer(estimator):
    arrays, y = planted(5)
    test, _ = planted(6)
    full = estimator.fit(arrays, y)
    for k in range(LAYERS):
        refitted = full.refit_up_to(arrays, y, k)
        fresh = type(estimator)(**{**estimator.get_params(), "max_layer": k}).fit(arrays, y)
        assert refitted.reads_ == fresh.reads_, k
        np.testing.assert_array_equal(refitted.predict(test), fresh.predict(test))
        np.testing.assert_allclose(
            refitted.decision_function(test), fresh.decision_function(test), rtol=1e-9
        )


@pytest.mark.parametrize("estimator", estimators()[1:], ids=lambda e: type(e).__name__)
def test_a_saved_baseline_loads_and_predicts_the_same(estimator, tmp_path):
    arrays, y = planted(7)
    estimator.fit(arrays, y)
    save_classifier(tmp_path / "c", estimator, {"model": "m"})
    loaded, document = load_classifier(tmp_path / "c")
    assert type(loaded) is type(estimator) and document["provenance"] == {"model": "m"}
    assert loaded.reads_ == estimator.reads_
    np.testing.assert_array_equal(
        loaded.decision_function(arrays), estimator.decision_function(arrays)
    )


def test_a_tampered_baseline_is_refused(tmp_path):
    import json

    arrays, y = planted(8)
    save_classifier(tmp_path / "c", SparseProbeClassifier().fit(arrays, y), {})
    file = tmp_path / "c" / "classifier.json"
    document = json.loads(file.read_text())
    document["classifier"]["state"]["neurons"][0][2] = 10_000
    file.write_text(json.dumps(document))
    with pytest.raises(ClassifierError, match="invalid SparseProbeClassifier"):
        load_classifier(tmp_path / "c")


def test_rows_are_split_in_place_as_fancy_indexing_would():
    from superneurons.classifiers.probes import _split_rows

    rng = np.random.default_rng(9)
    x = rng.normal(size=(1000, 7)).astype(np.float32)
    held = rng.random(1000) < 0.2
    expected_fit, expected_held = x[~held].copy(), x[held].copy()
    fit_rows, held_rows = _split_rows(x, held)
    np.testing.assert_array_equal(fit_rows, expected_fit)
    np.testing.assert_array_equal(held_rows, expected_held)
    assert np.shares_memory(fit_rows, x)  # moved within x, not copied


def test_repeated_rows_fall_back_to_the_eigendecomposition_and_still_match_scikit_learn():
    rng = np.random.default_rng(10)
    y = np.arange(60) % 2 == 0
    base = rng.normal(size=(30, 1, 200)).astype(np.float32)
    x = np.concatenate([base, base])  # every row twice: a singular Gram matrix
    x[:, 0, :3] += np.where(y, 1.0, -1.0)[:, None]
    probe = LinearProbeClassifier(tol=1e-8).fit({"mlp": x}, y)
    direct = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C_, tol=1e-8))
    direct.fit(x[:, 0], y)
    test = rng.normal(size=(20, 1, 200)).astype(np.float32)
    np.testing.assert_allclose(
        probe.decision_function({"mlp": test}), direct.decision_function(test[:, 0]), atol=2e-3
    )


@pytest.mark.parametrize("width", [MLP, 600], ids=["fewer-features", "more-features-than-rows"])
def test_every_layer_model_of_the_linear_probe_scores_its_held_out_part_and_is_saved(
    width, tmp_path
):
    from superneurons.classifiers.base import stratified_heldout

    rng = np.random.default_rng(4)
    y = np.arange(N) % 2 == 0
    x = rng.normal(size=(N, 3, width)).astype(np.float32)
    x[:, 2, :5] += 0.5 * np.where(y, 1.0, -1.0)[:, None]
    probe = LinearProbeClassifier(tol=1e-8).fit({"mlp": x}, y)
    held = stratified_heldout(y, probe.heldout_fraction, probe.random_state)
    save_classifier(tmp_path / "c", probe, {"model": "m"})
    loaded, _ = load_classifier(tmp_path / "c")
    for layer in range(3):
        decision = probe.layer_decision({"mlp": x}, "mlp", layer)
        # The layer's model is the one its held-out score was measured with.
        held_accuracy = np.mean((decision[held] > 0) == y[held])
        assert held_accuracy == pytest.approx(probe.layer_scores_["mlp"][layer], abs=1e-9)
        saved = loaded.layer_decision({"mlp": x}, "mlp", layer)
        np.testing.assert_allclose(saved, decision, rtol=1e-4, atol=1e-3)  # stored as float32
    restricted = probe.refit_up_to({"mlp": x}, y, 1)
    with pytest.raises(ValueError, match="layer 2 was not fitted"):
        restricted.layer_decision({"mlp": x}, "mlp", 2)
