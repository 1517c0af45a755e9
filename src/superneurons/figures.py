"""The report's figures: matplotlib (Agg) drawings of the analyses, as inline SVG text.

Each function takes the analyses' JSON (docs/analyses.md) and returns one ``<svg>`` element;
the same input gives the same bytes (fixed ids, no timestamp).
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

plt.rcParams.update({"svg.hashsalt": "superneurons", "figure.dpi": 96, "font.size": 9})
_SIZE = (5.2, 3.0)


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _finished(figure, axes, **labels) -> str:
    """Label the axes, add the legend, and return the figure's SVG."""
    axes.set(**labels)
    axes.legend(fontsize=7)
    return _svg(figure)


def _model_line(axes, accuracy: float | None) -> None:
    if accuracy is not None:
        axes.axhline(100 * accuracy, color="grey", linestyle="--", linewidth=1, label="model")


def layers_figure(layers: dict) -> str:
    """Best single neuron and a linear probe, validation accuracy per layer and site."""
    figure, axes = plt.subplots(figsize=_SIZE)
    for site, rows in layers["sites"].items():
        x = [r["layer"] for r in rows]
        (line,) = axes.plot(
            x, [100 * r["best_val"] for r in rows], marker="o", label=f"{site} neuron"
        )
        axes.plot(
            x,
            [100 * r["linear_probe_val"] for r in rows],
            linestyle=":",
            color=line.get_color(),
            label=f"{site} linear",
        )
    _model_line(axes, layers["model_val_accuracy"])
    axes.set(xlabel="layer", ylabel="validation accuracy (%)", title="Where the answer is read")
    axes.legend(fontsize=7, ncol=2)
    return _svg(figure)


def alpha_figure(alpha: dict) -> str:
    """Validation accuracy of each site's super neurons over the α grid."""
    figure, axes = plt.subplots(figsize=_SIZE)
    for site, block in alpha["by_site"].items():
        rows = block["grid"]
        axes.plot(
            [r["alpha"] for r in rows],
            [100 * r["sn_val_accuracy"] for r in rows],
            marker="o",
            label=site,
        )
    axes.axvline(0, color="grey", linewidth=0.8)
    return _finished(
        figure,
        axes,
        xlabel="α",
        ylabel="SN validation accuracy (%)",
        title="The binarisation threshold",
    )


def agreement_figure(agreement: dict) -> str:
    """AR@t and the SNs' accuracy as the selection threshold t falls."""
    figure, axes = plt.subplots(figsize=_SIZE)
    rows = agreement["thresholds"]
    t = [r["t"] for r in rows]
    axes.plot(t, [100 * r["accuracy"] for r in rows], marker="o", label="SN accuracy")
    rated = [(r["t"], 100 * r["agreement_rate"]) for r in rows if r["agreement_rate"] is not None]
    axes.plot(*zip(*rated, strict=True), marker="s", label="AR@t")
    _model_line(axes, agreement["model_val_accuracy"])
    axes.invert_xaxis()
    return _finished(
        figure, axes, xlabel="t (selection threshold)", ylabel="%", title="Agreement with the model"
    )


def probe_size_figure(probe_size: dict) -> str:
    """SN validation accuracy (mean ± sd) against the probing-set size."""
    figure, axes = plt.subplots(figsize=_SIZE)
    rows = probe_size["sizes"]
    axes.errorbar(
        [r["size"] for r in rows],
        [100 * r["accuracy"]["mean"] for r in rows],
        yerr=[100 * r["accuracy"]["sd"] for r in rows],
        marker="o",
        capsize=3,
        label="super neurons",
    )
    _model_line(axes, probe_size["model"]["accuracy"])
    axes.set_xscale("log")
    return _finished(
        figure,
        axes,
        xlabel="probing-set size",
        ylabel="validation accuracy (%)",
        title="Probing data",
    )


def tradeoff_figure(rows: list[dict]) -> str:
    """Accuracy against the measured early-exit speedup, the Pareto front joined."""
    figure, axes = plt.subplots(figsize=_SIZE)
    for name in dict.fromkeys(r["estimator"] for r in rows):
        mine = [r for r in rows if r["estimator"] == name and r["speedup"] is not None]
        axes.scatter(
            [r["speedup"] for r in mine], [100 * r["accuracy"] for r in mine], s=18, label=name
        )
    front = sorted((r["speedup"], 100 * r["accuracy"]) for r in rows if r.get("pareto"))
    if front:
        axes.plot(*zip(*front, strict=True), color="black", linewidth=1, label="Pareto front")
    return _finished(
        figure,
        axes,
        xlabel="speedup over the full model (×)",
        ylabel="validation accuracy (%)",
        title="Exit layer: cost and accuracy",
    )
