"""A saved classifier: round trip, the atomic replace under a real kill, earlier files, checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from superneurons.classifiers import SuperNeuronClassifier
from superneurons.classifiers.artifact import load_classifier, save_classifier
from superneurons.errors import ClassifierError


def _fitted(top_k: int, seed: int = 0) -> tuple[SuperNeuronClassifier, dict]:
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * 20)
    resid = rng.normal(size=(40, 3, 16)).astype(np.float32)
    resid[:, 1, :6] += 2.0 * (labels[:, None] - 0.5)
    activations = {"resid": resid}
    classifier = SuperNeuronClassifier(selection="top_k", top_k=top_k).fit(activations, labels)
    return classifier, activations


def test_round_trip_predicts_the_same(tmp_path):
    classifier, activations = _fitted(4)
    save_classifier(tmp_path / "c", classifier, {"model": "m"})
    loaded, document = load_classifier(tmp_path / "c")
    assert loaded.selected_ == classifier.selected_
    np.testing.assert_array_equal(loaded.predict(activations), classifier.predict(activations))
    # Every neuron's score is kept as float32: the ranking precision, at half the size.
    expected = classifier.scores_["resid"].astype(np.float32)
    np.testing.assert_array_equal(loaded.scores_["resid"], expected)
    assert document["provenance"] == {"model": "m"}


KILL_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[3])
from classifiers.test_artifact import _fitted
from superneurons.classifiers.artifact import save_classifier

kill_at, calls = int(sys.argv[2]), [0]
def dying(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os._exit(9)  # a kill: no cleanup, no finally
        return real(*args, **kwargs)
    return call
os.replace, os.unlink, os.rename = dying(os.replace), dying(os.unlink), dying(os.rename)
save_classifier(sys.argv[1], _fitted(5, seed=1)[0], {"model": "new"})
"""


def test_a_kill_at_any_step_of_a_replace_leaves_the_old_or_the_new_classifier(tmp_path):
    tests_dir = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    out = tmp_path / "c"
    outcomes = []
    for kill_at in range(1, 30):
        save_classifier(out, _fitted(2)[0], {"model": "old"})
        done = subprocess.run(
            [sys.executable, "-c", KILL_SCRIPT, str(out), str(kill_at), tests_dir],
            capture_output=True,
            text=True,
            timeout=120,
        )
        classifier, document = load_classifier(out)
        outcome = (len(classifier.selected_), document["provenance"]["model"])
        assert outcome in {(2, "old"), (5, "new")}, done.stderr
        outcomes.append(outcome)
        if done.returncode == 0:
            break
        assert done.returncode == 9, done.stderr
    # Killed before the commit point the old one stays; after it, the new one is there.
    assert outcomes[0] == (2, "old") and outcomes[-1] == (5, "new")
    assert done.returncode == 0
    save_classifier(out, _fitted(2)[0], {"model": "old"})  # the next save cleans up
    assert len(list(out.glob("neurons*.safetensors"))) == 1


def test_a_classifier_written_before_content_named_tensors_still_loads(tmp_path):
    classifier, activations = _fitted(3)
    save_classifier(tmp_path / "c", classifier, {"model": "m"})
    (tensors,) = (tmp_path / "c").glob("neurons-*.safetensors")
    tensors.rename(tmp_path / "c" / "neurons.safetensors")
    document = json.loads((tmp_path / "c" / "classifier.json").read_text())
    del document["tensors"]
    (tmp_path / "c" / "classifier.json").write_text(json.dumps(document))
    loaded, _ = load_classifier(tmp_path / "c")
    np.testing.assert_array_equal(loaded.predict(activations), classifier.predict(activations))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(tensors="../x.safetensors"), "'tensors' should name"),
        (lambda d: d.update(format="other/1"), "unknown format 'other/1'"),
        (
            lambda d: d["classifier"]["params"].update(alpha=float("nan")),
            "alpha must be a finite number",
        ),
        (lambda d: d["classifier"]["sites"].update(resid=[1, 16]), "outside the recorded shapes"),
        (lambda d: d.pop("site_codes"), "'site_codes'"),
    ],
)
def test_a_tampered_classifier_is_refused_on_load(tmp_path, change, message):
    save_classifier(tmp_path / "c", _fitted(3)[0], {"model": "m"})
    file = tmp_path / "c" / "classifier.json"
    document = json.loads(file.read_text())
    change(document)
    file.write_text(json.dumps(document))
    with pytest.raises(ClassifierError, match=message.replace("(", r"\(")):
        load_classifier(tmp_path / "c")
