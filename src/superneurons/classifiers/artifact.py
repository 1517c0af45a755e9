"""A fitted classifier on disk: JSON (settings, provenance) + safetensors (neurons, scores).

``DIR/classifier.json`` holds the hyper-parameters, the threshold, the provenance of the
activations it was fitted on (model id, revision, weights fingerprint, architecture, prompt
template), the label names and the name of its tensor file, ``DIR/neurons-<hash>.safetensors``
(``neurons.safetensors`` in classifiers written before): the selected neurons (site code, layer,
index, polarity, score) and every neuron's probe score (``scores.<site>``, (polarities, layers,
width)). No pickle.

The baselines (:data:`ESTIMATORS`: SAVs, linear and sparse probes) are saved the same way: their
``classifier`` entry names the estimator and holds its parameters and JSON state, and the tensor
file holds its arrays (``to_state``/``from_state``), so ``predict`` serves any of them.

Replacing a classifier is atomic: the new tensor file is written under its own (content-hashed)
name, then ``classifier.json`` is replaced in one rename, then the old tensor file is removed; a
kill at any instant leaves the old classifier or the new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from superneurons import atomic
from superneurons.classifiers.probes import LinearProbeClassifier, SparseProbeClassifier
from superneurons.classifiers.savs import SAVClassifier
from superneurons.classifiers.super_neurons import SelectedNeuron, SuperNeuronClassifier
from superneurons.errors import ClassifierError
from superneurons.outputs import Claim

FORMAT = "superneurons-classifier/1"
JSON_FILE, TENSOR_FILE = "classifier.json", "neurons.safetensors"
_SELECTED = ("site", "layer", "index", "polarity", "score")
_HASHED = re.compile(r"neurons-[0-9a-f]{16}\.safetensors")


# The other estimators a classifier directory may hold, by ``classifier.estimator``.
ESTIMATORS = {
    cls.__name__: cls for cls in (SAVClassifier, LinearProbeClassifier, SparseProbeClassifier)
}


def results_name(classifier) -> str:
    """The name ``results.json`` gives ``classifier``'s entry (docs/method.md)."""
    names = {SuperNeuronClassifier: "super_neurons", SAVClassifier: "savs"}
    names |= {LinearProbeClassifier: "linear_probe", SparseProbeClassifier: "sparse_probe"}
    return names.get(type(classifier), type(classifier).__name__)


def _super_neuron_state(classifier: SuperNeuronClassifier) -> tuple[dict, dict, list[str]]:
    state = classifier.to_dict()
    selected = state.pop("selected")
    sites = list(state["sites"])
    tensors = {
        "selected.site": np.array([sites.index(s["site"]) for s in selected], dtype=np.int64),
        "selected.layer": np.array([s["layer"] for s in selected], dtype=np.int64),
        "selected.index": np.array([s["index"] for s in selected], dtype=np.int64),
        "selected.polarity": np.array([s["polarity"] for s in selected], dtype=np.int64),
        "selected.score": np.array([s["score"] for s in selected], dtype=np.float64),
    }
    for site, scores in classifier.scores_.items():
        tensors[f"scores.{site}"] = np.ascontiguousarray(scores, dtype=np.float32)
    return state, tensors, sites


def _baseline_state(estimator) -> tuple[dict, dict, list[str]]:
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in estimator.get_params().items()}
    state, arrays = estimator.to_state()
    document = {"estimator": type(estimator).__name__, "params": params, "state": state}
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return document, tensors, list(estimator.sites_)


def save_classifier(
    out_dir: str | Path,
    classifier,
    provenance: dict,
    extra: dict | None = None,
) -> Path:
    """Write ``classifier`` (super neurons or one of :data:`ESTIMATORS`) to ``out_dir``,
    replacing a classifier there atomically."""
    out_dir = Path(out_dir)
    if isinstance(classifier, SuperNeuronClassifier):
        state, tensors, sites = _super_neuron_state(classifier)
    else:
        state, tensors, sites = _baseline_state(classifier)
    data = save(tensors)
    tensor_file = f"neurons-{hashlib.sha256(data).hexdigest()[:16]}.safetensors"
    document = {
        "format": FORMAT,
        "classifier": state,
        "site_codes": sites,
        "labels": ["no", "yes"],
        "tensors": tensor_file,
        "provenance": provenance,
        **(extra or {}),
    }
    with Claim(out_dir, "classifier") as claim:
        previous = _previous_tensor_file(out_dir)
        atomic.write_bytes(out_dir / tensor_file, data, claim.tmp)
        atomic.write_json(out_dir / JSON_FILE, document, claim.tmp)  # the commit point
        # The replaced classifier's file, and those of saves killed before their commit point.
        stale = {previous, *(p.name for p in out_dir.iterdir() if _HASHED.fullmatch(p.name))}
        for name in stale - {None, tensor_file}:
            (out_dir / name).unlink(missing_ok=True)
    return out_dir


