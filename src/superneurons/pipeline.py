"""The whole method in one call: probing set → extract → discover → evaluate."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from superneurons import atomic
from superneurons.classifiers import (
    Estimator,
    ModelAnswers,
    QuestionOnlyClassifier,
    SuperNeuronClassifier,
)
from superneurons.classifiers.artifact import save_classifier
from superneurons.data.images import DEFAULT_MAX_PIXELS
from superneurons.data.loaders import select, task
from superneurons.data.prompts import template_for
from superneurons.data.records import Record
from superneurons.errors import ConfigError
from superneurons.evaluate import build_results
from superneurons.extract import check_records, extract
from superneurons.models.adapters import SITES
from superneurons.models.loading import (
    DTYPES,
    LoadedModel,
    load_model,
    open_model,
    pick_device,
)
from superneurons.outputs import Claim
from superneurons.store import complete_shards, is_complete, merge_shards, shard_path


@dataclass
class RunConfig:
    """Everything a run depends on; recorded in its ``results.json`` under ``config``."""

    model: str | None = None
    task: str = "scenes"
    data_dir: str | None = None  # the dataset's files (a generated task: default OUT/data)
    seed: int = 0
    n_probe: int | None = None  # default: the task's (1000 for scenes, 3000 for datasets)
    n_val: int | None = None  # default: the task's (600 for scenes, the whole split for datasets)
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
    max_pixels: int = DEFAULT_MAX_PIXELS  # images with more pixels are refused
    dtype: str = "fp32"
    device: str = "auto"
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        """Refuse settings that cannot work, naming the field, before anything runs."""
        for name in ("n_probe", "n_val"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise ConfigError(f"{name} must be an integer >= 2 (one per class), got {value!r}")
        for name in ("batch_size", "max_new_tokens", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        unknown = [site for site in self.sites if site not in SITES]
        if unknown or not self.sites:
            raise ConfigError(f"sites must be a non-empty subset of {SITES}, got {self.sites!r}")
        if self.shard is not None:
            index, count = self.shard
            if not 0 <= index < count:
                raise ConfigError(f"shard {index}/{count}: the index must be in 0..count-1")
        task(self.task)
        if self.template is not None:
            template_for(self.template)
        pick_device(self.device)
        self.classifier().check_params()

    def classifier(self) -> SuperNeuronClassifier:
        """The (unfitted) super-neuron classifier these settings describe."""
        return SuperNeuronClassifier(
            alpha=self.alpha,
            metric=self.metric,
            sites=list(self.sites),
            aggregate=self.aggregate,
            polarity=self.polarity,
            selection=self.selection,
            threshold=self.threshold,
            top_k=self.top_k,
            random_state=self.seed,
        )


def task_records(config: RunConfig, out: Path) -> tuple[list[Record], list[Record], str]:
    """(probing set, validation set, prompt template): balanced, seeded, from the train and
    validation splits, which never share an image. A generated task writes under ``out/data``."""
    spec = task(config.task)
    if config.data_dir is not None:
        data_dir = Path(config.data_dir)
    elif spec.generated:
        data_dir = out / "data"
    else:
        raise ConfigError(f"task {config.task!r} needs --data-dir (see docs/datasets.md)")
    probe = select(config.task, data_dir, "train", config.n_probe, config.seed, "probing set")
    val = select(config.task, data_dir, "val", config.n_val, config.seed, "validation set")
    return probe, val, config.template or spec.template


def question_text(record: Record) -> str:
    """What a question-only baseline sees of a record: its context and question, no image."""
    return f"{record.context}\n{record.question}" if record.context else record.question


def estimators(classifier: SuperNeuronClassifier, probe: list[Record]) -> dict[str, Estimator]:
    """What a run evaluates, by results name: the super neurons, the model's own answers and the
    question-only baseline (fitted here on the probing set's questions)."""
    blind = QuestionOnlyClassifier().fit(
        [question_text(r) for r in probe], [r.label for r in probe]
    )
    return {"sn": classifier, "model_answers": ModelAnswers(), "question_only": blind}


def run(config: RunConfig, out: str | Path, log=print, loaded: LoadedModel | None = None) -> dict:
    """Run the method into ``out`` and return the results (also in ``out/results.json``).

    Each step's output is kept, so a rerun skips finished steps and resumes an interrupted one.
    ``loaded`` passes a model already in memory instead of loading ``config.model``.
    """
    out = Path(out)
    inputs = [config.data_dir] if config.data_dir is not None else []
    if config.model is not None and Path(config.model).is_dir():
        inputs.append(config.model)
    with Claim(out, "run", inputs) as claim:
        return _run(config, claim, log, loaded)


def _run(config: RunConfig, claim: Claim, log, loaded: LoadedModel | None) -> dict:
    out = claim.path
    started = time.time()
    # Checked before any scene is rendered, dataset read or weight loaded.
    model = loaded or open_model(config.model)
    probe, val, template = task_records(config, out)
    for part, records in (("probe", probe), ("val", val)):
        if not is_complete(out / "activations" / part):
            check_records(model, records, template, config.max_pixels)
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
            path = shard_path(path, *config.shard)
        elif not is_complete(path) and (shards := complete_shards(path)):
            log(f"merging {len(shards)} shards into {path}")
            merge_shards(shards, path)
        stores[part] = extract(
            loaded,
            records,
            path,
            **common,
            description=part,
            shard=config.shard,
            max_pixels=config.max_pixels,
            check_inputs=False,
        )
    if config.shard is not None:
        log(f"shard {config.shard[0]}/{config.shard[1]} extracted; run without --shard to merge")
        return {"shard": list(config.shard), "n": {k: v.n for k, v in stores.items()}}
    probe_store, val_store = stores["probe"], stores["val"]
    classifier = config.classifier().fit(probe_store, [r["label"] for r in probe_store.records])
    save_classifier(out / "classifier", classifier, probe_store.meta)
    results = build_results(
        estimators(classifier, probe),
        val_store,
        {**probe_store.meta, "model": loaded.model_id, "revision": loaded.revision},
        config.task,
        seed=config.seed,
        questions=[question_text(r) for r in val],
        n_probe=len(probe),
        seconds=round(time.time() - started, 1),
        config={**asdict(config), "sites": list(config.sites)},
    ).to_json()
    atomic.write_json(out / "results.json", results, claim.tmp)
    return results
