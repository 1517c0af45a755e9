"""The whole method in one call: probing set → extract → discover → evaluate, beside the
baselines (SAVs, linear and sparse probes, question-only, the model) and the exit-layer
trade-off; over several seeds with :func:`run_seeds`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from superneurons import atomic
from superneurons.classifiers import (
    Estimator,
    ModelAnswers,
    QuestionOnlyClassifier,
    Split,
    SuperNeuronClassifier,
)
from superneurons.classifiers.artifact import save_classifier
from superneurons.classifiers.probes import LinearProbeClassifier, SparseProbeClassifier
from superneurons.classifiers.savs import SAVClassifier
from superneurons.data.images import DEFAULT_MAX_PIXELS
from superneurons.data.loaders import select, task
from superneurons.data.prompts import (
    TEMPLATES,
    Prompter,
    TemplateSpec,
    load_templates,
    parse_templates,
)
from superneurons.data.records import Record
from superneurons.distributed import Ranks, join, launched, leader_first, together
from superneurons.errors import ConfigError
from superneurons.evaluate import (
    MODEL,
    REFERENCE,
    SEEDS_FORMAT,
    SN,
    build_results,
    prediction_lines,
    predictions,
)
from superneurons.extract import build_prompt, check_records, extract
from superneurons.metrics import METRICS
from superneurons.models.adapters import ADAPTERS, SITES, adapter_for
from superneurons.models.loading import (
    DTYPES,
    LoadedModel,
    check_device_map,
    check_device_map_value,
    load_model,
    open_model,
    pick_device,
)
from superneurons.outputs import Claim
from superneurons.significance import compare
from superneurons.store import (
    ActivationStore,
    complete_shards,
    is_complete,
    merge_shards,
    shard_path,
)
from superneurons.tradeoff import exit_tradeoff, measure_speedups

# The baselines a run fits beside the super neurons, by results name (docs/method.md).
BASELINES: tuple[str, ...] = ("savs", "linear_probe", "sparse_probe")


@dataclass(frozen=True)
class Condition:
    """What one set of a run is: its task, prompt template and families (None: all)."""

    task: str
    template: TemplateSpec
    families: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        families = None if self.families is None else list(self.families)
        return {"task": self.task, "template": self.template.name, "families": families}


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
    template_file: str | None = None  # a YAML file of more templates (docs/prompts.md)
    template_text: str | None = None  # an inline yes/no template: the run's template "text"
    families: Sequence[str] | None = None  # only records of these families (None: all)
    # Shift (docs/analyses.md): the probing and validation sets' own task, template and
    # families; each defaults to the setting above.
    probe_task: str | None = None
    val_task: str | None = None
    probe_template: str | None = None
    val_template: str | None = None
    probe_families: Sequence[str] | None = None
    val_families: Sequence[str] | None = None
    batch_size: int = 16
    max_new_tokens: int = 128
    max_pixels: int = DEFAULT_MAX_PIXELS  # images with more pixels are refused
    dtype: str = "fp32"
    device: str = "auto"
    shard: tuple[int, int] | None = None
    # accelerate's big-model placement: auto, balanced, sequential or {module: device}
    device_map: str | dict[str, str | int] | None = None
    max_layer: int | None = None  # every activation estimator reads layers <= max_layer only
    baselines: Sequence[str] = BASELINES
    exit_layers: Sequence[int] | str = "all"  # the trade-off's exit layers: "all", "none", a list

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
        unknown = [name for name in self.baselines if name not in BASELINES]
        if unknown:
            raise ConfigError(f"baselines must be a subset of {BASELINES}, got {unknown}")
        if "savs" in self.baselines and "attn" not in self.sites:
            raise ConfigError("the savs baseline reads the attn site: add attn to the sites")
        if isinstance(self.exit_layers, str):
            if self.exit_layers not in ("all", "none"):
                raise ConfigError(
                    f"exit_layers must be all, none or a list, got {self.exit_layers!r}"
                )
        elif not self.exit_layers or any(not isinstance(k, int) or k < 0 for k in self.exit_layers):
            raise ConfigError(f"exit_layers must be integers >= 0, got {self.exit_layers!r}")
        if self.template_text is not None and self.template is not None:
            raise ConfigError("template_text is the run's template: give it or template, not both")
        for name in ("families", "probe_families", "val_families"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, str) or not value or not all(isinstance(f, str) for f in value)
            ):
                raise ConfigError(f"{name} must be a non-empty list of names, got {value!r}")
        for part in ("probe", "val"):
            self.condition(part)  # every task and template name resolves
        pick_device(self.device)
        if self.device_map is not None:
            check_device_map_value(self.device_map, "device_map")
        self.classifier().check_params()

    def templates(self) -> dict[str, TemplateSpec]:
        """The templates this run may name: the built-ins, ``template_file``'s and "text"."""
        library = dict(TEMPLATES)
        if self.template_file is not None:
            extra = load_templates(self.template_file, ADAPTERS)
            clash = sorted(set(extra) & set(library))
            if clash:
                raise ConfigError(
                    f"{self.template_file}: template(s) {clash} are built in; give yours another "
                    "name"
                )
            library.update(extra)
        if self.template_text is not None:
            text = {"text": {"binary": self.template_text}}
            library.update(parse_templates(text, "template_text"))
        return library

    def condition(self, part: str) -> Condition:
        """What the probing ("probe") or validation ("val") set is drawn from and asked with."""
        name = getattr(self, f"{part}_task") or self.task
        spec = task(name)
        # The setting the template comes from, named in an error.
        field = next((f for f in (f"{part}_template", "template") if getattr(self, f)), None)
        if field is not None:
            template = getattr(self, field)
        elif self.template_text is not None:
            field, template = "template_text", "text"
        else:
            field, template = "task", spec.template
        library = self.templates()
        if template not in library:
            raise ConfigError(
                f"{field}={template!r}: unknown prompt template; known: {sorted(library)}"
            )
        field = f"{part}_families" if getattr(self, f"{part}_families") else "families"
        families = getattr(self, field)
        if families is not None:
            spec.check_families(families, field)
        return Condition(name, library[template], None if families is None else tuple(families))

    @property
    def shifted(self) -> bool:
        """Whether the validation set is drawn or asked otherwise than the probing set."""
        return self.condition("probe") != self.condition("val")

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
            max_layer=self.max_layer,
        )

    def baseline(self, name: str, n_heads: int) -> Estimator:
        """The (unfitted) baseline ``name`` these settings describe."""
        if name == "savs":
            return SAVClassifier(n_heads=n_heads, max_layer=self.max_layer)
        cls = {"linear_probe": LinearProbeClassifier, "sparse_probe": SparseProbeClassifier}[name]
        return cls(sites=list(self.sites), max_layer=self.max_layer, random_state=self.seed)

    def tradeoff_layers(self, n_layers: int) -> list[int]:
        """The exit layers of the trade-off, checked against the model's ``n_layers``."""
        if self.exit_layers == "none":
            return []
        deepest = n_layers - 1 if self.max_layer is None else min(self.max_layer, n_layers - 1)
        if self.exit_layers == "all":
            return list(range(deepest + 1))
        beyond = [k for k in self.exit_layers if k > deepest]
        if beyond:
            raise ConfigError(f"exit layers {beyond} are past the deepest layer read, {deepest}")
        return sorted(set(self.exit_layers))


