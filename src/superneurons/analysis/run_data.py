"""A finished run as the analyses read it: its stores, splits, classifier and results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from superneurons.classifiers import ModelAnswers, Split, SuperNeuronClassifier
from superneurons.classifiers.artifact import load_classifier
from superneurons.errors import DataError
from superneurons.evaluate import REFERENCE, RESULTS_FORMAT, SEEDS_FORMAT
from superneurons.store import ActivationStore

RUN_ESTIMATORS = ("super_neurons", "model")  # the analyses compare these two


@dataclass
class RunData:
    path: Path
    probe: ActivationStore
    val: ActivationStore
    classifier: SuperNeuronClassifier
    results: dict
    reference: ActivationStore | None = None  # a shifted run's reference set
    baselines: dict = field(default_factory=dict)  # fitted baselines by name (OUT/baselines)

    @classmethod
    def open(cls, path: str | Path) -> RunData:
        """The run in ``path`` (written by ``superneurons run``), checked to be complete."""
        path = Path(path)
        file = path / "results.json"
        try:
            results = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: not a finished run (no results.json)") from None
        except ValueError as error:
            raise DataError(f"{file}: not valid JSON ({error})") from None
        if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
            found = results.get("format") if isinstance(results, dict) else None
            hint = "analyze one of its seed-N folders" if found == SEEDS_FORMAT else "rerun it"
            raise DataError(f"{file}: format {found!r}, expected {RESULTS_FORMAT!r}; {hint}")
        estimators = results.get("estimators")
        estimators = estimators if isinstance(estimators, dict) else {}
        missing = [name for name in RUN_ESTIMATORS if name not in estimators]
        if missing:
            raise DataError(
                f"{file}: no {' or '.join(missing)} results (an `evaluate` of a baseline?); "
                "analyze a directory written by `superneurons run`"
            )
        probe = ActivationStore.open(path / "activations" / "probe")
        val = ActivationStore.open(path / "activations" / "val")
        classifier, _ = load_classifier(path / "classifier")
        reference = None
        if results.get("shifted"):
            reference = ActivationStore.open(path / "activations" / REFERENCE)
        folder = path / "baselines"
        baselines = {
            d.name: load_classifier(d)[0] for d in sorted(folder.iterdir()) if d.is_dir()
        } if folder.is_dir() else {}  # fmt: skip
        return cls(path, probe, val, classifier, results, reference, baselines)

    @cached_property
    def probe_split(self) -> Split:
        return Split.from_store(self.probe)

    @cached_property
    def val_split(self) -> Split:
        return Split.from_store(self.val)

    def model_accuracy(self, split: Split) -> float:
        """The model's own accuracy on ``split`` (an unparseable answer counts as wrong)."""
        return float(np.mean(ModelAnswers().predict(split) == split.labels))
