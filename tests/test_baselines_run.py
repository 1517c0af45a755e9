"""The baselines in a run: fitted on the probing set only, served with early exit, bounded by
--max-layer, and pooled over seeds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import binomtest

from command import superneurons
from superneurons.classifiers import Split
from superneurons.classifiers.artifact import load_classifier
from superneurons.classifiers.probes import LinearProbeClassifier
from superneurons.pipeline import RunConfig, run, run_seeds
from superneurons.predictor import SuperNeuronPredictor
from superneurons.store import ActivationStore
from test_predictor import val_inputs

QUIET = {"log": lambda *_: None}


def tiny_config(checkpoint, **overrides) -> RunConfig:
    settings = dict(model=str(checkpoint), n_probe=24, n_val=16, batch_size=8, max_new_tokens=3)
    return RunConfig(**{**settings, **overrides})


def test_nothing_fitted_reads_the_validation_set(tiny_run, tiny_llava_checkpoint, tmp_path):
    """Poison the validation store's activations: every fitted estimator stays the same."""
    reference, results = tiny_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    val = out / "activations" / "val"
    for file in val.glob("*.npy"):
        values = np.load(file, mmap_mode="r+")
        values[:] = np.random.default_rng(0).normal(size=values.shape).astype(values.dtype)
        values.flush()
    poisoned = run(tiny_config(tiny_llava_checkpoint), out, **QUIET)
    for folder in ("classifier", "baselines/savs", "baselines/linear_probe",
                   "baselines/sparse_probe"):  # fmt: skip
        before = json.loads((reference / folder / "classifier.json").read_text())
        after = json.loads((out / folder / "classifier.json").read_text())
        assert before == after, folder
    for name, entry in results["estimators"].items():
        assert poisoned["estimators"][name]["exit_layer"] == entry["exit_layer"], name
    k_and_layer = [(r["k"], r["estimator"], r["exit_layer"]) for r in results["exit_tradeoff"]]
    assert [(r["k"], r["estimator"], r["exit_layer"]) for r in poisoned["exit_tradeoff"]] == (
        k_and_layer
    )


def test_early_exit_with_a_linear_probe_predicts_as_the_probe_on_the_full_store(tiny_run):
    out, _ = tiny_run
    probe_store = ActivationStore.open(out / "activations" / "probe")
    probe = LinearProbeClassifier(max_layer=0).fit(
        Split.from_store(probe_store), probe_store.labels
    )
    served = SuperNeuronPredictor.from_pretrained(out / "classifier")
    predictor = SuperNeuronPredictor(probe, served.loaded, served.prompter)
    assert predictor.exit_layer == 0
    images, questions, store = val_inputs(out)
    predictions = predictor.predict(images, questions)
    assert {p.exit_layer for p in predictions} == {0}
    decision = probe.decision_function(store)
    clear = np.abs(decision) > 0.05  # float16 storage moves a decision by far less than this
    got = np.array([p.label == "yes" for p in predictions])
    assert (got == (decision > 0))[clear].all() and clear.sum() >= store.n // 2
    np.testing.assert_allclose([p.score for p in predictions], decision, atol=0.05)


def test_predict_serves_a_saved_baseline_from_the_command_line(tiny_run):
    out, _ = tiny_run
    images, questions, _ = val_inputs(out)
    rows = [{"image": f"{k}.png", "question": q} for k, q in enumerate(questions[:4])]
    for k, image in enumerate(images[:4]):
        image.save(out.parent / f"{k}.png")
    batch = out.parent / "batch.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = superneurons("predict", "--classifier", out / "baselines" / "sparse_probe",
                        "--batch", batch)  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    sparse, _ = load_classifier(out / "baselines" / "sparse_probe")
    deepest = max(max(layers) for layers in sparse.reads_.values())
    assert [a["exit_layer"] for a in answers] == [deepest] * 4
    assert all(a["label"] in ("yes", "no") for a in answers)


def test_max_layer_bounds_every_estimator_of_a_run(tiny_llava_checkpoint, tmp_path):
    done = superneurons(
        "run", "--out", tmp_path / "run", "--model", tiny_llava_checkpoint, "--n-probe", "24",
        "--n-val", "16", "--batch-size", "8", "--max-new-tokens", "3", "--max-layer", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for name in ("super_neurons", "savs", "linear_probe", "sparse_probe"):
        assert results["estimators"][name]["exit_layer"] == 0, name
    # k = 0 for each estimator, and the model's own row at its last layer (the tiny LLaVA: 3)
    assert {row["k"] for row in results["exit_tradeoff"]} == {0, 2}
    assert {s["layer"] for s in results["selected"]} == {0}


def test_seeds_pool_every_question_of_every_seed(tiny_llava_checkpoint, tmp_path):
    config = tiny_config(tiny_llava_checkpoint, baselines=["sparse_probe"], exit_layers="none")
    summary = run_seeds(config, [0, 1], tmp_path / "seeds", **QUIET)
    runs = [json.loads((tmp_path / "seeds" / f"seed-{s}" / "results.json").read_text())
            for s in (0, 1)]  # fmt: skip
    assert [r["seed"] for r in runs] == [0, 1]
    assert json.loads((tmp_path / "seeds" / "results.json").read_text()) == summary
    for name, entry in summary["estimators"].items():
        values = [r["estimators"][name]["accuracy"] for r in runs]
        assert entry["accuracy"]["values"] == values
        assert entry["accuracy"]["mean"] == pytest.approx(np.mean(values), abs=1e-4)
        assert entry["accuracy"]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-4)
        if name == "model":
            continue
        b = sum(r["estimators"][name]["vs_model"]["b"] for r in runs)
        c = sum(r["estimators"][name]["vs_model"]["c"] for r in runs)
        pooled = entry["pooled_vs_model"]
        assert (pooled["b"], pooled["c"]) == (b, c)
        expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
        assert pooled["p_value"] == pytest.approx(expected)
    assert summary["n"] == 32


def test_evaluate_scores_a_saved_baseline_as_the_run_did(tiny_run, tmp_path):
    out, results = tiny_run
    done = superneurons(
        "evaluate", "--classifier", out / "baselines" / "linear_probe",
        "--store", out / "activations" / "val", "--out", tmp_path / "r.json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    evaluated = json.loads((tmp_path / "r.json").read_text())
    assert list(evaluated["estimators"]) == ["model", "linear_probe"]
    for name in ("model", "linear_probe"):
        ours, theirs = evaluated["estimators"][name], results["estimators"][name]
        assert ours["accuracy"] == theirs["accuracy"] and ours["per_family"] == theirs["per_family"]
    assert "selected" not in evaluated  # super neurons' settings belong to their own classifier