@dataclass
class RunRecords:
    """The records of a run: the probing and validation sets, and, for a shifted run, the
    reference set: validation questions drawn and asked as the probing set was."""

    probe: list[Record]
    val: list[Record]
    reference: list[Record] | None = None


def task_records(config: RunConfig, out: Path) -> RunRecords:
    """The run's records: balanced, seeded, from the train and validation splits of each set's
    task and families; the probing and validation sets may share no image. A generated task
    writes under ``out/data``."""

    def draw(part: str, split: str, n: int | None, what: str) -> list[Record]:
        condition = config.condition(part)
        spec = task(condition.task)
        if config.data_dir is not None:
            data_dir = Path(config.data_dir)
        elif spec.generated:
            data_dir = out / "data"
        else:
            raise ConfigError(f"task {condition.task!r} needs --data-dir (see docs/datasets.md)")
        return select(condition.task, data_dir, split, n, config.seed, what, condition.families)

    records = RunRecords(
        draw("probe", "train", config.n_probe, "probing set"),
        draw("val", "val", config.n_val, "validation set"),
    )
    check_disjoint(records.probe, records.val)
    if config.shifted:
        records.reference = draw("probe", "val", config.n_val, "reference set")
    return records


def check_disjoint(probe: Sequence[Record], val: Sequence[Record]) -> None:
    """Refuse probing and validation sets that share an image file: SNs would be validated on
    what they were fitted on."""
    seen = {r.image.resolve(): r.id for r in probe if isinstance(r.image, Path)}
    shared = [(seen[r.image.resolve()], r.id) for r in val
              if isinstance(r.image, Path) and r.image.resolve() in seen]  # fmt: skip
    if shared:
        (first_probe, first_val), count = shared[0], len(shared)
        raise ConfigError(
            f"the probing and validation sets share {count} image(s) (probing record "
            f"{first_probe!r} and validation record {first_val!r}, for one): fit and validate "
            "on different splits or tasks"
        )


