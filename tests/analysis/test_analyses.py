"""The analyses on a small store with a planted answer return the planted values, and equal a
naive computation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from command import superneurons
from superneurons.analysis import RunData, agreement, alpha, layers
from superneurons.analysis.alpha import site_scale
from superneurons.classifiers import SuperNeuronClassifier
from superneurons.classifiers.probes import LinearProbeClassifier
from superneurons.store import ActivationWriter

N, LAYERS, WIDTH, PLANTED = 400, 4, 20, (2, 5)


def planted_store(path, seed: int, offset: float = 0.0):
    """resid: noise, but neuron 5 of layer 2 is offset ± 0.8 (yes/no) plus noise; the model's
    parsed answers are right three times in four."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 2 == 0
    values = rng.normal(size=(N, LAYERS, WIDTH)).astype(np.float32)
    layer, index = PLANTED
    values[:, layer, index] = offset + np.where(y, 0.8, -0.8) + 0.3 * rng.normal(size=N)
    right = rng.random(N) < 0.75
    answers = np.where(right, y, ~y)
    records = [
        {"id": f"q{i}", "label": "yes" if y[i] else "no", "parsed": "yes" if answers[i] else "no"}
        for i in range(N)
    ]
    with ActivationWriter(path, {"resid": (LAYERS, WIDTH)}, N) as writer:
        writer.append({"resid": values}, records)
        return writer.finish()


def planted_run(tmp_path, offset: float = 0.0, linear: bool = False, **params) -> RunData:
    probe = planted_store(tmp_path / "probe", 0, offset)
    val = planted_store(tmp_path / "val", 1, offset)
    classifier = SuperNeuronClassifier(**params).fit(probe, probe.labels)
    baselines = {}
    if linear:
        baselines["linear_probe"] = LinearProbeClassifier(Cs=(1.0,)).fit(probe, probe.labels)
    return RunData(tmp_path, probe, val, classifier, {}, baselines=baselines)


def test_layers_find_the_planted_layer_and_neuron(tmp_path):
    result = layers(planted_run(tmp_path, linear=True))
    rows = {row["layer"]: row for row in result["sites"]["resid"]}
    assert rows[2]["best_index"] == 5 and rows[2]["best_val"] > 0.95
    assert result["model_probe_accuracy"] == pytest.approx(0.75, abs=0.05)
    better = {layer: row["n_better_than_model"] for layer, row in rows.items()}
    assert better == {0: 0, 1: 0, 2: 1, 3: 0}
    assert rows[2]["linear_probe_val"] > 0.9 > max(rows[k]["linear_probe_val"] for k in (0, 1, 3))


def test_alpha_peaks_at_the_planted_offset(tmp_path):
    result = alpha(planted_run(tmp_path, offset=1.0))
    assert result["best_alpha"] == 1.0
    by_alpha = {row["alpha"]: row for row in result["grid"]}
    assert by_alpha[1.0]["sn_val_accuracy"] > by_alpha[0.0]["sn_val_accuracy"]


def test_the_site_scale_equals_numpy_over_every_value(tmp_path):
    store = planted_store(tmp_path / "s", 3)
    values = np.stack([store.layer("resid", k) for k in range(LAYERS)]).astype(np.float64)
    scale = site_scale(store, "resid")
    assert scale["mean"] == pytest.approx(values.mean(), abs=1e-6)
    assert scale["std"] == pytest.approx(values.std(), abs=1e-6)
    assert scale["quantiles"]["0.5"] == pytest.approx(np.quantile(values, 0.5), abs=1e-6)


def test_agreement_equals_a_naive_loop_over_t(tmp_path):
    run = planted_run(tmp_path)
    result = agreement(run, span=0.1, step=0.02)
    scores = run.classifier.scores_["resid"][0]
    val = np.stack([run.val.layer("resid", k) for k in range(LAYERS)], axis=1)
    labels = run.val_split.labels
    answers = np.array([a == "yes" for a in run.val.field("parsed")])
    for row in result["thresholds"]:
        chosen = np.argwhere(scores >= row["t"] - 1e-12)
        votes = np.stack([val[:, layer, index] > 0 for layer, index in chosen], axis=1)
        assert row["n_sn"] == len(chosen)
        assert row["accuracy"] == pytest.approx(np.mean((votes.mean(1) >= 0.5) == labels), abs=1e-4)
        expected = np.mean(votes == answers[:, None])
        assert row["agreement_rate"] == pytest.approx(expected, abs=1e-4)
    assert result["thresholds"][0]["n_sn"] == 1  # the planted neuron alone at the best score


def test_analyze_writes_every_analysis_of_a_run(tiny_run):
    out, _ = tiny_run
    done = superneurons("analyze", out, "--markdown")
    assert done.returncode == 0, done.stderr
    written = {}
    for name in ("layers", "alpha", "agreement", "probe-size", "shift", "exit", "claims"):
        written[name] = json.loads((out / "analysis" / f"{name}.json").read_text())
        assert written[name]["format"] == f"superneurons-analysis-{name}/1"
    # From the saved classifier (float32 scores): the best neuron is an SN at the best t.
    assert written["agreement"]["thresholds"][0]["n_sn"] >= 1
    assert [row["claim"] for row in written["claims"]["claims"]] == [1, 2, 3, 4, 5, 6]
    assert "claim 1 (SNs beat the model on validation data):" in done.stderr
    # The Markdown tables are the JSON's numbers.
    first = written["layers"]["sites"]["resid"][0]
    assert "| 0 |" in done.stdout and f"{100 * first['best_val']:.1f}" in done.stdout
    for row in written["claims"]["claims"]:
        assert f"| {row['claim']} | {row['statement']} |" in done.stdout
        assert f"**{row['verdict']}**" in done.stdout


