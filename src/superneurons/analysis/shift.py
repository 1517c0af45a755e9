"""Prompt and dataset shift: super neurons fitted under one condition (task, template,
families) and validated under another, against the same SNs on validation questions asked as
the probing set was (the run's reference set), with the model beside them."""

from __future__ import annotations

from superneurons.analysis.run_data import RunData
from superneurons.classifiers import ModelAnswers, Split
from superneurons.metrics import binary_metrics
from superneurons.significance import compare, paired_bootstrap_diff, unpaired_bootstrap_diff

FORMAT = "superneurons-analysis-shift/1"
MARGIN = 0.05  # the accuracy a shift may cost the SNs and still count as robust (claim 6)


def shift(run: RunData, n_boot: int = 1000, seed: int = 0) -> dict:
    """For a shifted run: the SNs' and the model's validation metrics without the shift (the
    reference set) and with it, each side's McNemar test of SNs against the model, and each
    answerer's accuracy change with its 95 % bootstrap interval (paired when both sets hold the
    same questions, as under a prompt shift alone). An unshifted run says so and nothing more."""
    document = {"format": FORMAT, "shifted": bool(run.results.get("shifted"))}
    document["sets"] = run.results.get("sets")
    if not document["shifted"]:
        return document
    if run.reference is None:
        raise ValueError(f"{run.path}: a shifted run without its reference store")
    sides, correct = {}, {}
    for name, store in (("reference", run.reference), ("under_shift", run.val)):
        split = Split.from_store(store)
        predictions = {
            "super_neurons": run.classifier.predict(split),
            "model": ModelAnswers().predict(split),
        }
        right = {answerer: p == split.labels for answerer, p in predictions.items()}
        sides[name] = {
            "n": store.n,
            **{
                answerer: {m: round(v, 4) for m, v in binary_metrics(p, split.labels).items()}
                for answerer, p in predictions.items()
            },
            "sn_vs_model": compare(right["super_neurons"], right["model"], n_boot, seed),
        }
        correct[name] = right
    paired = run.reference.ids == run.val.ids
    change = {}
    for answerer in ("super_neurons", "model"):
        after, before = correct["under_shift"][answerer], correct["reference"][answerer]
        interval = (paired_bootstrap_diff if paired else unpaired_bootstrap_diff)(
            after, before, n_boot, seed
        )
        change[answerer] = {
            "accuracy_change": round(float(after.mean() - before.mean()), 4),
            "ci95": [round(v, 4) for v in interval],
        }
    return {**document, "paired": paired, **sides, "change": change, "margin": MARGIN}