def question_text(record: Record) -> str:
    """What a question-only baseline sees of a record: its context and question, no image."""
    return f"{record.context}\n{record.question}" if record.context else record.question


def fit_estimators(
    config: RunConfig, probe: Split, records: list[Record], n_heads: int, log=print
) -> dict[str, Estimator]:
    """What a run evaluates, by results name, fitted on the probing split: the super neurons,
    the model's own answers, the baselines of ``config`` and the question-only baseline (on the
    probing records' questions)."""
    fitted: dict[str, Estimator] = {
        SN: config.classifier().fit(probe, probe.labels),
        MODEL: ModelAnswers(),
    }
    for name in config.baselines:
        started = time.time()
        fitted[name] = config.baseline(name, n_heads).fit(probe, probe.labels)
        log(f"{name} fitted in {time.time() - started:.1f} s")
    questions = [question_text(r) for r in records]
    fitted["question_only"] = QuestionOnlyClassifier().fit(questions, [r.label for r in records])
    return fitted


def run(config: RunConfig, out: str | Path, log=print, loaded: LoadedModel | None = None) -> dict:
    """Run the method into ``out`` and return the results (also in ``out/results.json``).

    Each step's output is kept, so a rerun skips finished steps and resumes an interrupted one.
    ``loaded`` passes a model already in memory instead of loading ``config.model``.

    Under a launcher (``torchrun``, ``accelerate launch``: :mod:`superneurons.distributed`)
    every rank extracts its shard of each set; rank 0 then merges the shards, discovers,
    evaluates and returns the results, and the other ranks return ``{"rank", "shard"}``.
    """
    out = Path(out)
    ranks = _ranks(config)
    with ExitStack() as held:
        claim = _claim_run(config, out, ranks, held)
        if ranks is None:
            return _run(config, claim, log, loaded)
        return _run_ranks(config, out, ranks, claim, log, loaded)


def _ranks(config: RunConfig) -> Ranks | None:
    """The launched ranks, if any, with the settings that cannot go with them refused."""
    ranks = launched()
    if ranks is not None:
        if config.shard is not None:
            raise ConfigError(
                "--shard splits the work by hand; under a launcher (torchrun, accelerate "
                "launch) the ranks split it: drop --shard"
            )
        if config.device_map is not None and ranks.local_world_size > 1:
            raise ConfigError(
                f"--device-map spreads one model over this node's devices, but the launcher "
                f"started {ranks.local_world_size} ranks on it: launch one rank per node"
            )
    return ranks


