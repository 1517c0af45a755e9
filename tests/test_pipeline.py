"""The whole method end to end on a tiny random-weight LLaVA saved as a real checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from command import superneurons
from superneurons.classifiers.artifact import load_classifier
from superneurons.pipeline import RunConfig, run
from superneurons.store import ActivationStore


@pytest.fixture
def checkpoint(tiny_llava_checkpoint) -> Path:
    return tiny_llava_checkpoint


def small_config(checkpoint: Path, **overrides) -> RunConfig:
    settings = dict(model=str(checkpoint), n_probe=24, n_val=16, batch_size=8, max_new_tokens=3)
    return RunConfig(**{**settings, **overrides})


def test_run_writes_results_with_the_documented_keys(checkpoint, tiny_run):
    tmp_path, results = tiny_run
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for key in (
        "model",
        "dataset",
        "n_probe",
        "n_val",
        "alpha",
        "metric",
        "threshold",
        "selected",
        "estimators",
        "agreement_rate",
        "per_family",
        "sn_layers",
        "exit_tradeoff",
    ):
        assert key in results, key
    assert results["format"] == "superneurons-results/2"
    assert results["n_probe"] == 24 and results["n_val"] == 16
    assert results["selected"], "a fitted classifier selects at least one neuron"
    names = ["super_neurons", "model", "savs", "linear_probe", "sparse_probe", "question_only"]
    assert list(results["estimators"]) == names
    for name, entry in results["estimators"].items():
        assert set(entry) >= {"accuracy", "precision", "recall", "f1", "ci95", "exit_layer"}
        low, high = entry["ci95"]["accuracy"]
        assert low <= entry["accuracy"] <= high
        assert ("vs_model" in entry) == (name != "model")
        assert set(entry["per_family"]) == set(results["per_family"])
    layers = {name: entry["exit_layer"] for name, entry in results["estimators"].items()}
    assert layers["model"] == 2 and layers["question_only"] is None  # the tiny LLaVA: 3 layers
    probe = ActivationStore.open(tmp_path / "activations" / "probe")
    labels = [r["label"] for r in probe.records]
    assert labels.count("yes") == labels.count("no") == 12
    # The saved classifier predicts what the results say, from the validation store.
    classifier, document = load_classifier(tmp_path / "classifier")
    assert document["provenance"]["model"] == str(checkpoint)
    val = ActivationStore.open(tmp_path / "activations" / "val")
    truth = np.array([r["label"] == "yes" for r in val.records])
    accuracy = float((classifier.predict(val) == truth).mean())
    assert accuracy == pytest.approx(results["estimators"]["super_neurons"]["accuracy"], abs=1e-4)
    # Every baseline is saved beside it and predicts what the results say, too.
    for name in ("savs", "linear_probe", "sparse_probe"):
        baseline, _ = load_classifier(tmp_path / "baselines" / name)
        accuracy = float((baseline.predict(val) == truth).mean())
        assert accuracy == pytest.approx(results["estimators"][name]["accuracy"], abs=1e-4), name
    # predictions.jsonl holds every estimator's answer per validation question.
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").open()]
    assert [line["id"] for line in lines] == val.ids
    for name in names:
        right = np.mean([line[name] == line["label"] for line in lines])
        assert right == pytest.approx(results["estimators"][name]["accuracy"], abs=1e-4), name


def test_results_print_as_a_table(tiny_run):
    from rich.console import Console

    from superneurons.report import print_results

    _, results = tiny_run
    console = Console(record=True, width=150)
    print_results(results, console)
    text = console.export_text()
    assert all(name in text for name in results["estimators"])
    assert "exit-layer trade-off" in text and "p" in text


def test_rerun_reuses_finished_steps_and_gives_the_same_results(checkpoint, tmp_path):
    first = run(small_config(checkpoint), tmp_path, log=lambda *_: None)
    store_file = tmp_path / "activations" / "probe" / "resid.npy"
    stamp = store_file.stat().st_mtime_ns
    second = run(small_config(checkpoint), tmp_path, log=lambda *_: None)
    assert store_file.stat().st_mtime_ns == stamp
    for results in (first, second):  # what is measured, not computed
        results.pop("seconds")
        for row in results["exit_tradeoff"]:
            row.pop("speedup"), row.pop("pareto")
    assert json.dumps(first) == json.dumps(second)


def test_run_command_reports_an_unsupported_model_clearly(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path / "llama"
    LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=64,
        )
    ).save_pretrained(path)
    done = superneurons(
        "run", "--out", tmp_path / "run", "--model", path, "--n-probe", "8", "--n-val", "8"
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "LlamaForCausalLM" in done.stderr and "no superneurons adapter" in done.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_sharded_extraction_merges_into_the_unsharded_order(checkpoint, tiny_run, tmp_path):
    reference_dir, reference = tiny_run
    for i in range(2):
        part = run(small_config(checkpoint, shard=(i, 2)), tmp_path, log=lambda *_: None)
        assert part["shard"] == [i, 2]
    assert not (tmp_path / "results.json").exists()
    merged = run(small_config(checkpoint), tmp_path, log=lambda *_: None)
    for part in ("probe", "val"):
        ours = ActivationStore.open(tmp_path / "activations" / part)
        theirs = ActivationStore.open(reference_dir / "activations" / part)
        assert ours.ids == theirs.ids
        assert ours.meta == theirs.meta
        np.testing.assert_allclose(ours.layer("resid", 0), theirs.layer("resid", 0), atol=1e-3)
    assert merged["n_probe"] == reference["n_probe"]


def test_a_finished_store_is_not_reused_for_another_model(tiny_run, tmp_path):
    import shutil

    from models.tiny import tiny_llava_with_other_weights

    reference_dir, _ = tiny_run
    shutil.copytree(reference_dir, tmp_path / "run")
    loaded = tiny_llava_with_other_weights(tmp_path)
    with pytest.raises(ValueError, match="meta"):
        run(small_config(Path("other")), tmp_path / "run", log=lambda *_: None, loaded=loaded)


def test_evaluate_builds_the_same_results_as_run(tiny_run, tmp_path):
    out, _ = tiny_run
    results = json.loads((out / "results.json").read_text())
    done = superneurons(
        "evaluate", "--classifier", out / "classifier", "--store", out / "activations" / "val",
        "--out", tmp_path / "r.json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    evaluated = json.loads((tmp_path / "r.json").read_text())
    # What only `run` knows: the probing questions (for the blind baseline), its size and time.
    only_run = {"n_probe", "seconds", "config", "exit_tradeoff", "shifted", "sets"}
    evaluated_by_both = ("super_neurons", "model")

    def comparable(document: dict) -> dict:
        document = {k: v for k, v in document.items() if k not in only_run | {"dataset"}}
        document["estimators"] = {n: document["estimators"][n] for n in evaluated_by_both}
        return document

    assert comparable(evaluated) == comparable(results)
    assert list(comparable(evaluated)) == list(comparable(results))  # the same key order
    assert evaluated["format"] == "superneurons-results/2"
    assert evaluated["dataset"] == str(out / "activations" / "val")
