"""The ``superneurons`` command line: a thin shell over the Python API.

Option values are checked as they are parsed; bad input raises a ``SuperneuronsError`` (or an
``OSError`` naming a path) before any work starts. Either is printed as one line per problem on
stderr, exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from superneurons.data.images import DEFAULT_MAX_PIXELS

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False
)
console = Console(stderr=True)
USER_ERROR_EXIT = 2


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def _one_of(*allowed: str):
    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return check


def _device(value: str) -> str:
    if value == "auto":
        return value  # parsing stays cheap: torch is imported only for an explicit device
    from superneurons.models.loading import pick_device

    try:
        pick_device(value)
    except ValueError as error:  # ConfigError: an unknown or unavailable device
        raise typer.BadParameter(str(error)) from None
    return value


def _chosen_device(value: str) -> str:
    """The device ``--device`` names, "auto" resolved (a CUDA device when there is one)."""
    from superneurons.models.loading import pick_device

    return str(pick_device(value))


def _site_list(value: str) -> str:
    from superneurons.models.adapters import SITES

    sites = _names(value)
    unknown = [s for s in sites if s not in SITES]
    if unknown or not sites:
        raise typer.BadParameter(f"{value!r}: sites are a comma-separated subset of {SITES}")
    return value


def _task(value: str) -> str:
    from superneurons.data.loaders import TASKS

    return _one_of("scenes", *TASKS)(value)


def _template(value: str | None) -> str | None:
    from superneurons.data.prompts import TEMPLATES

    return _one_of(*TEMPLATES)(value)


DTYPE = typer.Option("fp32", callback=_one_of("fp32", "bf16", "fp16"), help="fp32, bf16 or fp16.")
SPLIT = typer.Option("train", callback=_one_of("train", "val", "test"), help="train, val or test.")
METRIC = typer.Option(
    "accuracy",
    callback=_one_of("accuracy", "precision", "recall", "f1"),
    help="accuracy, precision, recall or f1.",
)
AGGREGATE = typer.Option("mean", callback=_one_of("mean", "majority"), help="mean or majority.")
POLARITY = typer.Option(
    "positive", callback=_one_of("positive", "negative", "both"), help="positive, negative or both."
)
SELECTION = typer.Option(
    "heldout",
    callback=_one_of("heldout", "fixed", "top_k"),
    help="heldout, fixed (--threshold) or top_k.",
)
ALPHA = typer.Option(0.0, callback=_finite, help="Binarisation threshold: a > alpha means yes.")
THRESHOLD = typer.Option(None, callback=_finite, help="Score threshold t (selection fixed).")
TOP_K = typer.Option(None, min=1, help="Number of super neurons (selection top_k).")
SITES_OPTION = typer.Option("resid,mlp,attn", callback=_site_list, help="Comma-separated sites.")
TASK = typer.Option(
    "scenes", callback=_task, help="scenes (generated) or a dataset, see docs/datasets.md."
)
MAX_LAYER = typer.Option(
    None, min=0, help="Read layers <= k only, so that answering stops after layer k."
)


def _integers(value: str | None) -> str | None:
    if value is not None and not (_names(value) and all(i.isdigit() for i in _names(value))):
        raise typer.BadParameter(f"{value!r}: comma-separated integers >= 0, such as 0,1,2")
    return value


def _exit_layers(value: str) -> str:
    return value if value in ("all", "none") else _integers(value)


MAX_PIXELS = typer.Option(
    DEFAULT_MAX_PIXELS, min=1, help="Refuse images with more pixels than this (PIL's default)."
)


@app.command()
def scenes(
    out: Path = typer.Option(..., help="Output directory (images/, questions.jsonl, scenes.json)."),
    n_scenes: int = typer.Option(100, "--scenes", min=1, help="Number of scenes."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same bytes."),
    split: str = SPLIT,
    resolution: int = typer.Option(64, min=16, help="Image side in pixels."),
    min_objects: int = typer.Option(3, min=1),
    max_objects: int = typer.Option(6, min=1),
    per_family: int = typer.Option(1, min=1, help="Yes/no pairs per family and scene."),
) -> None:
    """Write a synthetic CLEVR-like scene dataset with balanced questions."""
    from superneurons.data.scenes import write_scene_dataset

    write_scene_dataset(
        out, n_scenes, seed, split, resolution, min_objects, max_objects, per_family=per_family
    )
    n_questions = sum(1 for _ in (out / "questions.jsonl").open())
    console.print(f"wrote {n_scenes} scenes and {n_questions} questions to {out}")


def _names(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def _ints(value: str) -> list[int]:
    return [int(item) for item in _names(value)]


def _shard_option(value: str | None) -> str | None:
    _shard(value)
    return value


def _shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise typer.BadParameter(f"must look like 0/4, got {value!r}") from None
    if not 0 <= index < count:
        raise typer.BadParameter(f"{value!r}: the index must be in 0..count-1 and count >= 1")
    return index, count


def _device_map(value: str | None) -> str | None:
    if value is None:
        return None
    from superneurons.models.loading import read_device_map

    try:
        read_device_map(value)
    except ValueError as error:  # ConfigError: not a strategy, an unreadable or bad JSON file
        raise typer.BadParameter(str(error).removeprefix(f"--device-map {value}: ")) from None
    return value


def _read_device_map(value: str | None):
    from superneurons.models.loading import read_device_map

    return None if value is None else read_device_map(value)


IMAGE_CACHE_MB = typer.Option(
    256.0, min=0.0, help="Reuse images' vision features, up to this much (MiB; 0: off)."
)
PREFIX_CACHE_MB = typer.Option(
    256.0,
    min=0.0,
    help="Reuse the keys and values of an image-first prompt's image prefix, up to this much "
    "(MiB; 0: off).",
)
DEVICE_MAP = typer.Option(
    None,
    callback=_device_map,
    help="Spread a model larger than one device: auto, balanced, sequential or a JSON file of "
    "{module: device} (cpu, disk, cuda:N); --device is then unused. See docs/scale.md.",
)
MODEL_HELP = "Local checkpoint directory or Hugging Face id (from the cache); default: embedded."


@app.command()
def extract(
    out: Path = typer.Option(..., help="Activation store directory (resumes if interrupted)."),
    model: str = typer.Option(None, help=MODEL_HELP),
    task: str = TASK,
    data_dir: Path = typer.Option(None, help="The dataset's directory (scenes: OUT/data)."),
    jsonl: Path = typer.Option(None, help="JSON-lines questions: --task jsonl --data-dir FILE."),
    split: str = SPLIT,
    n: int = typer.Option(1000, min=2, help="Number of samples (balanced yes/no)."),
    seed: int = typer.Option(0),
    sites: str = SITES_OPTION,
    template: str = typer.Option(
        None, callback=_template, help="Prompt template (default: the task's)."
    ),
    batch_size: int = typer.Option(16, min=1),
    max_new_tokens: int = typer.Option(128, min=1),
    max_pixels: int = MAX_PIXELS,
    dtype: str = DTYPE,
    device: str = typer.Option("auto", callback=_device, help="cpu, cuda or auto."),
    device_map: str = DEVICE_MAP,
) -> None:
    """Record activations at the first generated token, and the model's answers.

    Generated scenes (the default task) are written under OUT/data.
    """
    from superneurons.data.loaders import select
    from superneurons.data.loaders import task as task_spec
    from superneurons.errors import ConfigError
    from superneurons.extract import check_records
    from superneurons.extract import extract as run_extract
    from superneurons.models.loading import check_device_map, load_model, open_model
    from superneurons.outputs import Claim
    from superneurons.store import is_complete

    if jsonl is not None:
        if data_dir is not None or task != "scenes":
            raise ConfigError("--jsonl FILE stands for --task jsonl --data-dir FILE: give one")
        task, data_dir = "jsonl", jsonl
    spec = task_spec(task)
    if data_dir is None and not spec.generated:
        raise ConfigError(f"--task {task} needs --data-dir (see docs/datasets.md)")
    template = template or spec.template
    files = open_model(model)
    placement = _read_device_map(device_map)
    if placement is not None:
        check_device_map(files, placement)
    with Claim(out, "store", inputs=[data_dir] if data_dir is not None else []):
        records = select(task, data_dir or out / "data", split, n, seed, "sample set")
        if not is_complete(out):
            check_records(files, records, template, max_pixels)
        loaded = load_model(model, dtype, device, placement)
        store = run_extract(
            loaded,
            records,
            out,
            _names(sites),
            template,
            batch_size,
            max_new_tokens,
            max_pixels=max_pixels,
            check_inputs=False,
        )
    console.print(f"{store.n} samples in {out}")


@app.command()
def discover(
    ctx: typer.Context,
    store: Path = typer.Option(..., help="Activation store of the probing set."),
    out: Path = typer.Option(..., help="Directory for the fitted classifier."),
    alpha: float = ALPHA,
    metric: str = METRIC,
    sites: str = SITES_OPTION,
    selection: str = SELECTION,
    threshold: float = THRESHOLD,
    top_k: int = TOP_K,
    aggregate: str = AGGREGATE,
    polarity: str = POLARITY,
    seed: int = typer.Option(0, help="Seed of the held-out split."),
    max_layer: int = MAX_LAYER,
) -> None:
    """Score every neuron on the probing set and keep the super neurons (a forward pass may
    stop after the deepest)."""
    from superneurons.classifiers import SuperNeuronClassifier
    from superneurons.classifiers.artifact import save_classifier
    from superneurons.outputs import Claim
    from superneurons.store import ActivationStore

    # The options are the classifier's parameters by name (the seed is its random_state).
    params = {**ctx.params, "sites": _names(sites), "random_state": seed}
    names = SuperNeuronClassifier().get_params()
    classifier = SuperNeuronClassifier(**{k: v for k, v in params.items() if k in names})
    classifier.check_params()
    with Claim(out, "classifier", inputs=[store]):
        probe = ActivationStore.open(store)
        classifier.fit(probe, probe.labels)
        save_classifier(out, classifier, probe.meta)
    best = classifier.selected_[0]
    console.print(
        f"{len(classifier.selected_)} super neurons (t = {classifier.threshold_}); best: "
        f"{best.site} layer {best.layer} #{best.index} ({best.score:.3f}) → {out}"
    )


@app.command()
def evaluate(
    classifier: Path = typer.Option(..., help="Directory written by `discover`."),
    store: Path = typer.Option(..., help="Activation store of the validation set."),
    out: Path = typer.Option(
        None, help="Write the results JSON here (a new file, or one it wrote)."
    ),
    seed: int = typer.Option(0, help="Bootstrap seed."),
) -> None:
    """Compare a fitted classifier (super neurons or a baseline) with the model's own answers
    on validation data."""
    from superneurons.classifiers import ModelAnswers
    from superneurons.classifiers.artifact import load_classifier, results_name
    from superneurons.evaluate import RESULTS_FORMAT, build_results, check_same_model
    from superneurons.outputs import check_output_file, write_output_json
    from superneurons.report import print_results
    from superneurons.store import ActivationStore

    if out is not None:
        check_output_file(out, [classifier, store], document_format=RESULTS_FORMAT)
    fitted, document = load_classifier(classifier)
    val = ActivationStore.open(store)
    provenance = document["provenance"]
    check_same_model(fitted, provenance, val, f"{classifier} and {store}")
    estimators = {results_name(fitted): fitted, "model": ModelAnswers()}
    results = build_results(estimators, val, provenance, str(store), seed=seed).to_json()
    if out is not None:
        write_output_json(out, results, [classifier, store])
    print_results(results, Console())


@app.command()
def run(
    ctx: typer.Context,
    out: Path = typer.Option(Path("runs/default"), help="Everything the run produces."),
    model: str = typer.Option(None, help=MODEL_HELP),
    task: str = TASK,
    data_dir: str = typer.Option(None, help="The dataset's directory (scenes: OUT/data)."),
    seed: int = typer.Option(0, help="Picks the generated scenes and the samples."),
    n_probe: int = typer.Option(
        None,
        min=2,
        help="Probing-set size, balanced (default 1000 for scenes, 3000 for datasets).",
    ),
    n_val: int = typer.Option(
        None,
        min=2,
        help="Validation-set size, balanced (default 600 for scenes, the whole split else).",
    ),
    sites: str = SITES_OPTION,
    alpha: float = ALPHA,
    metric: str = METRIC,
    aggregate: str = AGGREGATE,
    polarity: str = POLARITY,
    selection: str = SELECTION,
    threshold: float = THRESHOLD,
    top_k: int = TOP_K,
    template: str = typer.Option(
        None, help="Prompt template: built in or from --template-file (default: the task's)."
    ),
    template_file: Path = typer.Option(
        None, help="A YAML file of more templates, in the built-ins' format (docs/prompts.md)."
    ),
    template_text: str = typer.Option(
        None, help='The run\'s template inline, e.g. "{question} Answer yes or no." (named text).'
    ),
    families: str = typer.Option(
        None, help="Only records of these families (comma-separated), in both sets."
    ),
    probe_task: str = typer.Option(
        None, callback=_task, help="Shift: the probing set's task (default --task)."
    ),
    val_task: str = typer.Option(
        None, callback=_task, help="Shift: the validation set's task (default --task)."
    ),
    probe_template: str = typer.Option(
        None, help="Shift: the probing set's template (default --template)."
    ),
    val_template: str = typer.Option(
        None, help="Shift: the validation set's template (default --template)."
    ),
    probe_families: str = typer.Option(
        None, help="Shift: the probing set's families (default --families)."
    ),
    val_families: str = typer.Option(
        None, help="Shift: the validation set's families (default --families)."
    ),
    batch_size: int = typer.Option(16, min=1),
    max_new_tokens: int = typer.Option(128, min=1),
    max_pixels: int = MAX_PIXELS,
    dtype: str = DTYPE,
    device: str = typer.Option("auto", callback=_device, help="cpu, cuda or auto."),
    device_map: str = DEVICE_MAP,
    shard: str = typer.Option(
        None,
        callback=_shard_option,
        help="i/n: extract only shard i of n (0-based); a run without it merges them.",
    ),
    max_layer: int = MAX_LAYER,
    baselines: str = typer.Option(
        "savs,linear_probe,sparse_probe",
        help="Baselines fitted beside the super neurons (comma-separated), or none.",
    ),
    exit_layers: str = typer.Option(
        "all",
        callback=_exit_layers,
        help="Exit layers of the trade-off table (refit and timed at each): all, none or a list.",
    ),
    seeds: str = typer.Option(
        None,
        callback=_integers,
        help="Run the whole method once per seed (OUT/seed-N), then mean ± sd and pooled tests.",
    ),
) -> None:
    """The whole method: probing set → extract → discover → evaluate, beside the baselines
    and the exit-layer trade-off (resumable)."""
    from dataclasses import fields

    from superneurons.errors import ConfigError
    from superneurons.pipeline import RunConfig, run_seeds
    from superneurons.pipeline import run as run_pipeline
    from superneurons.report import print_results, print_seeds

    # The options are RunConfig's fields by name: passed through, never mapped by hand.
    params = {
        **ctx.params,
        "sites": _names(sites),
        "shard": _shard(shard),
        "device_map": _read_device_map(device_map),
        "baselines": [] if baselines == "none" else _names(baselines),
        "exit_layers": exit_layers if exit_layers in ("all", "none") else _ints(exit_layers),
        "template_file": None if template_file is None else str(template_file),
        **{
            name: None if ctx.params[name] is None else _names(ctx.params[name])
            for name in ("families", "probe_families", "val_families")
        },
    }
    config = RunConfig(**{f.name: params[f.name] for f in fields(RunConfig)})
    if seeds is not None:
        if config.shard is not None:
            raise ConfigError("--seeds runs the whole method; extract shards without it")
        summary = run_seeds(config, _ints(seeds), out, log=console.print)
        if "rank" in summary:  # a launched rank other than 0: rank 0 reports
            return
        print_seeds(summary, Console())
        console.print(f"results: {out / 'results.json'}")
        return
    results = run_pipeline(config, out, log=console.print)
    if "shard" in results:  # --shard, or a launched rank other than 0: rank 0 reports
        return
    print_results(results, Console())
    console.print(f"results: {out / 'results.json'}")


@app.command()
def predict(
    classifier: Path = typer.Option(..., help="Directory written by `discover` or `run`."),
    image: Path = typer.Argument(None, help="Image file (omit with --batch)."),
    question: str = typer.Argument(None, help="A yes/no question about the image."),
    batch: Path = typer.Option(
        None,
        help="JSON lines {image, question[, choices, context]}; image paths relative to the file.",
    ),
    context: str = typer.Option(None, help="Context asked before QUESTION (a hint, a passage)."),
    task: str = typer.Option(
        None, callback=_task, help="Answer a task's records instead (see docs/datasets.md)."
    ),
    data_dir: Path = typer.Option(None, help="With --task: the dataset's directory."),
    split: str = typer.Option("val", help="With --task: the split."),
    n: int = typer.Option(None, min=2, help="With --task: a balanced sample of this size."),
    seed: int = typer.Option(0, help="With --task: picks the sample (and generated scenes)."),
    model: str = typer.Option(None, help="Default: the model the classifier was fitted on."),
    fallback_margin: float = typer.Option(
        None,
        min=0.0,
        max=0.5,
        help="Cascade: run the full model when |score - 0.5| is below this (0 to 0.5).",
    ),
    max_pixels: int = MAX_PIXELS,
    image_cache_mb: float = IMAGE_CACHE_MB,
    prefix_cache_mb: float = PREFIX_CACHE_MB,
    dtype: str = DTYPE,
    device: str = typer.Option("auto", callback=_device, help="cpu, cuda or auto."),
    device_map: str = DEVICE_MAP,
) -> None:
    """Answer from super neurons, stopping after their deepest layer: one JSON object per line
    (with the record's ``id`` for --batch and --task). Questions about an image seen before
    share its work (the image-feature and prefix caches, docs/serve.md)."""
    import json
    import tempfile

    from superneurons.data.images import open_rgb
    from superneurons.data.loaders import select
    from superneurons.data.loaders import task as task_spec
    from superneurons.data.records import load_jsonl
    from superneurons.errors import ConfigError
    from superneurons.image_cache import ImageFeatureCache
    from superneurons.predictor import SuperNeuronPredictor
    from superneurons.prefix_cache import PrefixKVCache
    from superneurons.preflight import check_images

    sources = [image is not None or question is not None, batch is not None, task is not None]
    if sum(sources) != 1 or (sources[0] and (image is None or question is None)):
        raise ConfigError("give IMAGE and QUESTION, or --batch FILE, or --task NAME: one of them")
    if context is not None and not sources[0]:
        raise ConfigError("--context goes with IMAGE and QUESTION, not with --batch or --task")

    def checked_images(records) -> list:
        check_images(records, max_pixels)  # every image, before the model loads
        return [r.load_image(max_pixels) for r in records]

    if batch is not None:
        records = load_jsonl(batch, require_label=False)
        images = checked_images(records)
    elif task is not None:
        if data_dir is None and not task_spec(task).generated:
            raise ConfigError(f"--task {task} needs --data-dir (see docs/datasets.md)")
        with tempfile.TemporaryDirectory(prefix="superneurons-scenes-") as scratch:
            records = select(task, data_dir or scratch, split, n, seed)
            images = checked_images(records)  # read while generated scenes exist
    else:
        if not question.strip():
            raise ConfigError("QUESTION is empty")
        records, images = None, [open_rgb(image, max_pixels=max_pixels)]
    if records is not None:
        questions = [r.question for r in records]
        choices = [r.choices for r in records]
        contexts = [r.context for r in records]
    else:
        questions, choices, contexts = [question], None, [context]
    predictor = SuperNeuronPredictor.from_pretrained(
        classifier,
        model,
        dtype=dtype,
        device=device,
        device_map=_read_device_map(device_map),
        fallback_margin=fallback_margin,
        image_cache=ImageFeatureCache(int(image_cache_mb * 2**20)),
    )
    predictor.prefix_cache = PrefixKVCache.for_prompters(
        int(prefix_cache_mb * 2**20), predictor.loaded.processor, [predictor.prompter]
    )
    predictions = predictor.predict(images, questions, choices, contexts)
    ids = [r.id for r in records] if records is not None else [None]
    for record_id, prediction in zip(ids, predictions, strict=True):
        line = (
            prediction.to_json() if record_id is None else {"id": record_id, **prediction.to_json()}
        )
        print(json.dumps(line))


def _classifier_names(values: list[str]) -> dict[str, str]:
    """``--classifier [NAME=]DIR`` values: name -> directory (the name defaults to DIR)."""
    named: dict[str, str] = {}
    for value in values:
        name, _, directory = value.partition("=") if "=" in value else (value, "", value)
        if not name or not directory:
            raise typer.BadParameter(f"{value!r}: give DIR or NAME=DIR", param_hint="--classifier")
        if name in named:
            raise typer.BadParameter(f"the name {name!r} is given twice", param_hint="--classifier")
        named[name] = directory
    return named


@app.command()
def serve(
    classifier: list[str] = typer.Option(
        ..., help="[NAME=]DIR: a classifier served as model NAME (default: DIR); repeatable."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    max_batch_size: int = typer.Option(32, min=1, help="Questions per forward at most."),
    max_wait_ms: float = typer.Option(
        5.0, min=0.0, help="How long a request waits for others to share its forward."
    ),
    max_queue: int = typer.Option(256, min=1, help="Questions waiting at most; then 503."),
    request_timeout: float = typer.Option(60.0, min=0.001, help="Seconds before a 504."),
    batch_timeout: float = typer.Option(
        300.0, min=0.001, help="Seconds a batch may take before the model is taken for hung."
    ),
    fallback_margin: float = typer.Option(
        None, min=0.0, max=0.5, help="Cascade: the full model answers when |score - 0.5| < this."
    ),
    max_body_mb: float = typer.Option(20.0, min=0.001, help="Largest request body (MiB)."),
    max_pixels: int = typer.Option(4096 * 4096, min=1, help="Largest image (pixels)."),
    max_request_pixels: int = typer.Option(
        2**27, min=1, help="Most pixels of all a request's images together (then 413)."
    ),
    allow_files: Path = typer.Option(
        None, help="Accept file:// image URLs under this directory (default: data: URLs only)."
    ),
    full_model: str = typer.Option(
        None, help="Also serve the model's own greedy answer under this name (for comparison)."
    ),
    image_cache_mb: float = IMAGE_CACHE_MB,
    prefix_cache_mb: float = PREFIX_CACHE_MB,
    model: str = typer.Option(None, help="Default: the model the classifiers were fitted on."),
    dtype: str = DTYPE,
    device: str = typer.Option("auto", callback=_device, help="cpu, cuda or auto."),
) -> None:
    """Serve early-exit answers over HTTP: OpenAI Chat Completions, /classify, /v1/models,
    /health, /metrics (docs/serve.md). SIGTERM finishes the requests in flight, then exits."""
    import socket

    from superneurons.errors import ConfigError

    named = _classifier_names(classifier)
    for name, directory in named.items():
        if not Path(directory).is_dir():
            shown = directory if name == directory else f"{name}={directory}"
            raise ConfigError(f"--classifier {shown}: no such directory")
    if allow_files is not None and not allow_files.is_dir():
        raise ConfigError(f"--allow-files {allow_files}: no such directory")
    with socket.socket() as probe:  # refused now, before the model loads
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"--host {host} --port {port}: cannot listen ({error.strerror})"
            ) from None
    from superneurons.serve.app import Settings, create_app, serve_app
    from superneurons.serve.worker import EngineProcess

    engine = EngineProcess(
        batch_timeout_s=batch_timeout, classifiers=named, model=model, dtype=dtype, device=device,
        fallback_margin=fallback_margin, max_batch_size=max_batch_size, full_model=full_model,
        image_cache_bytes=int(image_cache_mb * 2**20),
        prefix_cache_bytes=int(prefix_cache_mb * 2**20),
    )  # fmt: skip
    settings = Settings(
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        request_timeout_s=request_timeout,
        max_body_bytes=int(max_body_mb * 2**20),
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        allow_files=allow_files,
    )
    console.print(
        f"serving {', '.join(engine.models)} ({engine.model_id} on {engine.device}) "
        f"at http://{host}:{port}"
    )
    try:
        serve_app(create_app(engine, settings), host, port)
    finally:
        engine.close()


def _analyses(value: str) -> str:
    from superneurons.analysis import ANALYSES

    unknown = [name for name in _names(value) if name not in ANALYSES]
    if unknown or not _names(value):
        raise typer.BadParameter(f"{value!r}: comma-separated, from {', '.join(ANALYSES)}")
    return value


@app.command()
def analyze(
    run_dir: Path = typer.Argument(..., help="A directory written by `superneurons run`."),
    what: str = typer.Option(
        "layers,alpha,agreement,probe-size,shift,exit,claims",
        callback=_analyses,
        help="Comma-separated analyses (claims computes the others it reads).",
    ),
    markdown: bool = typer.Option(False, help="Also print their tables as Markdown."),
) -> None:
    """The paper's analyses of a finished run, from its stores (no re-extraction), each into
    RUN_DIR/analysis/NAME.json (schemas in docs/analyses.md)."""
    from superneurons import atomic
    from superneurons.analysis import RunData, analyze
    from superneurons.outputs import Claim, check_output_folder

    with Claim(run_dir, "run") as claim:
        check_output_folder(run_dir / "analysis")
        results = analyze(RunData.open(run_dir), _names(what))
        for name, result in results.items():
            atomic.write_json(run_dir / "analysis" / f"{name}.json", result, claim.tmp)
            console.print(f"{name}: {run_dir / 'analysis' / f'{name}.json'}")
    if "claims" in results:
        for row in results["claims"]["claims"]:
            console.print(f"claim {row['claim']} ({row['statement']}): {row['verdict']}")
    if markdown:
        from superneurons.analysis.markdown import markdown as tables

        print(tables(results), end="")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A directory written by `superneurons run`."),
) -> None:
    """One self-contained HTML page of a run (RUN_DIR/report/index.html): every estimator
    against the model, the paper's claims, the analyses' figures, the exit-layer trade-off.
    The analyses are computed (and written to RUN_DIR/analysis/) first."""
    from superneurons import atomic
    from superneurons.analysis import ANALYSES, RunData, analyze
    from superneurons.html_report import build_report, check_reportable
    from superneurons.outputs import Claim

    with Claim(run_dir, "run") as claim:
        check_reportable(run_dir)
        analyses = analyze(RunData.open(run_dir), list(ANALYSES))
        for name, result in analyses.items():
            atomic.write_json(run_dir / "analysis" / f"{name}.json", result, claim.tmp)
        page = build_report(run_dir, analyses).encode("utf-8")
        atomic.write_bytes(run_dir / "report" / "index.html", page, claim.tmp)
    console.print(f"report: {run_dir / 'report' / 'index.html'} ({len(page) / 1e6:.2f} MB)")


def _bench_models(value: str) -> str:
    from superneurons.bench.shapes import SHAPES

    unknown = [m for m in _names(value) if m != "embedded" and m not in SHAPES]
    if unknown or not _names(value):
        raise typer.BadParameter(f"{value!r}: choose from embedded, {', '.join(SHAPES)}")
    return value


def _batch_sizes(value: str) -> str:
    if not all(b.isdigit() and int(b) >= 1 for b in _names(value)) or not _names(value):
        raise typer.BadParameter(f"{value!r}: comma-separated integers >= 1, such as 1,16")
    return value


bench_app = typer.Typer(no_args_is_help=True, help="Speed benchmarks (JSON results).")
app.add_typer(bench_app, name="bench")


@bench_app.command("early-exit")
def bench_early_exit(
    out: Path = typer.Option(Path("runs/bench-early-exit.json"), help="Results JSON."),
    models: str = typer.Option(
        "embedded",
        callback=_bench_models,
        help="Comma-separated: embedded, llava-1.5-7b, qwen3-vl-4b (random weights).",
    ),
    classifier: Path = typer.Option(
        Path("runs/default/classifier"), help="Classifier of the embedded model (from `run`)."
    ),
    batch_sizes: str = typer.Option(
        "1,16", callback=_batch_sizes, help="Comma-separated batch sizes."
    ),
    repeats: int = typer.Option(5, min=1, help="Timed rounds (median reported)."),
    warmup: int = typer.Option(1, min=0, help="Untimed rounds first."),
    device: str = typer.Option("auto", callback=_device, help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Time the full model against early exit at the classifier's layer and at k = 0, 1."""
    from superneurons.bench import rows_table, run_early_exit_bench
    from superneurons.outputs import check_output_file

    check_output_file(out)
    if not (classifier / "classifier.json").is_file():
        console.print(f"no classifier at {classifier}: timing k = 0 and 1 only")
        classifier = None
    result = run_early_exit_bench(
        out,
        _names(models),
        classifier,
        [int(b) for b in _names(batch_sizes)],
        repeats,
        warmup,
        _chosen_device(device),
        log=console.print,
    )
    Console().print(rows_table(result["rows"]))
    console.print(f"results: {out}")


@bench_app.command("cascade")
def bench_cascade(
    classifier: Path = typer.Option(Path("runs/default/classifier"), help="From `run`/`discover`."),
    out: Path = typer.Option(Path("runs/bench-cascade.json"), help="Results JSON."),
    n: int = typer.Option(200, min=2, help="Validation questions (balanced)."),
    seed: int = typer.Option(7, help="Picks the validation scenes."),
) -> None:
    """Accuracy and time of the super-neuron → full-model cascade as its margin varies."""

    from superneurons.bench import scene_set
    from superneurons.bench.cascade import cascade_curve
    from superneurons.outputs import check_output_file, write_output_json
    from superneurons.predictor import SuperNeuronPredictor

    check_output_file(out, [classifier])
    predictor = SuperNeuronPredictor.from_pretrained(classifier)
    images, records = scene_set(n, seed)
    result = cascade_curve(predictor, records, images=images)
    write_output_json(out, {"format": "superneurons-bench-cascade/1", **result}, [classifier])
    for point in result["curve"]:
        console.print(point)
    console.print(f"results: {out}")


@bench_app.command("serve")
def bench_serve(
    classifier: Path = typer.Option(Path("runs/default/classifier"), help="From `run`/`discover`."),
    out: Path = typer.Option(Path("runs/bench-serve.json"), help="Results JSON."),
    requests: int = typer.Option(64, min=1, help="Requests at each concurrency."),
    concurrency: str = typer.Option(
        "1,8,32", callback=_batch_sizes, help="Requests in flight (comma-separated)."
    ),
    max_batch_size: int = typer.Option(32, min=1, help="The server's and the offline batch size."),
    max_wait_ms: float = typer.Option(5.0, min=0.0, help="The server's batching wait."),
    device: str = typer.Option("auto", callback=_device, help="cpu, cuda, cuda:N or auto."),
) -> None:
    """The real server under load (an aiohttp client) against the offline predictor at the
    same batch size and the full model served the same way."""
    from superneurons.bench.serve import bench_serve as measure
    from superneurons.errors import ConfigError
    from superneurons.outputs import check_output_file, write_output_json

    if not classifier.is_dir():
        raise ConfigError(f"--classifier {classifier}: no such directory (run `superneurons run`)")
    check_output_file(out, [classifier])
    levels = tuple(int(c) for c in _names(concurrency))
    result = measure(
        classifier, requests, levels, max_batch_size, max_wait_ms, device=_chosen_device(device)
    )
    write_output_json(out, result, [classifier])
    six = result["six_per_image"]
    for row in [*result["served"], *result["full_model_served"]]:
        console.print(row)
    console.print({"six per image, without cache": six["without_cache"]})
    console.print({"six per image, with cache": six["with_cache"]})
    console.print(
        {"offline": result["offline"], "same batch": result["offline_at_served_batch_size"]}
    )
    console.print(result["ratios"])
    console.print(f"results: {out}")


@bench_app.command("flops")
def bench_flops(
    model: str = typer.Option(None, help=MODEL_HELP),
    out: Path = typer.Option(None, help="Write the split as JSON here."),
) -> None:
    """Prefill FLOPs of one scene question, split into vision side, decoder layers and lm_head."""
    import json

    from superneurons.bench import scene_set
    from superneurons.bench.flops import prefill_flop_split
    from superneurons.capture import prepare_inputs
    from superneurons.data.prompts import Prompter
    from superneurons.models.loading import load_model
    from superneurons.outputs import check_output_file, write_output_json

    if out is not None:
        check_output_file(out)
    loaded = load_model(model, "fp32", "cpu")
    images, records = scene_set(2, seed=0)
    prompter = Prompter.for_model("plain", loaded.architecture)
    prompt = prompter.chat(loaded.processor, records[0].question)
    split = prefill_flop_split(loaded.model, prepare_inputs(loaded.processor, images[:1], [prompt]))
    split = {"model": loaded.model_id, **split}
    if out is not None:
        write_output_json(out, {"format": "superneurons-bench-flops/1", **split})
    print(json.dumps(split))


@bench_app.command("baselines")
def bench_baselines(
    out: Path = typer.Option(Path("runs/bench-baselines.json"), help="Results JSON."),
    shape: str = typer.Option(
        "llava-1.5-7b", callback=_one_of("llava-1.5-7b", "tiny"), help="llava-1.5-7b or tiny."
    ),
    n: int = typer.Option(3000, min=4, help="Samples in the synthetic store."),
    cache: Path = typer.Option(
        Path("runs/bench-stores"), help="Where the synthetic store is built once and kept."
    ),
) -> None:
    """Fit time and peak memory of SAVs and the linear/sparse probes against one streaming
    read of a store of a real model's shape."""
    from superneurons.bench.baselines import run_baselines_bench
    from superneurons.outputs import check_output_file, write_output_json

    check_output_file(out)
    result = run_baselines_bench(cache, shape, n, log=console.print)
    write_output_json(out, result)
    console.print(f"results: {out}")


@bench_app.command("extract")
def bench_extract(
    out: Path = typer.Option(Path("runs/bench-extract.json"), help="Results JSON."),
    n: int = typer.Option(256, min=1, help="Scene questions extracted."),
    batch_size: int = typer.Option(16, min=1, help="Samples per batch (run's default)."),
    max_new_tokens: int = typer.Option(128, min=1, help="Greedy answer budget (run's default)."),
    seed: int = typer.Option(5, help="Picks the scenes."),
    repeats: int = typer.Option(3, min=1, help="Interleaved rounds (median reported)."),
    device: str = typer.Option("auto", callback=_device, help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Extraction's samples/s on the embedded default, its time per phase (decode, preprocess,
    model, store) and plain generate on the same batches preprocessed."""
    from superneurons.bench.extract import run_extract_bench
    from superneurons.outputs import check_output_file, write_output_json

    check_output_file(out)
    result = run_extract_bench(
        n, batch_size, max_new_tokens, seed, repeats, _chosen_device(device), log=console.print
    )
    write_output_json(out, result)
    console.print(result["phase_shares"])
    console.print(
        f"results: {out} (extraction at {result['extract_vs_generate']}x generate's rate)"
    )


@bench_app.command("discover")
def bench_discover(
    out: Path = typer.Option(Path("runs/bench-discover.json"), help="Results JSON."),
    shape: str = typer.Option(
        "llava-1.5-7b",
        callback=_one_of("llava-1.5-7b", "qwen3-vl-32b", "tiny"),
        help="llava-1.5-7b, qwen3-vl-32b or tiny.",
    ),
    n: int = typer.Option(3000, min=4, help="Samples in the synthetic store."),
    cache: Path = typer.Option(
        Path("runs/bench-stores"), help="Where the synthetic store is built once and kept."
    ),
) -> None:
    """Super-neuron discovery (fit) time and peak memory against one streaming read of a store
    of a real model's shape."""
    from superneurons.bench.baselines import run_discover_bench
    from superneurons.outputs import check_output_file, write_output_json

    check_output_file(out)
    result = run_discover_bench(cache, shape, n, log=console.print)
    write_output_json(out, result)
    console.print(f"results: {out} ({result['fit']['x_read']}x one read of the store)")


@bench_app.command("analyze")
def bench_analyze(
    out: Path = typer.Option(Path("runs/bench-analyze.json"), help="Results JSON."),
    shape: str = typer.Option(
        "llava-1.5-7b", callback=_one_of("llava-1.5-7b", "tiny"), help="llava-1.5-7b or tiny."
    ),
    n: int = typer.Option(3000, min=4, help="Samples in the synthetic probing store."),
    n_val: int = typer.Option(1000, min=4, help="Samples in the synthetic validation store."),
    cache: Path = typer.Option(
        Path("runs/bench-stores"), help="Where the synthetic run is built once and kept."
    ),
) -> None:
    """Every analysis of a run of a real model's shape, timed against one streaming read of
    its probing store."""
    from superneurons.bench.analyze import run_analyze_bench
    from superneurons.outputs import check_output_file, write_output_json

    check_output_file(out)
    result = run_analyze_bench(cache, shape, n, n_val, log=console.print)
    write_output_json(out, result)
    console.print(f"results: {out} ({result['x_read']}× one read of the probing store)")


@bench_app.command("image-reuse")
def bench_image_reuse(
    out: Path = typer.Option(Path("runs/bench-image-reuse.json"), help="Results JSON."),
    shape: str = typer.Option(
        "llava-1.5-7b",
        callback=_one_of("llava-1.5-7b", "qwen3-vl-4b"),
        help="llava-1.5-7b or qwen3-vl-4b (random weights).",
    ),
    exit_layer: int = typer.Option(1, min=0, help="The early exit's layer k."),
    questions: int = typer.Option(6, min=2, help="Questions per image (POPE asks six)."),
    repeats: int = typer.Option(3, min=1, help="Timed rounds (median reported)."),
    device: str = typer.Option("auto", callback=_device, help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Many questions about one image at batch 1: plain early exit against the image-feature
    cache and the prefix KV cache, side by side in one process."""
    from superneurons.bench.image_reuse import run_image_reuse_bench
    from superneurons.bench.shapes import DEPTHS
    from superneurons.errors import ConfigError
    from superneurons.outputs import check_output_file, write_output_json

    if exit_layer >= DEPTHS[shape]:
        raise ConfigError(
            f"--exit-layer {exit_layer}: {shape} has {DEPTHS[shape]} layers "
            f"(0..{DEPTHS[shape] - 1})"
        )
    check_output_file(out)
    result = run_image_reuse_bench(
        shape, exit_layer, questions, repeats, device=_chosen_device(device), log=console.print
    )
    write_output_json(out, result)
    speedups = ", ".join(f"{r['variant']} {r['speedup_over_plain']:.2f}x" for r in result["rows"])
    console.print(f"results: {out} ({speedups})")


data_app = typer.Typer(no_args_is_help=True, help="Datasets: inspect what a task loads.")
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    task: str = typer.Option(..., callback=_task, help="Task name, see docs/datasets.md."),
    data_dir: Path = typer.Option(
        None, help="The dataset's directory (or .jsonl file); scenes: generated in a temporary one."
    ),
    split: str = typer.Option("val"),
    n: int = typer.Option(None, min=2, help="A balanced sample of this size (default: all)."),
    seed: int = typer.Option(0),
) -> None:
    """Print the number of questions per label as JSON."""
    import json
    import tempfile

    from superneurons.data.loaders import label_counts, load_task, select
    from superneurons.data.loaders import task as task_spec
    from superneurons.errors import ConfigError

    spec = task_spec(task)
    if data_dir is None and not spec.generated:
        raise ConfigError(f"--task {task} needs --data-dir (see docs/datasets.md)")
    with tempfile.TemporaryDirectory(prefix="superneurons-scenes-") as scratch:
        folder = data_dir or Path(scratch)
        if n is None:
            records = load_task(task, folder, split, seed)
        else:
            records = select(task, folder, split, n, seed)
    print(
        json.dumps(
            {"task": task, "split": split, "n": len(records), "labels": label_counts(records)}
        )
    )


def _fail(lines: list[str]) -> None:
    prefix = ""
    if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):  # under a launcher
        from superneurons.distributed import error_prefix

        prefix = error_prefix()  # None: rank 0 reports this same error
    # Plain writes: one line per problem, never wrapped (rich would wrap at 80 columns in a log).
    for line in lines if prefix is not None else []:
        sys.stderr.write(f"error: {prefix}{line}\n")
    raise SystemExit(USER_ERROR_EXIT)


def main(
    argv: list[str] | None = None, app: typer.Typer = app, prog_name: str = "superneurons"
) -> None:
    """Console entry point: user errors become one line each on stderr, exit status 2.

    ``SUPERNEURONS_DEBUG=1`` shows their tracebacks too. ``app`` may be another typer app
    (the training tool's) that wants the same handling.
    """
    from superneurons.errors import SuperneuronsError

    debug = bool(os.environ.get("SUPERNEURONS_DEBUG"))
    try:
        code = app(args=argv, prog_name=prog_name, standalone_mode=False)
    except typer.TyperException as error:  # click's usage errors: unknown option, bad value
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
            print(context.get_help())
            raise SystemExit(0) from None
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        _fail([f"{error.format_message()}{hint}"])
    except typer.Abort:
        sys.stderr.write("aborted\n")
        raise SystemExit(130) from None
    except SuperneuronsError as error:
        if debug:
            raise
        _fail(error.problems)
    except OSError as error:
        if error.filename is None or debug:
            raise
        _fail([f"{error.filename}: {error.strerror or error}"])
    raise SystemExit(code or 0)
