"""The whole method in one call: probing set → extract → discover → evaluate."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from superneurons import atomic
from superneurons.classifiers import QuestionOnlyClassifier, SuperNeuronClassifier
from superneurons.classifiers.artifact import save_classifier
from superneurons.data.probing import balanced_sample
from superneurons.data.records import Record
from superneurons.data.tasks import scene_records
from superneurons.evaluate import describe_selection, evaluate
from superneurons.extract import extract
from superneurons.models.adapters import SITES
from superneurons.models.loading import LoadedModel, load_model
from superneurons.store import is_complete, merge_shards


@dataclass
class RunConfig:
    """Everything a run depends on; recorded in its ``results.json`` under ``config``."""

    model: str | None = None
    task: str = "scenes"
    data_dir: str | None = None  # where a real task's files are (not needed for scenes)
    seed: int = 0
    n_probe: int | None = None  # default: 1000 for scenes (≈10 min on 2 CPU cores), 3000 else
    n_val: int | None = None  # default: 600 for scenes, the whole validation split else
    sites: Sequence[str] = SITES
    alpha: float = 0.0
    metric: str = "accuracy"
    aggregate: str = "mean"
    polarity: str = "positive"
    selection: str = "heldout"  # or "fixed" (with threshold) or "top_k" (with top_k)
    threshold: float | None = None
    top_k: int | None = None
    template: str | None = None  # default: the task's template
    batch_size: int = 16
    max_new_tokens: int = 128
    dtype: str = "fp32"
    device: str = "auto"
    shard: tuple[int, int] | None = None


def task_records(config: RunConfig, out: Path) -> tuple[list[Record], list[Record], str]:
    """(probing set, validation set, prompt template): balanced, seeded, from the train and
    validation splits, which never share an image."""
    if config.task == "scenes":
        n_probe, n_val = config.n_probe or 1000, config.n_val or 600
        train = scene_records(out / "data", "train", int(n_probe * 1.2), config.seed)
        val = scene_records(out / "data", "val", int(n_val * 1.2), config.seed)
        template = "plain"
    else:
        from superneurons.data.loaders import TASKS, load_task

        if config.data_dir is None:
            raise ValueError(f"task {config.task!r} needs --data-dir (see docs/datasets.md)")
        n_probe, n_val = config.n_probe or 3000, config.n_val
        train = load_task(config.task, config.data_dir, "train", config.seed)
        val = load_task(config.task, config.data_dir, "val", config.seed)
        template = TASKS[config.task].template
    probe = balanced_sample(train, n_probe, config.seed, "probing set")
    if n_val is not None:
        val = balanced_sample(val, n_val, config.seed, "validation set")
    return probe, val, config.template or template


def question_text(record: Record) -> str:
    """What a question-only baseline sees of a record: its context and question, no image."""
    return f"{record.context}\n{record.question}" if record.context else record.question


def question_only_answers(probe: list[Record], val: list[Record]) -> list[str]:
    """A blind baseline's answers on ``val``, fit on the probing set's questions and labels."""
    blind = QuestionOnlyClassifier().fit(
        [question_text(r) for r in probe], [r.label for r in probe]
    )
    return blind.predict([question_text(r) for r in val])


def _complete_shards(path: Path) -> list[Path]:
    """The shard stores of ``path`` when all n of them are complete, else []."""
    shards = sorted(path.parent.glob(f"{path.name}.shard-*-of-*"))
    counts = {p.name.rsplit("-of-", 1)[1] for p in shards}
    if len(counts) != 1 or len(shards) != int(counts.pop()):
        return []
    return shards if all(is_complete(p) for p in shards) else []


def run(config: RunConfig, out: str | Path, log=print, loaded: LoadedModel | None = None) -> dict:
    """Run the method into ``out`` and return the results (also in ``out/results.json``).

    Each step's output is kept, so a rerun skips finished steps and resumes an interrupted one.
    ``loaded`` passes a model already in memory instead of loading ``config.model``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    probe, val, template = task_records(config, out)
    loaded = loaded or load_model(config.model, config.dtype, config.device)
    log(f"model {loaded.model_id} ({type(loaded.model).__name__}) on {loaded.device}")
    common = dict(
        sites=config.sites,
        template=template,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
    )
    stores = {}
    for part, records in (("probe", probe), ("val", val)):
        path = out / "activations" / part
        if config.shard is not None:
            i, n = config.shard
            path = path.with_name(f"{part}.shard-{i}-of-{n}")
        elif not is_complete(path) and (shards := _complete_shards(path)):
            log(f"merging {len(shards)} shards into {path}")
            merge_shards(shards, path)
        stores[part] = extract(
            loaded, records, path, **common, description=part, shard=config.shard
        )
    if config.shard is not None:
        log(f"shard {config.shard[0]}/{config.shard[1]} extracted; run without --shard to merge")
        return {"shard": list(config.shard), "n": {k: v.n for k, v in stores.items()}}
    probe_store, val_store = stores["probe"], stores["val"]
    classifier = SuperNeuronClassifier(
        alpha=config.alpha,
        metric=config.metric,
        sites=list(config.sites),
        aggregate=config.aggregate,
        polarity=config.polarity,
        selection=config.selection,
        threshold=config.threshold,
        top_k=config.top_k,
        random_state=config.seed,
    ).fit(probe_store, [r["label"] for r in probe_store.records])
    save_classifier(out / "classifier", classifier, probe_store.meta)
    results = {
        "model": loaded.model_id,
        "revision": loaded.revision,
        "dataset": config.task,
        "seed": config.seed,
        "n_probe": len(probe),
        "template": template,
        **describe_selection(classifier),
        **evaluate(
            classifier, val_store, seed=config.seed, question_only=question_only_answers(probe, val)
        ),
        "seconds": round(time.time() - started, 1),
        "config": {**asdict(config), "sites": list(config.sites)},
    }
    atomic.write_json(out / "results.json", results)
    return results
