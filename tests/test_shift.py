"""Prompt and dataset shift as options of ``run``, templates from a user's file, and the shift
analysis: real runs of the tiny LLaVA, and a planted store whose answer is known."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from superneurons.analysis import RunData, analyze, shift
from superneurons.analysis.shift import MARGIN
from superneurons.classifiers import ModelAnswers, Split
from superneurons.data.prompts import (
    TEMPLATES,
    dump_templates,
    load_templates,
    parse_templates,
)
from superneurons.evaluate import REFERENCE
from superneurons.html_report import reproduce_command
from superneurons.models.adapters import ADAPTERS
from superneurons.pipeline import RunConfig, run
from superneurons.significance import compare
from superneurons.store import ActivationStore

SMALL = dict(n_probe=24, n_val=16, batch_size=8, max_new_tokens=3, baselines=[])


def small_run(checkpoint, out, **settings) -> dict:
    config = RunConfig(model=str(checkpoint), exit_layers="none", **SMALL, **settings)
    return run(config, out, log=lambda *_: None)


def test_the_built_in_templates_round_trip_through_their_file_format(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text(dump_templates(TEMPLATES))
    assert load_templates(path, ADAPTERS) == TEMPLATES
    overrides = {arch for spec in TEMPLATES.values() for arch in spec.overrides}
    assert overrides <= set(ADAPTERS)


def test_a_template_file_with_an_override_round_trips_and_is_used(tiny_llava_checkpoint, tmp_path):
    text = (
        "mine:\n  binary: '{question} Say yes or no.'\n  overrides:\n"
        "    llava: {binary: 'Q: {question} A:'}\n    qwen3_vl: {context: 'Hint: {context}\\n'}\n"
    )
    (tmp_path / "t.yaml").write_text(text)
    specs = load_templates(tmp_path / "t.yaml", ADAPTERS)
    assert specs["mine"].resolve("smolvlm").binary == "{question} Say yes or no."
    assert specs["mine"].resolve("qwen3_vl").binary == "{question} Say yes or no."  # inherited
    assert specs["mine"].resolve("llava").binary == "Q: {question} A:"
    again = tmp_path / "again.yaml"
    again.write_text(dump_templates(specs))
    assert load_templates(again) == specs
    out = tmp_path / "run"
    results = small_run(
        tiny_llava_checkpoint, out, template_file=str(tmp_path / "t.yaml"), template="mine"
    )
    assert not results["shifted"]
    store = ActivationStore.open(out / "activations" / "val")
    assert store.meta["template"] == "mine"
    assert store.meta["prompt"]["binary"] == "Q: {question} A:"  # the tiny model is a LLaVA


def test_a_prompt_shift_validates_on_the_same_questions_asked_otherwise(
    tiny_llava_checkpoint, tmp_path
):
    out = tmp_path / "run"
    text = "{question} Answer yes or no."
    results = small_run(tiny_llava_checkpoint, out, template_text=text, probe_template="plain")
    assert results["shifted"]
    assert results["sets"]["probe"]["template"] == "plain"
    assert results["sets"]["val"]["template"] == "text"
    stores = {p: ActivationStore.open(out / "activations" / p) for p in ("val", REFERENCE)}
    assert stores["val"].meta["prompt"]["binary"] == text
    assert stores[REFERENCE].meta["prompt"]["binary"] == "{question}"
    assert stores["val"].ids == stores[REFERENCE].ids

    data = RunData.open(out)
    result = shift(data)
    assert result["paired"] and result["under_shift"]["n"] == result["reference"]["n"] == 16
    split = Split.from_store(stores["val"])
    sn = data.classifier.predict(split) == split.labels
    model = ModelAnswers().predict(split) == split.labels
    assert result["under_shift"]["sn_vs_model"] == compare(sn, model)
    assert result["under_shift"]["super_neurons"]["accuracy"] == pytest.approx(sn.mean(), abs=1e-4)
    assert results["estimators"]["super_neurons"]["accuracy"] == pytest.approx(sn.mean(), abs=1e-4)
    # The report's command reproduces the run, the inline template quoted.
    args = shlex.split(reproduce_command(data))
    assert args[args.index("--template-text") + 1] == text
    assert args[args.index("--probe-template") + 1] == "plain"
    assert args[args.index("--baselines") + 1] == "none"
    claim = analyze(data, ["claims"])["claims"]["claims"][5]
    assert claim["verdict"] in ("shown", "not shown", "refuted")
    assert (
        claim["measured"]["sn_accuracy_change"]
        == result["change"]["super_neurons"]["accuracy_change"]
    )


def test_a_family_shift_fits_on_one_family_and_validates_on_another(
    tiny_llava_checkpoint, tmp_path
):
    out = tmp_path / "run"
    results = small_run(
        tiny_llava_checkpoint, out, probe_families=["existence"], val_families=["attribute"]
    )
    families = {
        part: set(ActivationStore.open(out / "activations" / part).field("family"))
        for part in ("probe", "val", REFERENCE)
    }
    assert families == {"probe": {"existence"}, "val": {"attribute"}, REFERENCE: {"existence"}}
    assert results["sets"]["val"]["families"] == ["attribute"]
    assert not shift(RunData.open(out))["paired"]


def test_an_unshifted_run_says_so_and_claim_6_is_not_measured(tiny_run):
    data = RunData.open(tiny_run[0])
    assert shift(data) == {
        "format": "superneurons-analysis-shift/1",
        "shifted": False,
        "sets": tiny_run[1]["sets"],
    }
    assert analyze(data, ["claims"])["claims"]["claims"][5]["verdict"] == "not measured"


# -- a planted answer -------------------------------------------------------------------------

N, WIDTH = 400, 8


def planted(path, seed: int, signal: float):
    """Neuron 3 of the one layer is ``signal`` × (±1 for yes/no) plus noise; ids q0, q1, …"""
    from superneurons.store import ActivationWriter

    rng = np.random.default_rng(seed)
    y = np.arange(N) % 2 == 0
    values = rng.normal(size=(N, 1, WIDTH)).astype(np.float32)
    values[:, 0, 3] = signal * np.where(y, 1.0, -1.0) + 0.3 * rng.normal(size=N)
    records = [{"id": f"q{i}", "label": "yes" if y[i] else "no", "parsed": "yes"} for i in range(N)]
    with ActivationWriter(path, {"resid": (1, WIDTH)}, N) as writer:
        writer.append({"resid": values}, records)
        return writer.finish()


@pytest.mark.parametrize(("signal", "verdict"), [(1.0, "shown"), (0.05, "refuted")])
def test_shift_analysis_finds_the_planted_drop(tmp_path, signal, verdict):
    from superneurons.analysis.claims import shift_claim
    from superneurons.classifiers import SuperNeuronClassifier

    probe = planted(tmp_path / "probe", 0, 1.0)
    reference = planted(tmp_path / "reference", 1, 1.0)
    shifted = planted(tmp_path / "val", 2, signal)  # weak signal: the SN is at chance
    classifier = SuperNeuronClassifier().fit(probe, probe.labels)
    sets = {"probe": {"template": "a"}, "val": {"template": "b"}}
    results = {"shifted": True, "sets": sets}
    data = RunData(tmp_path, probe, shifted, classifier, results, reference)
    result = shift(data)
    assert result["paired"]  # the same ids on both sides
    change = result["change"]["super_neurons"]
    low, high = change["ci95"]
    assert low <= change["accuracy_change"] <= high
    if verdict == "shown":
        assert abs(change["accuracy_change"]) < 0.03 and low > -MARGIN
    else:
        assert change["accuracy_change"] < -0.3 and high < -MARGIN
    assert result["change"]["model"]["accuracy_change"] == 0.0  # it always says yes
    assert shift_claim(result)[0] == verdict


def test_parse_templates_names_the_file_and_key():
    with pytest.raises(ValueError, match=r"f.yaml: t.choice: must hold \{question\}, \{options\}"):
        parse_templates({"t": {"choice": "{question} only"}}, "f.yaml")
