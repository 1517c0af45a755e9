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
        "sn",
        "model_answers",
        "agreement_rate",
        "per_family",
        "sn_layers",
        "question_only",
    ):
        assert key in results, key
    assert results["n_probe"] == 24 and results["n_val"] == 16
    assert results["selected"], "a fitted classifier selects at least one neuron"
    for block in ("sn", "model_answers", "question_only"):
        assert set(results[block]) >= {"accuracy", "precision", "recall", "f1", "ci95"}
        low, high = results[block]["ci95"]["accuracy"]
        assert low <= results[block]["accuracy"] <= high
    probe = ActivationStore.open(tmp_path / "activations" / "probe")
    labels = [r["label"] for r in probe.records]
    assert labels.count("yes") == labels.count("no") == 12
    # The saved classifier predicts what the results say, from the validation store.
    classifier, document = load_classifier(tmp_path / "classifier")
    assert document["provenance"]["model"] == str(checkpoint)
    val = ActivationStore.open(tmp_path / "activations" / "val")
    truth = np.array([r["label"] == "yes" for r in val.records])
    accuracy = float((classifier.predict(val) == truth).mean())
    assert accuracy == pytest.approx(results["sn"]["accuracy"], abs=1e-4)
    for family, block in results["per_family"].items():
        assert 0 <= block["question_only"]["accuracy"] <= 1, family


def test_results_print_as_a_table(tiny_run):
    from rich.console import Console

    from superneurons.report import print_results

    _, results = tiny_run
    console = Console(record=True, width=150)
    print_results(results, console)
    text = console.export_text()
    assert "all" in text and all(family in text for family in results["per_family"])
    assert "question-only acc" in text


def test_rerun_reuses_finished_steps_and_gives_the_same_results(checkpoint, tmp_path):
    first = run(small_config(checkpoint), tmp_path, log=lambda *_: None)
    store_file = tmp_path / "activations" / "probe" / "resid.npy"
    stamp = store_file.stat().st_mtime_ns
    second = run(small_config(checkpoint), tmp_path, log=lambda *_: None)
    assert store_file.stat().st_mtime_ns == stamp
    first.pop("seconds"), second.pop("seconds")
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
    only_run = {"question_only", "n_probe", "seconds", "config"}

    def comparable(document: dict) -> dict:
        document = {k: v for k, v in document.items() if k not in only_run | {"dataset"}}
        for block in document["per_family"].values():
            block.pop("question_only", None)
        return document

    assert comparable(evaluated) == comparable(results)
    assert list(comparable(evaluated)) == list(comparable(results))  # the same key order
    assert evaluated["format"] == "superneurons-results/1"
    assert evaluated["dataset"] == str(out / "activations" / "val")
