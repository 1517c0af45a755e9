"""Accuracy against the exit layer, with the measured speed-up: the run's exit-layer trade-off
(``results.json``'s ``exit_tradeoff``, refitted and timed by ``superneurons run``) arranged per
estimator, its Pareto front, and the fastest exit within a point of the model."""

from __future__ import annotations

from superneurons.analysis.run_data import RunData

FORMAT = "superneurons-analysis-exit/1"
WITHIN = 0.01  # "as accurate as the model": at most this far below its accuracy


def early_exit(run: RunData) -> dict:
    """Per estimator the rows (k, exit layer, accuracy and its CI, speed-up) by k; the Pareto
    front over every row; and per estimator the fastest row whose accuracy is within
    :data:`WITHIN` of the model's. A run made with ``--exit-layers none`` has no rows."""
    rows = run.results.get("exit_tradeoff") or []
    document = {"format": FORMAT, "measured": bool(rows), "within": WITHIN}
    if not rows:
        return {**document, "estimators": {}, "pareto": [], "fastest_within": {}}
    model = next((r for r in rows if r["estimator"] == "model"), None)
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["estimator"], []).append(
            {key: r[key] for key in ("k", "exit_layer", "accuracy", "ci95", "speedup")}
        )
    fastest = {}
    if model is not None:
        for name, entries in by_name.items():
            close = [e for e in entries if e["speedup"] is not None
                     and e["accuracy"] >= model["accuracy"] - WITHIN]  # fmt: skip
            fastest[name] = max(close, key=lambda e: (e["speedup"], e["accuracy"]), default=None)
    front = [
        {key: r[key] for key in ("estimator", "k", "exit_layer", "accuracy", "speedup")}
        for r in sorted(rows, key=lambda r: -(r["speedup"] or 0))
        if r["pareto"]
    ]
    return {
        **document,
        "model_accuracy": None if model is None else model["accuracy"],
        "estimators": {name: sorted(e, key=lambda e: e["k"]) for name, e in by_name.items()},
        "pareto": front,
        "fastest_within": fastest,
    }
