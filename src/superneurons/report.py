"""Readable terminal tables of a run's results (``results.json``, schema in evaluate.py)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def pct(value: float | None) -> str:
    """A rate as a percentage with one decimal ("–" when undefined)."""
    return "–" if value is None else f"{100 * value:.1f}"


def measured_text(values: dict) -> str:
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


def _interval(entry: dict) -> str:
    ci = entry["ci95"]
    low, high = ci["accuracy"] if isinstance(ci, dict) else ci
    return f"{pct(entry['accuracy'])} [{pct(low)}, {pct(high)}]"


# Short column heads for the per-family table (results names elsewhere); others as they are.
SHORT_NAMES = {
    "super_neurons": "SN",
    "savs": "SAVs",
    "linear_probe": "linear",
    "sparse_probe": "sparse",
    "question_only": "blind",
}


def p_text(value: float) -> str:
    """A p-value, three significant digits (scientific below 1e-4)."""
    return f"{value:.3g}" if value >= 1e-4 else f"{value:.1e}"


def _versus(entry: dict) -> list[str]:
    paired = entry.get("vs_model")
    if paired is None:
        return ["", "", ""]
    low, high = paired["diff_ci95"]
    return [f"{paired['b']}/{paired['c']}", p_text(paired["p_value"]), f"[{pct(low)}, {pct(high)}]"]


def results_table(results: dict) -> Table:
    """Every estimator: exit layer, accuracy [95 % CI], F1 and the paired test against the
    model (b/c: questions only it / only the model gets right; McNemar's p; Δ accuracy CI)."""
    title = f"{results['model']} on {results['dataset']} ({results['n_val']} questions)"
    table = Table(title=title)
    columns = ["estimator", "exit", "acc [95% CI]", "F1", "b/c", "p", "Δacc [95% CI]"]
    for column in columns:
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for name, entry in results["estimators"].items():
        layer = entry.get("exit_layer")
        cells = [name, "–" if layer is None else str(layer), _interval(entry), pct(entry["f1"])]
        table.add_row(*cells, *_versus(entry))
    return table


def family_table(results: dict) -> Table:
    """Accuracy of every estimator per question family, and the agreement rate."""
    names = list(results["estimators"])
    agreement = "agreement_rate" in results
    table = Table(title="per family: accuracy (p against the model)")
    heads = [SHORT_NAMES.get(name, name) for name in names]
    for column in ["family", "n", *heads, *(["AR"] if agreement else [])]:
        table.add_column(column, justify="left" if column == "family" else "right")
    for family, block in results["per_family"].items():
        cells = [family, str(block["n"])]
        for name in names:
            entry = results["estimators"][name]["per_family"][family]
            paired = entry.get("vs_model")
            cells.append(
                pct(entry["accuracy"]) + (f" ({p_text(paired['p_value'])})" if paired else "")
            )
        if agreement:
            cells.append(pct(block.get("agreement_rate")))
        table.add_row(*cells)
    return table


def tradeoff_table(rows: list[dict]) -> Table:
    """The exit-layer trade-off: accuracy and measured speedup per exit layer (* Pareto)."""
    table = Table(title="exit-layer trade-off (* on the accuracy/speedup Pareto front)")
    for column in ("k", "estimator", "exit", "acc [95% CI]", "speedup", ""):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for row in rows:
        speedup = row.get("speedup")
        table.add_row(
            str(row["k"]),
            row["estimator"],
            "–" if row["exit_layer"] is None else str(row["exit_layer"]),
            _interval(row),
            "–" if speedup is None else f"{speedup:.2f}×",
            "*" if row.get("pareto") else "",
        )
    return table


def print_results(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(results))
    if len(results["per_family"]) > 1:
        console.print(family_table(results))
    if results.get("exit_tradeoff"):
        console.print(tradeoff_table(results["exit_tradeoff"]))
    if "selected" in results:
        console.print(
            f"{len(results['selected'])} super neurons (t = {results['threshold']}, "
            f"{results['metric']}, α = {results['alpha']}); agreement rate with the model: "
            f"{pct(results.get('agreement_rate'))} %"
        )
    if results.get("sn_layers"):
        layers = ", ".join(f"{layer}: {count}" for layer, count in results["sn_layers"].items())
        console.print(f"super neurons per layer: {layers}")
    if results.get("model_unparseable"):
        console.print(f"unparseable model answers: {results['model_unparseable']} (counted wrong)")


def print_seeds(summary: dict, console: Console | None = None) -> None:
    """Mean ± sd over the seeds of every estimator, and the pooled test against the model."""
    console = console or Console()
    seeds = ", ".join(str(seed) for seed in summary["seeds"])
    table = Table(title=f"{summary['model']} on {summary['dataset']}, seeds {seeds}")
    for column in ("estimator", "acc mean ± sd", "F1 mean ± sd", "pooled b/c", "pooled p"):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for name, entry in summary["estimators"].items():
        acc, f1 = entry["accuracy"], entry["f1"]
        paired = entry.get("pooled_vs_model")
        table.add_row(
            name,
            f"{pct(acc['mean'])} ± {pct(acc['sd'])}",
            f"{pct(f1['mean'])} ± {pct(f1['sd'])}",
            f"{paired['b']}/{paired['c']}" if paired else "",
            p_text(paired["p_value"]) if paired else "",
        )
    console.print(table)
