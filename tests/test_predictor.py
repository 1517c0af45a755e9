"""The deployable predictor: early exit from a saved classifier, refusal of other models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from command import superneurons
from models.tiny import tiny_llava_with_other_weights
from superneurons.data.records import load_jsonl
from superneurons.predictor import ModelMismatchError, SuperNeuronPredictor
from superneurons.store import ActivationStore


def val_inputs(out):
    """Validation images and questions, in the store's order, and the store itself."""
    store = ActivationStore.open(out / "activations" / "val")
    files = list((out / "data").glob("val-*/questions.jsonl"))
    by_id = {r.id: r for r in load_jsonl(files[0])}
    records = [by_id[i] for i in store.ids]
    return [r.load_image() for r in records], [r.question for r in records], store


def test_predictions_match_the_classifier_on_the_full_forward(tiny_run, tiny_llava_checkpoint):
    out, results = tiny_run
    predictor = SuperNeuronPredictor.from_pretrained(out / "classifier", batch_size=8)
    images, questions, store = val_inputs(out)
    predictions = predictor.predict(images, questions)
    classifier = predictor.classifier
    expected = classifier.predict(store)
    scores = classifier.vote_score(store)
    # A vote can only flip where an activation sits within rounding of alpha: float16 storage
    # and another batch layout move it by a small fraction of the neuron's own scale (a tiny
    # random model's neurons can be ~1e-4 in all, so no absolute tolerance fits them all).
    near = np.zeros(store.n, dtype=bool)
    for s in classifier.selected_:
        column = store.column(s.site, s.layer, s.index)
        near |= np.abs(column - classifier.alpha) < 1e-2 * np.abs(column).max()
    got = np.array([p.label == "yes" for p in predictions])
    assert (got == expected)[~near].all()
    assert np.allclose(np.array([p.score for p in predictions])[~near], scores[~near])
    assert (~near).sum() >= store.n // 2
    assert {p.exit_layer for p in predictions} == {max(s["layer"] for s in results["selected"])}


def test_multiple_choice_picks_the_choice_with_the_highest_score(tiny_run):
    out, _ = tiny_run
    predictor = SuperNeuronPredictor.from_pretrained(out / "classifier")
    images, _, _ = val_inputs(out)
    options = ["red", "blue", "green"]
    [prediction] = predictor.predict(images[:1], ["What color is the cube?"], [options])
    votes = predictor.votes(
        images[:1] * 3, [f'What color is the cube? Is the answer "{c}"?' for c in options]
    )
    scores = votes.mean(axis=1)
    assert prediction.label == "ABC"[int(np.argmax(scores))]
    assert prediction.score == pytest.approx(scores.max())


def test_a_different_model_is_refused(tiny_run, tiny_llava_checkpoint):
    out, _ = tiny_run
    loaded = tiny_llava_with_other_weights(tiny_llava_checkpoint)
    with pytest.raises(ModelMismatchError, match="fitted on"):
        SuperNeuronPredictor.from_pretrained(out / "classifier", model=loaded)


def test_predict_command_prints_one_json_object_per_question(tiny_run, tmp_path):
    out, _ = tiny_run
    images, questions, _ = val_inputs(out)
    images[0].save(tmp_path / "a.png")
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        json.dumps({"image": "a.png", "question": questions[0]})
        + "\n"
        + json.dumps({"image": "a.png", "question": "What color?", "choices": ["red", "blue"]})
        + "\n"
    )
    classifier = ("predict", "--classifier", out / "classifier")
    single = superneurons(*classifier, tmp_path / "a.png", questions[0])
    assert single.returncode == 0, single.stderr
    [line] = single.stdout.strip().splitlines()
    assert set(json.loads(line)) == {"label", "score", "exit_layer"}
    many = superneurons(*classifier, "--batch", batch)
    assert many.returncode == 0, many.stderr
    rows = [json.loads(x) for x in many.stdout.strip().splitlines()]
    assert [row.pop("id") for row in rows] == ["batch-1", "batch-2"]
    assert rows[0] == json.loads(line)
    assert rows[1]["label"] in {"A", "B"}