def _previous_tensor_file(out_dir: Path) -> str | None:
    try:
        return _document(out_dir).get("tensors", TENSOR_FILE)
    except ClassifierError:
        return None


def _document(path: Path) -> dict:
    file = path / JSON_FILE
    if not file.is_file():
        raise ClassifierError(f"{path}: not a saved classifier (no {JSON_FILE})")
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ClassifierError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise ClassifierError(f"{file}: unknown format {found!r} (expected {FORMAT!r})")
    for key, kind in (("classifier", dict), ("site_codes", list), ("provenance", dict)):
        if not isinstance(document.get(key), kind):
            raise ClassifierError(f"{file}: key {key!r} is missing or not a {kind.__name__}")
    name = document.get("tensors", TENSOR_FILE)
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise ClassifierError(f"{file}: 'tensors' should name a .safetensors file beside it")
    return document


def _tensors(file: Path) -> dict[str, np.ndarray]:
    try:
        return load(file.read_bytes())
    except FileNotFoundError:
        raise ClassifierError(f"{file}: missing (named by {JSON_FILE})") from None
    except (SafetensorError, ValueError, OSError) as error:
        raise ClassifierError(f"{file}: not a readable safetensors file ({error})") from None


def _selected(document: dict, tensors: dict[str, np.ndarray], file: Path) -> list[SelectedNeuron]:
    """The selected neurons, each checked against the site shapes the classifier records."""
    columns = []
    for name in _SELECTED:
        column = tensors.get(f"selected.{name}")
        if column is None or column.ndim != 1:
            raise ClassifierError(f"{file}: tensor 'selected.{name}' is missing or not 1-D")
        columns.append(column)
    if len({len(c) for c in columns}) != 1 or len(columns[0]) == 0:
        raise ClassifierError(f"{file}: the 'selected.*' tensors disagree in length or are empty")
    codes = document["site_codes"]
    shapes = document["classifier"].get("sites")
    if not isinstance(shapes, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(d, int) for d in v)
        for v in shapes.values()
    ):
        raise ClassifierError(
            f"{file.parent / JSON_FILE}: 'classifier.sites' should map sites to [layers, width]"
        )
    selected = []
    for k, (code, layer, index, polarity, score) in enumerate(zip(*columns, strict=True)):
        site = codes[int(code)] if 0 <= int(code) < len(codes) else None
        n_layers, width = shapes.get(site, (0, 0)) if site is not None else (0, 0)
        if not (0 <= layer < n_layers and 0 <= index < width and polarity in (1, -1)):
            raise ClassifierError(
                f"{file}: super neuron {k} (site code {int(code)}, layer {int(layer)}, "
                f"index {int(index)}, polarity {int(polarity)}) is outside the recorded shapes "
                f"{shapes}"
            )
        if not math.isfinite(float(score)):
            raise ClassifierError(f"{file}: super neuron {k} has a non-finite score")
        selected.append(SelectedNeuron(site, int(layer), int(index), int(polarity), float(score)))
    return selected


def load_classifier(path: str | Path) -> tuple[Any, dict]:
    """(classifier, its JSON document) from ``save_classifier``'s directory, every field checked:
    a malformed or tampered file is a ClassifierError naming it."""
    path = Path(path)
    document = _document(path)
    file = path / document.get("tensors", TENSOR_FILE)
    tensors = _tensors(file)
    name = document["classifier"].get("estimator", SuperNeuronClassifier.__name__)
    if name != SuperNeuronClassifier.__name__:
        return _load_baseline(path, name, document, tensors), document
    selected = _selected(document, tensors, file)
    try:
        classifier = SuperNeuronClassifier.from_dict(
            {**document["classifier"], "selected": [asdict(s) for s in selected]}
        )
        classifier.check_params()
    except (KeyError, TypeError, ValueError) as error:
        raise ClassifierError(
            f"{path / JSON_FILE}: invalid classifier settings ({error})"
        ) from None
    # Every neuron's score, (P, n_layers, width); classifiers saved before kept one polarity 2-D.
    classifier.scores_ = {
        k.split(".", 1)[1]: v if v.ndim == 3 else v[None]
        for k, v in tensors.items()
        if k.startswith("scores.")
    }
    return classifier, document


def _load_baseline(path: Path, name: str, document: dict, tensors: dict):
    if name not in ESTIMATORS:
        raise ClassifierError(
            f"{path / JSON_FILE}: unknown estimator {name!r}; known: "
            f"{', '.join([SuperNeuronClassifier.__name__, *ESTIMATORS])}"
        )
    entry = document["classifier"]
    try:
        return ESTIMATORS[name].from_state(entry["params"], entry["state"], tensors)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ClassifierError(f"{path / JSON_FILE}: invalid {name} ({error})") from None
