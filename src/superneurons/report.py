"""A readable terminal table of a run's results."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def results_table(results: dict) -> Table:
    """Accuracy and F1 of super neurons and of the model's answers, overall and per family, and
    the question-only baseline's accuracy where the results have it."""
    title = (
        f"{results['model']} on {results['dataset']}: {len(results['selected'])} super neurons "
        f"(t = {results['threshold']}, {results['metric']}, α = {results['alpha']})"
    )
    table = Table(title=title)
    blind = "question_only" in results
    columns = ["family", "n", "SN acc [95% CI]", "model acc [95% CI]", "SN F1", "model F1", "AR"]
    for name in columns + (["question-only acc"] if blind else []):
        table.add_column(name, justify="left" if name == "family" else "right")

    def row(name: str, block: dict, n: int) -> None:
        sn, model = block["sn"], block["model_answers"]
        lo, hi = sn["ci95"]["accuracy"]
        mlo, mhi = model["ci95"]["accuracy"]
        cells = [
            name,
            str(n),
            f"{_pct(sn['accuracy'])} [{_pct(lo)}, {_pct(hi)}]",
            f"{_pct(model['accuracy'])} [{_pct(mlo)}, {_pct(mhi)}]",
            _pct(sn["f1"]),
            _pct(model["f1"]),
            _pct(block["agreement_rate"]),
        ]
        if blind:
            cells.append(_pct(block["question_only"]["accuracy"]))
        table.add_row(*cells)

    row("all", results, results["n_val"])
    for family, block in results["per_family"].items():
        row(family, block, block["n"])
    return table


def print_results(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(results))
    layers = ", ".join(f"{layer}: {count}" for layer, count in results["sn_layers"].items())
    console.print(f"super neurons per layer: {layers}")
    if results["model_unparseable"]:
        console.print(f"unparseable model answers: {results['model_unparseable']} (counted wrong)")
