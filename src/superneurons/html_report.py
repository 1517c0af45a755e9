"""``superneurons report RUN_DIR``: one self-contained HTML page of a run — its results, every
estimator against the model, the paper's claims, the analyses' figures (inline SVG) and the
exit-layer trade-off. No network, no external CSS or script; jinja2 renders it."""

from __future__ import annotations

from pathlib import Path

import jinja2

import superneurons
from superneurons.analysis import ANALYSES, RunData, analyze
from superneurons.report import p_text, pct

TEMPLATE = "report.html.j2"


def _measured(values: dict) -> str:
    """A claim's measured numbers as "name value" pairs (rounded), for people to read."""

    def shown(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return ", ".join(f"{k} {shown(v)}" for k, v in value.items())
        if isinstance(value, list):
            return ", ".join(str(v) for v in value) or "none"
        return str(value)

    return "; ".join(f"{name.replace('_', ' ')}: {shown(v)}" for name, v in values.items()) or "–"


def reproduce_command(run: RunData) -> str:
    """The ``superneurons run`` command that reproduces ``run`` (the options that differ from
    the defaults)."""
    from dataclasses import fields

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
            value = ",".join(str(v) for v in value)
        parts += [f"--{name.replace('_', '-')}", str(value)]
    return " ".join(parts)


def build_report(run_dir: str | Path, analyses: dict[str, dict] | None = None) -> str:
    """The report's HTML (``analyses``: the analyses' results by name; computed when None)."""
    from superneurons import figures

    run = RunData.open(run_dir)
    analyses = analyses if analyses is not None else analyze(run, list(ANALYSES))
    shown = [
        ("Best single neuron (solid) and a logistic regression (dotted) per layer, validation "
         "accuracy; dashed: the model.", figures.layers_figure(analyses["layers"])),
        ("Each site's super neurons over the binarisation threshold α.",
         figures.alpha_figure(analyses["alpha"])),
        ("The SNs' accuracy and their agreement rate with the model as t falls.",
         figures.agreement_figure(analyses["agreement"])),
        ("Super neurons fitted on smaller probing sets (mean ± sd of 10 subsets).",
         figures.probe_size_figure(analyses["probe-size"])),
    ]  # fmt: skip
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
        command=reproduce_command(run),
        version=superneurons.__version__,
        pct=pct,
        p=p_text,
        measured=_measured,
    )
