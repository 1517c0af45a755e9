"""The whole method in one call: probing set → extract → discover → evaluate."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from superneurons.classifiers import SuperNeuronClassifier
from superneurons.classifiers.artifact import save_classifier
from superneurons.data.probing import balanced_sample
from superneurons.data.records import Record
from superneurons.data.scenes.write import write_atomic
from superneurons.data.tasks import scene_records
from superneurons.evaluate import describe_selection, evaluate
from superneurons.extract import extract
from superneurons.models.adapters import SITES
from superneurons.models.loading import load_model


@dataclass
class RunConfig:
    """Everything a run depends on; written beside its results."""

    model: str | None = None
    task: str = "scenes"
    seed: int = 0
    n_probe: int = 1000
    n_val: int = 600
    sites: Sequence[str] = SITES
    alpha: float = 0.0
    metric: str = "accuracy"
    aggregate: str = "mean"
    polarity: str = "positive"
    template: str = "plain"
    batch_size: int = 16
    max_new_tokens: int = 128
    dtype: str = "fp32"
    device: str = "auto"
    extra: dict = field(default_factory=dict)


def task_records(config: RunConfig, out: Path) -> tuple[list[Record], list[Record]]:
    """(probing set, validation set): balanced, seeded, from the train and validation splits."""
    if config.task != "scenes":
        raise ValueError(f"unknown task {config.task!r}; known: ['scenes']")
    train = scene_records(out / "data", "train", int(config.n_probe * 1.2), config.seed)
    val = scene_records(out / "data", "val", config.n_val, config.seed)
    probe = balanced_sample(train, config.n_probe, config.seed, "probing set")
    return probe, balanced_sample(val, config.n_val, config.seed, "validation set")


def run(config: RunConfig, out: str | Path, log=print) -> dict:
    """Run the method into ``out`` and return the results (also in ``out/results.json``).

    Each step's output is kept, so a rerun skips finished steps and resumes an interrupted one.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    probe, val = task_records(config, out)
    loaded = load_model(config.model, config.dtype, config.device)
    log(f"model {loaded.model_id} ({type(loaded.model).__name__}) on {loaded.device}")
    common = dict(
        sites=config.sites,
        template=config.template,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
    )
    probe_store = extract(
        loaded, probe, out / "activations" / "probe", **common, description="probing set"
    )
    val_store = extract(
        loaded, val, out / "activations" / "val", **common, description="validation set"
    )
    classifier = SuperNeuronClassifier(
        alpha=config.alpha,
        metric=config.metric,
        sites=list(config.sites),
        aggregate=config.aggregate,
        polarity=config.polarity,
        random_state=config.seed,
    ).fit(probe_store, [r["label"] for r in probe_store.records])
    save_classifier(out / "classifier", classifier, probe_store.meta)
    results = {
        "model": loaded.model_id,
        "revision": loaded.revision,
        "dataset": config.task,
        "seed": config.seed,
        "n_probe": len(probe),
        **describe_selection(classifier),
        **evaluate(classifier, val_store, seed=config.seed),
        "seconds": round(time.time() - started, 1),
    }
    write_atomic(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    return results