def _claim_run(config: RunConfig, out: Path, ranks: Ranks | None, held: ExitStack) -> Claim | None:
    """Claim ``out`` for the run, held until ``held`` closes. Under a launcher rank 0 claims it
    (after joining the other ranks, who wait) and the others get None."""
    inputs = [config.data_dir] if config.data_dir is not None else []
    if config.model is not None and Path(config.model).is_dir():
        inputs.append(config.model)
    if ranks is None:
        return held.enter_context(Claim(out, "run", inputs))
    join(ranks.device(config.device))
    return leader_first(ranks, lambda: held.enter_context(Claim(out, "run", inputs)))


@dataclass
class _Plan:
    """What a run extracts: each set's records and template by part, and the exit layers."""

    records: RunRecords
    parts: dict[str, tuple[list[Record], TemplateSpec]]
    layers: list[int]


def _check_shards(plan: _Plan, count: int, how: str) -> _Plan:
    """Refuse a split into more shards than some set has records: a shard would hold none."""
    for part, (records, _) in plan.parts.items():
        if len(records) < count:
            raise ConfigError(
                f"{how}: the {part} set has {len(records)} records, fewer than its {count} "
                "shards, so a shard would hold none; split it into fewer or draw more"
            )
    return plan


def _plan(config: RunConfig, out: Path, loaded: LoadedModel | None, check: bool = True) -> _Plan:
    """The run's records and exit layers. Everything is checked before any scene is rendered,
    dataset read or weight loaded; with ``check``, so is every input of a set still to extract
    (images decoded, prompts measured)."""
    model = loaded or open_model(config.model)
    if config.device_map is not None:
        check_device_map(model, config.device_map)
    text = getattr(model.config, "text_config", None) or model.config
    layers = config.tradeoff_layers(text.num_hidden_layers)  # a layer past the model: refused now
    records = task_records(config, out)
    # part -> (records, template): the reference set is asked as the probing set was.
    parts = {"probe": (records.probe, config.condition("probe").template)}
    parts["val"] = (records.val, config.condition("val").template)
    if records.reference is not None:
        parts[REFERENCE] = (records.reference, parts["probe"][1])
    if check:
        for part, (part_records, template) in parts.items():
            if not is_complete(out / "activations" / part):
                check_records(model, part_records, template, config.max_pixels)
    return _Plan(records, parts, layers)


def _load(config: RunConfig, device: str, log) -> LoadedModel:
    loaded = load_model(config.model, config.dtype, device, config.device_map)
    log(f"model {loaded.model_id} ({type(loaded.model).__name__}) on {loaded.device}")
    return loaded


def _extract_parts(
    config: RunConfig,
    plan: _Plan,
    loaded: LoadedModel,
    out: Path,
    log,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, ActivationStore]:
    """Each set's store under ``out/activations``, extracted, resumed or merged from its complete
    shards (a finished one is returned as is); with ``shard``, only that shard's store of each
    set."""
    stores = {}
    for part, (part_records, template) in plan.parts.items():
        path = out / "activations" / part
        if shard is not None:
            path = shard_path(path, *shard)
        elif not is_complete(path) and (shards := complete_shards(path)):
            log(f"merging {len(shards)} shards into {path}")  # by extract, once checked
        stores[part] = extract(
            loaded,
            part_records,
            path,
            sites=config.sites,
            template=template,
            batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
            description=part if shard is None else f"{part} shard {shard[0]}/{shard[1]}",
            shard=shard,
            max_pixels=config.max_pixels,
            check_inputs=False,
            progress=progress,
        )
    return stores


def _run(config: RunConfig, claim: Claim, log, loaded: LoadedModel | None) -> dict:
    started = time.time()
    plan = _plan(config, claim.path, loaded)
    if config.shard is not None:
        _check_shards(plan, config.shard[1], f"--shard {config.shard[0]}/{config.shard[1]}")
    loaded = loaded or _load(config, config.device, log)
    stores = _extract_parts(config, plan, loaded, claim.path, log, config.shard)
    if config.shard is not None:
        log(f"shard {config.shard[0]}/{config.shard[1]} extracted; run without --shard to merge")
        return {"shard": list(config.shard), "n": {k: v.n for k, v in stores.items()}}
    return _evaluate(config, claim, plan, loaded, stores, log, started)


