"""A fitted classifier on disk: JSON (settings, provenance) + safetensors (neurons, scores).

``DIR/classifier.json`` holds the hyper-parameters, the threshold, the provenance of the
activations it was fitted on (model id, revision, weights fingerprint, architecture, prompt
template) and the label names; ``DIR/neurons.safetensors`` holds the selected neurons (site code,
layer, index, polarity, score) and every neuron's probe score (``scores.<site>``). No pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from superneurons import atomic
from superneurons.classifiers.super_neurons import SelectedNeuron, SuperNeuronClassifier

FORMAT = "superneurons-classifier/1"
JSON_FILE, TENSOR_FILE = "classifier.json", "neurons.safetensors"


def save_classifier(
    out_dir: str | Path,
    classifier: SuperNeuronClassifier,
    provenance: dict,
    extra: dict | None = None,
) -> Path:
    """Write ``classifier`` to ``out_dir`` atomically (a temporary directory, then a rename)."""
    out_dir = Path(out_dir)
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
    document = {
        "format": FORMAT,
        "classifier": state,
        "site_codes": sites,
        "labels": ["no", "yes"],
        "provenance": provenance,
        **(extra or {}),
    }
    with atomic.directory(out_dir) as tmp:
        save_file(tensors, str(tmp / TENSOR_FILE))
        (tmp / JSON_FILE).write_text(json.dumps(document, indent=1) + "\n")
    return out_dir


def load_classifier(path: str | Path) -> tuple[SuperNeuronClassifier, dict]:
    """(classifier, its JSON document) from ``save_classifier``'s directory."""
    path = Path(path)
    if not (path / JSON_FILE).is_file() or not (path / TENSOR_FILE).is_file():
        raise FileNotFoundError(
            f"{path}: not a saved classifier (needs {JSON_FILE}, {TENSOR_FILE})"
        )
    document = json.loads((path / JSON_FILE).read_text())
    if document.get("format") != FORMAT:
        raise ValueError(f"{path / JSON_FILE}: unknown format {document.get('format')!r}")
    tensors = load_file(str(path / TENSOR_FILE))
    sites = document["site_codes"]
    selected = [
        SelectedNeuron(sites[int(c)], int(layer), int(index), int(polarity), float(score))
        for c, layer, index, polarity, score in zip(
            tensors["selected.site"],
            tensors["selected.layer"],
            tensors["selected.index"],
            tensors["selected.polarity"],
            tensors["selected.score"],
            strict=True,
        )
    ]
    classifier = SuperNeuronClassifier.from_dict(
        {**document["classifier"], "selected": [asdict(s) for s in selected]}
    )
    classifier.scores_ = {
        k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("scores.")
    }
    return classifier, document
