"""The analyses' JSON as Markdown tables, for notes and docs/results.md
(``superneurons analyze RUN_DIR --markdown``): generated, never retyped."""

from __future__ import annotations

from superneurons.report import measured_text
from superneurons.report import pct as _pct


def _table(head: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def layers_table(layers: dict) -> list[str]:
    sites = list(layers["sites"])
    by_layer: dict[int, dict[str, dict]] = {}
    for site, rows in layers["sites"].items():
        for row in rows:
            by_layer.setdefault(row["layer"], {})[site] = row
    head = ["layer", *(f"{s} {what}" for s in sites for what in ("best neuron", "linear"))]
    rows = [
        [layer, *(_pct(r[site][k]) if site in r else "–"
                  for site in sites for k in ("best_val", "linear_probe_val"))]
        for layer, r in sorted(by_layer.items())
    ]  # fmt: skip
    better = sum(row["n_better_than_model"] for rows in layers["sites"].values() for row in rows)
    return [
        f"**Layers** (Fig. 3b; rule a > {layers['alpha']}, the model's probing accuracy "
        f"{_pct(layers['model_probe_accuracy'])} %, validation "
        f"{_pct(layers['model_val_accuracy'])} %): validation accuracy of the best single neuron "
        "and of the run's linear probe on that layer alone, per site.",
        "",
        *_table(head, rows),
        "",
        f"Neurons whose probing accuracy beats the model's, all layers and sites: {better}.",
    ]


def alpha_table(alpha: dict) -> list[str]:
    grid = [row["alpha"] for row in alpha["grid"]]
    rows = [
        [site, f"{alpha['sites'][site]['std']:.3g}",
         *(_pct(r["sn_val_accuracy"]) for r in block["grid"]), block["best_alpha"]]
        for site, block in alpha["by_site"].items()
    ]  # fmt: skip
    rows.append(["all", "", *(_pct(r["sn_val_accuracy"]) for r in alpha["grid"]),
                 alpha["best_alpha"]])  # fmt: skip
    notes = [f"{site}: {note}." for site, note in alpha["notes"].items()]
    unit = f" (× {alpha['unit']:.3g}, the sites' pooled std)" if alpha["relative"] else ""
    return [
        f"**α** (Fig. 3a{unit}): validation accuracy of each site's SNs alone, and of all "
        "sites together, over the grid.",
        "",
        *_table(["site", "std", *map(str, grid), "best α"], rows),
        *(["", *notes] if notes else []),
    ]


def agreement_table(agreement: dict, every: int = 3) -> list[str]:
    rows = [
        [f"{r['t']:.3f}", r["n_sn"], _pct(r["accuracy"]), _pct(r["agreement_rate"])]
        for r in agreement["thresholds"][::every]
    ]
    rho = agreement["spearman_rho"]
    return [
        f"**Agreement** (Fig. 4; every {every}rd t shown): SNs, their accuracy and AR@t.",
        "",
        *_table(["t", "SNs", "accuracy", "AR@t"], rows),
        "",
        f"Spearman ρ of AR@t with t: {'undefined' if rho is None else f'{rho:+.2f}'}.",
    ]


def probe_size_table(probe_size: dict) -> list[str]:
    def spread(entry: dict) -> str:
        return f"{_pct(entry['mean'])} ± {_pct(entry['sd'])}"

    rows = [[r["size"], r["repeats"], spread(r["accuracy"]), spread(r["f1"])]
            for r in probe_size["sizes"]]  # fmt: skip
    return [
        f"**Probing-set size** (Fig. 5; the model: {_pct(probe_size['model']['accuracy'])} %):",
        "",
        *_table(["size", "repeats", "accuracy", "F1"], rows),
    ]


def shift_table(shift: dict) -> list[str]:
    if not shift["shifted"]:
        return ["**Shift**: this run has none."]
    sets = shift["sets"]
    rows = []
    for side, label in (("reference", "as probed"), ("under_shift", "shifted")):
        entry = shift[side]
        sn, model = entry["super_neurons"]["accuracy"], entry["model"]["accuracy"]
        p_value = f"{entry['sn_vs_model']['p_value']:.3g}"
        rows.append([label, entry["n"], _pct(sn), _pct(model), p_value])

    def change(answerer: str) -> str:
        entry = shift["change"][answerer]
        low, high = entry["ci95"]
        return f"{_pct(entry['accuracy_change'])} [{_pct(low)}, {_pct(high)}]"

    rows.append(["change [95 % CI]", "", change("super_neurons"), change("model"), ""])
    return [
        f"**Shift**: probing set {_condition(sets['probe'])}, validation set "
        f"{_condition(sets['val'])}" + (" (the same questions)" if shift["paired"] else "") + ".",
        "",
        *_table(["", "n", "super neurons", "model", "McNemar p"], rows),
    ]


def _condition(condition: dict) -> str:
    families = ", ".join(condition["families"]) if condition["families"] else "all"
    return f"(task {condition['task']}, template {condition['template']}, families {families})"


def claims_table(claims: dict) -> list[str]:
    rows = [[c["claim"], c["statement"], measured_text(c["measured"]), f"**{c['verdict']}**"]
            for c in claims["claims"]]  # fmt: skip
    return ["**Claims**:", "", *_table(["#", "claim", "measured", "verdict"], rows)]


TABLES = {
    "layers": layers_table,
    "alpha": alpha_table,
    "agreement": agreement_table,
    "probe-size": probe_size_table,
    "shift": shift_table,
    "claims": claims_table,
}


def markdown(analyses: dict[str, dict]) -> str:
    """The tables of the analyses given (by name), in :data:`TABLES` order."""
    parts = ["\n".join(TABLES[name](analyses[name])) for name in TABLES if name in analyses]
    return "\n\n".join(parts) + "\n"