def _run_ranks(
    config: RunConfig,
    out: Path,
    ranks: Ranks,
    claim: Claim | None,
    log,
    loaded: LoadedModel | None,
) -> dict:
    """The run on one launched rank: rank 0 plans (generating and checking the data) while the
    others wait; each rank extracts its shard of every set not merged yet; once all have,
    rank 0 merges the shards and goes on as a single process would."""
    started = time.time()
    log = log if ranks.leader else _silent
    launched_as = f"{ranks.world_size} launched ranks"
    plan = leader_first(
        ranks, lambda: _check_shards(_plan(config, out, loaded), ranks.world_size, launched_as)
    )
    if not ranks.leader:
        plan = _plan(config, out, loaded, check=False)  # reads what rank 0 generated
    shard = (ranks.rank, ranks.world_size)
    unmerged = {part for part in plan.parts if not is_complete(out / "activations" / part)}

    def extract_shards() -> LoadedModel:
        model = loaded or _load(config, ranks.device(config.device), log)
        mine = replace(plan, parts={p: plan.parts[p] for p in unmerged})
        _extract_parts(config, mine, model, out, log, shard, progress=ranks.leader)
        return model

    loaded = together(extract_shards)
    if not ranks.leader:
        return {"rank": ranks.rank, "shard": list(shard)}
    for part in sorted(unmerged):  # shards these ranks extracted with these arguments just now
        path = out / "activations" / part
        log(f"merging {ranks.world_size} shards into {path}")
        merge_shards([shard_path(path, k, ranks.world_size) for k in range(ranks.world_size)], path)
    stores = _extract_parts(config, plan, loaded, out, log)  # every store is complete now
    return _evaluate(config, claim, plan, loaded, stores, log, started)


def _silent(*_: object) -> None:
    """The log of a rank other than 0: rank 0 reports for all of them."""


def _evaluate(
    config: RunConfig,
    claim: Claim,
    plan: _Plan,
    loaded: LoadedModel,
    stores: dict[str, ActivationStore],
    log,
    started: float,
) -> dict:
    """Fit every estimator on the probing store, evaluate them on the validation store, time
    the exit-layer trade-off, and write the classifiers, predictions and results."""
    out, probe, val, layers = claim.path, plan.records.probe, plan.records.val, plan.layers
    probe_store, val_store = stores["probe"], stores["val"]
    adapter = adapter_for(loaded.model)
    probe_split = Split.from_store(probe_store)
    fitted = fit_estimators(config, probe_split, probe, adapter.n_heads(loaded.model), log)
    save_classifier(out / "classifier", fitted[SN], probe_store.meta)
    for name in config.baselines:
        save_classifier(out / "baselines" / name, fitted[name], probe_store.meta)
    val_split = Split.from_store(val_store, [question_text(r) for r in val])
    answers = predictions(fitted, val_split)  # once, for predictions.jsonl and the results
    atomic.write_bytes(out / "predictions.jsonl", prediction_lines(answers, val_store), claim.tmp)
    tradeoff = None
    if layers:
        prompter = Prompter.for_model(plan.parts["val"][1], adapter.name)
        timed = val[: config.batch_size]
        speedups = measure_speedups(
            loaded,
            [r.load_image(config.max_pixels) for r in timed],
            [build_prompt(loaded.processor, r, prompter) for r in timed],
            config.sites,
            range(max(layers) + 1),
            max_new_tokens=config.max_new_tokens,
            log=log,
        )
        tradeoff = exit_tradeoff(fitted, probe_split, val_split, layers, speedups, seed=config.seed)
    results = build_results(
        fitted,
        val_store,
        {**probe_store.meta, "model": loaded.model_id, "revision": loaded.revision},
        config.task,
        seed=config.seed,
        questions=val_split.questions,
        n_probe=len(probe),
        answers=answers,
        exit_tradeoff=tradeoff,
        seconds=round(time.time() - started, 1),
        config={**asdict(config), "sites": list(config.sites)},
        shifted=config.shifted,
        sets={part: config.condition(part).to_json() for part in ("probe", "val")},
    ).to_json()
    atomic.write_json(out / "results.json", results, claim.tmp)
    return results


