"""A readable terminal table of a run's results."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


# How an estimator's results entry is headed in the table; other names are shown as they are.
DISPLAY_NAMES = {"sn": "SN", "model_answers": "model", "question_only": "question-only"}


def estimator_names(results: dict) -> list[str]:
    """The entries of ``results`` that score an estimator, in their order."""
    return [k for k, v in results.items() if isinstance(v, dict) and "ci95" in v]


def results_table(results: dict) -> Table:
    """Accuracy [95 % CI] and F1 of every estimator in the results, overall and per family,
    and the agreement rate of the super neurons with the model where there is one."""
    title = (
        f"{results['model']} on {results['dataset']}: {len(results['selected'])} super neurons "
        f"(t = {results['threshold']}, {results['metric']}, α = {results['alpha']})"
    )
    table = Table(title=title)
    names = estimator_names(results)
    agreement = "agreement_rate" in results
    columns = ["family", "n"]
    columns += [f"{DISPLAY_NAMES.get(n, n)} acc [95% CI]" for n in names]
    columns += [f"{DISPLAY_NAMES.get(n, n)} F1" for n in names] + (["AR"] if agreement else [])
    for column in columns:
        table.add_column(column, justify="left" if column == "family" else "right")

    def row(family: str, block: dict, n: int) -> None:
        cells = [family, str(n)]
        for name in names:
            low, high = block[name]["ci95"]["accuracy"]
            cells.append(f"{_pct(block[name]['accuracy'])} [{_pct(low)}, {_pct(high)}]")
        cells += [_pct(block[name]["f1"]) for name in names]
        if agreement:
            cells.append(_pct(block["agreement_rate"]))
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
    if results.get("model_unparseable"):
        console.print(f"unparseable model answers: {results['model_unparseable']} (counted wrong)")