def test_analyze_refuses_what_is_not_a_finished_run(tmp_path):
    (tmp_path / "empty").mkdir()
    done = superneurons("analyze", tmp_path / "empty")
    assert done.returncode == 2 and "not a finished run" in done.stderr
    assert list((tmp_path / "empty").iterdir()) == []
    done = superneurons("analyze", tmp_path / "empty", "--what", "layers,bogus")
    assert done.returncode == 2 and "'--what'" in done.stderr


def test_analyze_refuses_the_results_of_a_baselines_evaluation(tiny_run, tmp_path):
    """`evaluate` of a baseline writes results without super neurons: one line, nothing written."""
    out, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("analysis"))
    evaluated = tmp_path / "savs.json"
    done = superneurons("evaluate", "--classifier", run / "baselines" / "savs",
                        "--store", run / "activations" / "val", "--out", evaluated)  # fmt: skip
    assert done.returncode == 0, done.stderr
    evaluated.replace(run / "results.json")
    done = superneurons("analyze", run)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "results.json: no super_neurons results" in done.stderr
    assert not (run / "analysis").exists()


def test_probe_size_refits_on_balanced_seeded_subsets(tmp_path):
    from superneurons.analysis import probe_size
    from superneurons.analysis.probe_size import balanced_subset

    run = planted_run(tmp_path)
    result = probe_size(run, sizes=(20, 100, 1000), repeats=3, seed=4)
    assert [row["size"] for row in result["sizes"]] == [20, 100, N]  # capped at the store's
    assert [row["repeats"] for row in result["sizes"]] == [3, 3, 1]
    whole = result["sizes"][-1]["accuracy"]
    expected = np.mean(run.classifier.predict(run.val_split) == run.val_split.labels)
    assert whole == {"mean": pytest.approx(expected, abs=1e-4), "sd": 0.0}
    assert probe_size(run, sizes=(20, 100, 1000), repeats=3, seed=4) == result
    rows = balanced_subset(run.probe_split.labels, 20, np.random.default_rng(0))
    assert rows.size == 20 and run.probe_split.labels[rows].sum() == 10


def fake_inputs(
    sn=0.8, model=0.7, p=0.01, early=0.5, rho=-0.9, peaks=None, gain=0.05, shift_ci=None
):
    peaks = peaks or {"mlp": 0.0}
    results = {"estimators": {"super_neurons": {"accuracy": sn, "vs_model": {"p_value": p}},
                              "model": {"accuracy": model}}}  # fmt: skip
    layers_ = {"model_val_accuracy": model, "sites": {"mlp": [{"layer": 0, "best_val": early}]}}
    alpha_ = {"by_site": {s: {"best_alpha": a} for s, a in peaks.items()}, "notes": {}}
    agreement_ = {"spearman_rho": rho}
    sizes = [{"size": 100, "accuracy": {"mean": 0.7, "sd": 0.01}},
             {"size": 1000, "accuracy": {"mean": 0.7 + gain, "sd": 0.01}}]  # fmt: skip
    shift_ = {"shifted": False, "sets": {}}
    if shift_ci is not None:
        change = {"accuracy_change": sum(shift_ci) / 2, "ci95": shift_ci}
        shift_ = {"shifted": True, "sets": {}, "margin": 0.05,
                  "change": {"super_neurons": change, "model": change}}  # fmt: skip
    run = RunData(None, None, None, None, results)
    return run, layers_, alpha_, agreement_, {"sizes": sizes}, shift_


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({}, ["shown", "not shown", "shown", "shown", "shown", "not measured"]),
        (
            {
                "sn": 0.6,
                "early": 0.75,
                "rho": 0.9,
                "peaks": {"mlp": 2.0},
                "gain": -0.05,
                "shift_ci": [-0.2, -0.1],
            },
            ["refuted", "shown", "refuted", "not shown", "refuted", "refuted"],
        ),
        (
            {"p": 0.2, "rho": 0.1, "gain": 0.01, "shift_ci": [-0.08, 0.01]},
            ["not shown", "not shown", "not shown", "shown", "not shown", "not shown"],
        ),
        (
            {"shift_ci": [-0.04, 0.02]},
            ["shown", "not shown", "shown", "shown", "shown", "shown"],
        ),
    ],
)
def test_claim_verdicts_follow_their_rules(inputs, expected):
    from superneurons.analysis import claims

    rows = claims(*fake_inputs(**inputs))["claims"]
    assert [row["verdict"] for row in rows] == expected
    assert all(row["rule"] and row["statement"] for row in rows)


def test_a_seeds_summary_points_to_its_seed_folders(tmp_path):
    from superneurons.errors import DataError

    (tmp_path / "results.json").write_text(json.dumps({"format": "superneurons-seeds/1"}))
    with pytest.raises(DataError, match="seed-N folders"):
        RunData.open(tmp_path)