def run_seeds(
    config: RunConfig, seeds: Sequence[int], out: str | Path, log=print, loaded=None
) -> dict:
    """The whole method once per seed (``out/seed-N``: different probing and validation sets),
    then per estimator the mean ± sd of its metrics and a McNemar test against the model pooled
    over every seed's questions; written to ``out/results.json`` and returned."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {list(seeds)}")
    out = Path(out)
    ranks = _ranks(config)
    if ranks is not None and not ranks.leader:
        log = _silent
    with ExitStack() as held:
        claim = _claim_run(config, out, ranks, held)
        if loaded is None:
            open_model(config.model)  # checked before the first seed's data are made
            device = config.device if ranks is None else ranks.device(config.device)
            loaded = _load(config, device, log)
        runs = {}
        for seed in seeds:
            log(f"seed {seed}")
            runs[seed] = run(replace(config, seed=seed), out / f"seed-{seed}", log, loaded)
        if claim is None:  # a rank other than 0
            return {"rank": ranks.rank, "shard": [ranks.rank, ranks.world_size]}
        summary = summarise_seeds(runs, {seed: out / f"seed-{seed}" for seed in seeds})
        summary["config"] = {**asdict(config), "sites": list(config.sites), "seeds": list(seeds)}
        atomic.write_json(out / "results.json", summary, claim.tmp)
    return summary


def summarise_seeds(runs: dict[int, dict], folders: dict[int, Path]) -> dict:
    """Mean ± sd over seeds of every estimator's metrics, and McNemar against the model on the
    questions of all seeds pooled (read from each run's ``predictions.jsonl``)."""
    first = next(iter(runs.values()))
    names = list(first["estimators"])
    lines = {seed: _read_lines(folders[seed] / "predictions.jsonl") for seed in runs}
    pooled = [line for seed in runs for line in lines[seed]]

    def correct(rows: list[dict], name: str) -> np.ndarray:
        return np.array([row[name] == row["label"] for row in rows])

    def spread(values: list[float]) -> dict:
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return {"mean": round(float(np.mean(values)), 4), "sd": round(sd, 4), "values": values}

    def block(rows: list[dict], entries: dict[int, dict]) -> dict:
        scored = {}
        for name in names:
            entry = {m: spread([entries[s][name][m] for s in entries]) for m in METRICS}
            if name != MODEL and MODEL in names:
                entry["pooled_vs_model"] = compare(correct(rows, name), correct(rows, MODEL))
            scored[name] = entry
        return {"n": len(rows), "estimators": scored}

    summary = {
        "format": SEEDS_FORMAT,
        "model": first["model"],
        "dataset": first["dataset"],
        "seeds": list(runs),
        "runs": {str(seed): f"{folders[seed].name}/results.json" for seed in runs},
        **block(pooled, {s: r["estimators"] for s, r in runs.items()}),
    }
    for name in names:
        summary["estimators"][name]["exit_layer"] = [
            r["estimators"][name]["exit_layer"] for r in runs.values()
        ]
    families = sorted({row["family"] or "all" for row in pooled})
    summary["per_family"] = {
        family: block(
            [row for row in pooled if (row["family"] or "all") == family],
            {
                s: {n: r["estimators"][n]["per_family"][family] for n in names}
                for s, r in runs.items()
                if family in r["per_family"]
            },
        )
        for family in families
    }
    return summary


def _read_lines(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file]
