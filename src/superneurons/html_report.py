"""``superneurons report RUN_DIR``: one self-contained HTML page of a run — its results, every
estimator against the model with the confusion matrices, the paper's claims, the analyses'
figures (inline SVG), the shift, the exit-layer trade-off, the early-exit benchmark when the run
holds one, and the top super neurons with their activation histograms and the validation
examples that drive them most and least (thumbnails as PNG data URIs). No network, no external
CSS or script; jinja2 renders it."""

from __future__ import annotations

import base64
import io
import json
import shlex
from dataclasses import fields
from pathlib import Path

import jinja2
import numpy as np

import superneurons
from superneurons.analysis import ANALYSES, RunData, analyze
from superneurons.errors import DataError, OutputError
from superneurons.outputs import check_output_folder
from superneurons.report import measured_text, p_text, pct

TEMPLATE = "report.html.j2"
TOP_NEURONS = 6  # super neurons shown with their histograms and examples
EXAMPLES = 3  # validation examples shown per neuron at each end
THUMBNAIL = 112  # pixels, the longer side
BENCH_FORMAT = "superneurons-bench-early-exit/1"


def check_reportable(run_dir: Path) -> None:
    """Refuse, before any analysis runs, a run the report cannot be written for."""
    if not (run_dir / "predictions.jsonl").is_file():
        raise DataError(f"{run_dir}: no predictions.jsonl; report a directory written by `run`")
    for folder in ("analysis", "report"):
        check_output_folder(run_dir / folder)
    page = run_dir / "report" / "index.html"
    if page.is_dir():
        raise OutputError(f"{page} is a directory, where the report writes its page; move it away")


def confusion_matrices(run: RunData) -> dict[str, dict[str, int]]:
    """Per estimator of ``predictions.jsonl``: questions by (label, answer), and how many
    answers could not be read as yes or no (the model's, now and then)."""
    with (run.path / "predictions.jsonl").open(encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    names = [k for k in rows[0] if k not in ("id", "label", "family")] if rows else []
    matrices = {}
    for name in names:
        counts = {"tp": 0, "fn": 0, "fp": 0, "tn": 0, "unparsed": 0}
        for row in rows:
            answer = row[name]
            if answer not in ("yes", "no"):
                counts["unparsed"] += 1
            else:
                key = {("yes", "yes"): "tp", ("yes", "no"): "fn", ("no", "yes"): "fp"}
                counts[key.get((row["label"], answer), "tn")] += 1
        matrices[name] = counts
    return matrices


def validation_records(run: RunData) -> dict:
    """The run's validation records by id, drawn again as the run drew them; empty when its
    data are no longer where the run read them (the report then shows no thumbnails)."""
    from superneurons.errors import SuperneuronsError
    from superneurons.pipeline import RunConfig, task_records

    config = run.results.get("config")
    if not config:  # not written by `run` (a benchmark's synthetic run): no records to draw
        return {}
    try:
        known = {f.name for f in fields(RunConfig)}
        settings = RunConfig(**{k: v for k, v in config.items() if k in known})
        records = task_records(settings, run.path).val
    except (SuperneuronsError, OSError, TypeError):
        return {}
    return {r.id: r for r in records}


def thumbnail(record) -> str | None:
    """A record's image downscaled, as a PNG data URI (None when it cannot be read)."""
    from superneurons.errors import SuperneuronsError

    try:
        image = record.load_image()
    except (SuperneuronsError, OSError):
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def neuron_cards(run: RunData, top: int = TOP_NEURONS, examples: int = EXAMPLES) -> list[dict]:
    """For the ``top`` super neurons: their validation activations' histogram by label (α
    marked) and the ``examples`` validation questions that activate them most and least."""
    from superneurons import figures
    from superneurons.classifiers.super_neurons import neuron_values

    neurons = run.classifier.selected_[:top]
    values = neuron_values(run.val, [(n.site, n.layer, n.index) for n in neurons])
    labels = run.val_split.labels
    records = validation_records(run)
    stored = run.val.records

    def example(row: int, column: int) -> dict:
        entry = stored[row]
        record = records.get(entry["id"])
        return {
            "value": float(values[row, column]),
            "question": record.question if record else entry["id"],
            "label": entry["label"],
            "answer": entry.get("parsed") or "unreadable",
            "image": thumbnail(record) if record else None,
        }

    cards = []
    for column, neuron in enumerate(neurons):
        order = np.argsort(-values[:, column], kind="stable")
        title = f"{neuron.site} layer {neuron.layer} #{neuron.index}"
        cards.append(
            {
                "neuron": neuron,
                "histogram": figures.activation_histogram(
                    values[:, column], labels, run.classifier.alpha, title
                ),
                "most": [example(int(i), column) for i in order[:examples]],
                "least": [example(int(i), column) for i in order[::-1][:examples]],
            }
        )
    return cards


def bench_rows(run_dir: Path) -> list[dict]:
    """The rows of every early-exit benchmark saved under ``RUN_DIR/bench/`` (``superneurons
    bench early-exit --out RUN_DIR/bench/early-exit.json``)."""
    rows = []
    for path in sorted((run_dir / "bench").glob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and document.get("format") == BENCH_FORMAT:
            rows += document["rows"]
    return rows


def reproduce_command(run: RunData) -> str:
    """The ``superneurons run`` command that reproduces ``run`` (the options that differ from
    the defaults)."""
    from superneurons.pipeline import RunConfig

    config = run.results.get("config") or {}
    defaults = {f.name: f.default for f in fields(RunConfig)}
    parts = ["superneurons", "run", "--out", str(run.path)]
    for name, value in config.items():
        default = defaults.get(name)
        if isinstance(default, tuple):
            default = list(default)
        if name not in defaults or value == default or value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value) or "none"  # --baselines none
        parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(parts)  # quoted as a shell reads it back (a --template-text has spaces)


def build_report(run_dir: str | Path, analyses: dict[str, dict] | None = None) -> str:
    """The report's HTML (``analyses``: the analyses' results by name; computed when None)."""
    from superneurons import figures

    run = RunData.open(run_dir)
    analyses = analyses if analyses is not None else analyze(run, list(ANALYSES))
    shown = [
        ("Best single neuron (solid) and the run's linear probe on that layer alone (dotted), "
         "validation accuracy; dashed: the model.", figures.layers_figure(analyses["layers"])),
        ("Each site's super neurons over the binarisation threshold α.",
         figures.alpha_figure(analyses["alpha"])),
        ("The SNs' accuracy and their agreement rate with the model as t falls.",
         figures.agreement_figure(analyses["agreement"])),
        ("Super neurons fitted on smaller probing sets (mean ± sd of 10 subsets).",
         figures.probe_size_figure(analyses["probe-size"])),
    ]  # fmt: skip
    if analyses["shift"]["shifted"]:
        shown.append(
            ("Validation accuracy on questions asked as the probing set was, and shifted.",
             figures.shift_figure(analyses["shift"]))
        )  # fmt: skip
    if run.results.get("exit_tradeoff"):
        shown.append(
            ("Accuracy against the measured early-exit speedup; the line joins the Pareto front.",
             figures.tradeoff_figure(run.results["exit_tradeoff"]))
        )  # fmt: skip
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("superneurons", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return environment.get_template(TEMPLATE).render(
        results=run.results,
        analyses=analyses,
        figures=shown,
        confusion=confusion_matrices(run),
        neurons=neuron_cards(run),
        bench=bench_rows(run.path),
        command=reproduce_command(run),
        version=superneurons.__version__,
        pct=pct,
        p=p_text,
        measured=measured_text,
    )
