"""The paper's claims, each with the numbers measured on this run, the rule that decides it,
and the verdict: "shown", "not shown", "refuted" or "not measured"."""

from __future__ import annotations

from superneurons.analysis.run_data import RunData

FORMAT = "superneurons-analysis-claims/1"
SIGNIFICANCE = 0.05

RULES = {
    1: "shown when the SNs' validation accuracy exceeds the model's with McNemar p < 0.05; "
    "refuted when the model's exceeds theirs with p < 0.05; not shown otherwise",
    2: "shown when the best single neuron of layer 0 or 1 reaches the model's validation "
    "accuracy; not shown otherwise",
    3: "shown when Spearman's rho of AR@t with t is below -0.5; refuted above +0.5; not shown "
    "otherwise",
    4: "shown when, on every site whose scale the alpha grid covers (no note in alpha.json), the "
    "SNs of that site alone have their best validation accuracy at |alpha| <= 0.5; not shown "
    "otherwise (or when no site qualifies)",
    5: "shown when the mean validation accuracy at the largest probing size exceeds the "
    "smallest size's by more than their two standard deviations together; refuted when it "
    "falls short of it by as much; not shown otherwise",
    6: "shown when the 95% bootstrap interval of the SNs' accuracy change from the reference "
    "set to the shifted validation set lies above -margin (0.05): they lose at most 5 points; "
    "refuted when it lies wholly below -margin; not shown otherwise; not measured for a run "
    "without a shift (run with --probe-template/--val-template, --probe-task/--val-task or "
    "--probe-families/--val-families)",
}
STATEMENTS = {
    1: "SNs beat the model on validation data",
    2: "good SNs exist in layers 0-1",
    3: "AR@t falls as t rises",
    4: "accuracy peaks near alpha = 0",
    5: "more probing data helps",
    6: "robust to prompt and distribution shift",
}


def claims(
    run: RunData, layers: dict, alpha: dict, agreement: dict, probe_size: dict, shift: dict
) -> dict:
    """One row per claim from the run's results and the other analyses' outputs."""
    entries = run.results["estimators"]
    sn, model = entries["super_neurons"], entries["model"]
    p_value = sn["vs_model"]["p_value"]
    significant = p_value < SIGNIFICANCE
    first = _verdict(
        significant and sn["accuracy"] > model["accuracy"],
        significant and model["accuracy"] > sn["accuracy"],
    )
    early = [row for rows in layers["sites"].values() for row in rows if row["layer"] <= 1]
    best_early = max((row["best_val"] for row in early), default=None)
    second = _verdict(best_early is not None and best_early >= layers["model_val_accuracy"])
    rho = agreement["spearman_rho"]
    third = _verdict(rho is not None and rho < -0.5, rho is not None and rho > 0.5)
    peaks = {s: v["best_alpha"] for s, v in alpha["by_site"].items() if s not in alpha["notes"]}
    fourth = _verdict(bool(peaks) and all(abs(a) <= 0.5 for a in peaks.values()))
    smallest, largest = probe_size["sizes"][0], probe_size["sizes"][-1]
    gain = largest["accuracy"]["mean"] - smallest["accuracy"]["mean"]
    noise = largest["accuracy"]["sd"] + smallest["accuracy"]["sd"]
    fifth = _verdict(gain > noise, gain < -noise)
    if len(probe_size["sizes"]) < 2:
        fifth = "not measured"
    measured = {
        1: {"sn_accuracy": sn["accuracy"], "model_accuracy": model["accuracy"], "p_value": p_value},
        2: {"best_layer_0_1_val": best_early, "model_val_accuracy": layers["model_val_accuracy"]},
        3: {"spearman_rho": rho},
        4: {"best_alpha_by_site": peaks, "left_out": sorted(alpha["notes"])},
        5: {
            "smallest": smallest["size"],
            "largest": largest["size"],
            "accuracy_gain": round(gain, 4),
            "sd_sum": round(noise, 4),
        },
    }
    sixth, measured[6] = shift_claim(shift)
    verdicts = {1: first, 2: second, 3: third, 4: fourth, 5: fifth, 6: sixth}
    return {
        "format": FORMAT,
        "claims": [
            {
                "claim": k,
                "statement": STATEMENTS[k],
                "measured": measured[k],
                "rule": RULES[k],
                "verdict": verdicts[k],
            }
            for k in STATEMENTS
        ],
    }


def shift_claim(shift: dict) -> tuple[str, dict]:
    """Claim 6's verdict and numbers from the shift analysis (rule 6)."""
    if not shift["shifted"]:
        return "not measured", {}
    change = shift["change"]
    low, high = change["super_neurons"]["ci95"]
    return _verdict(low > -shift["margin"], high < -shift["margin"]), {
        "sn_accuracy_change": change["super_neurons"]["accuracy_change"],
        "sn_change_ci95": [low, high],
        "model_accuracy_change": change["model"]["accuracy_change"],
        "margin": shift["margin"],
    }


def _verdict(shown: bool, refuted: bool = False) -> str:
    return "shown" if shown else "refuted" if refuted else "not shown"