def test_predict_shares_an_images_work_across_its_questions_and_answers_alike(tiny_run, tmp_path):
    out, _ = tiny_run
    images, questions, _ = val_inputs(out)
    images[0].save(tmp_path / "a.png")
    images[1].save(tmp_path / "b.png")
    # 18 questions about two images: the second batch of the predictor's 16 finds both cached.
    lines = [{"image": "ab"[i % 2] + ".png", "question": questions[i % 9]} for i in range(18)]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    runs = {}
    for name, caches in (
        ("cached", ()),
        ("plain", ("--image-cache-mb", "0", "--prefix-cache-mb", "0")),
    ):
        done = superneurons(
            "predict", "--classifier", out / "classifier", "--batch", batch, *caches
        )
        assert done.returncode == 0, done.stderr
        runs[name] = [json.loads(x) for x in done.stdout.strip().splitlines()]
    assert len(runs["cached"]) == 18
    for got, want in zip(runs["cached"], runs["plain"], strict=True):
        assert (got["id"], got["label"], got["exit_layer"]) == (
            want["id"],
            want["label"],
            want["exit_layer"],
        )
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)


def test_predict_answers_a_tasks_records_as_run_selects_them(tiny_run, tmp_path):
    from superneurons.data.loaders import select

    out, _ = tiny_run
    done = superneurons(
        "predict", "--classifier", out / "classifier", "--task", "scenes", "--split", "val",
        "--n", "6", "--seed", "3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in done.stdout.strip().splitlines()]
    expected = select("scenes", tmp_path, "val", 6, seed=3)
    assert [row["id"] for row in rows] == [r.id for r in expected]
    assert all(row["label"] in {"yes", "no"} for row in rows)


def test_cascade_curve_runs_from_always_early_to_always_full(tiny_run):
    from superneurons.bench.cascade import cascade_curve

    out, _ = tiny_run
    predictor = SuperNeuronPredictor.from_pretrained(out / "classifier", batch_size=8)
    files = list((out / "data").glob("val-*/questions.jsonl"))
    records = load_jsonl(files[0])[:12]
    result = cascade_curve(predictor, records, margins=(0.0, 0.25, 0.51))
    first, _, last = result["curve"]
    assert first["fallback_fraction"] == 0.0
    assert first["accuracy"] == result["early_exit"]["accuracy"]
    assert last["fallback_fraction"] == 1.0
    fractions = [p["fallback_fraction"] for p in result["curve"]]
    assert fractions == sorted(fractions)


def test_the_predictor_asks_as_extraction_did_context_included(tiny_run):
    from pathlib import Path

    from superneurons.data.prompts import Prompter
    from superneurons.data.records import Record
    from superneurons.extract import build_prompt

    out, _ = tiny_run
    predictor = SuperNeuronPredictor.from_pretrained(out / "classifier")
    store = ActivationStore.open(out / "activations" / "probe")
    record = Record("r", Path("x.png"), "Is it red?", "yes", context="The cube is small.")
    extracted = build_prompt(
        predictor.loaded.processor, record, Prompter.from_json(store.meta["prompt"])
    )
    assert predictor._prompts([record.question], [record.context]) == [extracted]
    assert "The cube is small." in extracted


def test_the_predictor_uses_the_prompt_saved_with_the_classifier(tiny_run, tmp_path):
    import shutil

    out, _ = tiny_run
    shutil.copytree(out / "classifier", tmp_path / "c")
    document = json.loads((tmp_path / "c" / "classifier.json").read_text())
    document["provenance"]["prompt"]["binary"] = "{question} Answer briefly."
    (tmp_path / "c" / "classifier.json").write_text(json.dumps(document))
    predictor = SuperNeuronPredictor.from_pretrained(tmp_path / "c")
    assert "Is it red? Answer briefly." in predictor._prompts(["Is it red?"])[0]


class FirstNeuron:
    """The smallest estimator on the contract: one residual neuron of layer 0, above 0 is yes."""

    reads_ = {"resid": [0]}  # noqa: RUF012

    def fit(self, split, labels):
        return self

    def decision_function(self, split):
        return split.layer("resid", 0)[:, 0]

    def predict(self, split):
        return self.decision_function(split) > 0


def test_any_estimator_that_reads_activations_is_served_with_early_exit(tiny_run):
    from superneurons.classifiers import Split
    from superneurons.evaluate import evaluate
    from superneurons.report import results_table

    out, _ = tiny_run
    served = SuperNeuronPredictor.from_pretrained(out / "classifier")
    predictor = SuperNeuronPredictor(FirstNeuron(), served.loaded, served.prompter)
    images, questions, store = val_inputs(out)
    predictions = predictor.predict(images, questions)
    assert {p.exit_layer for p in predictions} == {0}
    column = store.column("resid", 0, 0)
    clear = np.abs(column) > 1e-2 * np.abs(column).max()  # float16 storage: signs near 0 may flip
    got = np.array([p.label == "yes" for p in predictions])
    assert (got == (column > 0))[clear].all() and clear.sum() >= store.n // 2

    results = evaluate({"first_neuron": FirstNeuron()}, Split.from_store(store))
    assert set(results) == {"n_val", "estimators", "per_family"}
    assert results["estimators"]["first_neuron"]["accuracy"] == pytest.approx(
        np.mean((column > 0) == np.array([label == "yes" for label in store.labels])), abs=1e-4
    )
    table = results_table({**results, "model": "m", "dataset": "d"})
    assert [c.header for c in table.columns][:4] == ["estimator", "exit", "acc [95% CI]", "F1"]
    assert table.columns[0]._cells == ["first_neuron"]
    assert table.columns[1]._cells == ["0"]  # its exit layer


def test_the_cascade_answers_undecided_questions_with_the_full_model(tiny_run):
    out, _ = tiny_run
    images, questions, store = val_inputs(out)
    images, questions = images[:8], questions[:8]
    always = SuperNeuronPredictor.from_pretrained(out / "classifier", fallback_margin=0.51)
    never = SuperNeuronPredictor(
        always.classifier, always.loaded, always.prompter, fallback_margin=0.0
    )
    full = always.full_model_answers(images, questions)
    last_layer = store.sites["resid"][0] - 1
    for prediction, answer in zip(always.predict(images, questions), full, strict=True):
        if answer is None:  # unparseable: the super neurons' answer stays
            assert not prediction.fallback
        else:
            assert prediction.fallback and prediction.label == answer
            assert prediction.exit_layer == last_layer
    early = never.predict(images, questions)
    assert not any(p.fallback for p in early)
    assert {p.exit_layer for p in early} == {never.exit_layer}
    # The full model's answers are the extraction's own answers for these questions.
    assert full == [r["parsed"] for r in store.records[:8]]


def test_classifiers_sharing_a_batch_answer_as_each_does_alone(tiny_run):
    """Super neurons and a linear probe of the same model in one batch (one forward to the
    deeper exit layer of the two): each answers as its own predictor does alone."""
    from superneurons.predictor import predict_together

    out, _ = tiny_run
    sn = SuperNeuronPredictor.from_pretrained(out / "classifier", batch_size=8)
    probe = SuperNeuronPredictor.from_pretrained(out / "baselines" / "linear_probe", sn.loaded)
    images, questions, _ = val_inputs(out)
    images, questions = images[:6], questions[:6]
    mixed = [sn, probe, probe, sn, sn, probe]
    together = predict_together(mixed, images, questions, batch_size=6)
    for predictor in (sn, probe):
        mine = [i for i, p in enumerate(mixed) if p is predictor]
        alone = predictor.predict([images[i] for i in mine], [questions[i] for i in mine])
        for i, expected in zip(mine, alone, strict=True):
            assert together[i].label == expected.label
            assert together[i].exit_layer == expected.exit_layer
            assert together[i].score == pytest.approx(expected.score, rel=1e-4, abs=1e-5)


def test_the_caches_change_no_answer(tiny_run):
    from superneurons.image_cache import ImageFeatureCache
    from superneurons.prefix_cache import PrefixKVCache

    out, _ = tiny_run
    plain = SuperNeuronPredictor.from_pretrained(out / "classifier", batch_size=4)
    images, questions, _ = val_inputs(out)
    images, questions = images[:3] * 3, questions[:3] + questions[3:6] + questions[6:9]
    cached = SuperNeuronPredictor.from_pretrained(
        out / "classifier", plain.loaded, batch_size=4,
        image_cache=ImageFeatureCache(2**24), prefix_cache=PrefixKVCache(2**24),
    )  # fmt: skip
    expected = plain.predict(images, questions)
    for _ in range(2):
        got = cached.predict(images, questions)
        assert [p.label for p in got] == [p.label for p in expected]
        assert np.allclose([p.score for p in got], [p.score for p in expected], atol=1e-6)
    assert cached.prefix_cache.hits >= len(questions)  # the second round: every prompt
