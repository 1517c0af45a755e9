"""The report's figures: matplotlib (Agg) drawings of the analyses, as inline SVG text.

Each function takes the analyses' JSON (docs/analyses.md) and returns one ``<svg>`` element;
the same input gives the same bytes (fixed ids, no timestamp).
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np

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
        linear = [(r["layer"], 100 * r["linear_probe_val"]) for r in rows
                  if r["linear_probe_val"] is not None]  # fmt: skip
        if linear:  # a run without the linear_probe baseline has none
            axes.plot(*zip(*linear, strict=True), linestyle=":", color=line.get_color(),
                      label=f"{site} linear")  # fmt: skip
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


def shift_figure(shift: dict) -> str:
    """The SNs' and the model's validation accuracy without and with the shift."""
    figure, axes = plt.subplots(figsize=_SIZE)
    sides = [("reference", "as probed"), ("under_shift", "shifted")]
    lowest = 100.0
    for offset, answerer in ((-0.18, "super_neurons"), (0.18, "model")):
        values = [100 * shift[side][answerer]["accuracy"] for side, _ in sides]
        axes.bar([i + offset for i in range(len(sides))], values, width=0.36, label=answerer)
        lowest = min(lowest, *values)
    axes.set_xticks(range(len(sides)), [label for _, label in sides])
    axes.set_ylim(max(0, lowest - 10), 100)
    return _finished(figure, axes, ylabel="validation accuracy (%)", title="Prompt or data shift")


def activation_histogram(values, labels, alpha: float, title: str) -> str:
    """One neuron's validation activations for "yes" and "no" questions, α marked."""
    figure, axes = plt.subplots(figsize=(3.4, 2.2))
    bins = np.histogram_bin_edges(values, bins=30)
    axes.hist(values[labels], bins=bins, alpha=0.6, label="label yes")
    axes.hist(values[~labels], bins=bins, alpha=0.6, label="label no")
    axes.axvline(alpha, color="black", linewidth=1, label="α")
    axes.tick_params(labelsize=7)
    return _finished(figure, axes, xlabel="activation", ylabel="questions", title=title)
