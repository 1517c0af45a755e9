"""``superneurons bench analyze``: every analysis of a run of a real model's shape, timed against
one streaming read of its probing store, side by side in one process.

The run is synthetic and built once (cached): probing and validation stores from the seeded
writer of ``bench baselines`` with model answers right three times in four, the super neurons
and the linear probe fitted, and ``results.json`` and ``predictions.jsonl`` as ``run`` writes
them — a folder ``superneurons analyze`` and ``report`` take as they take any run.
"""

from __future__ import annotations

import time
from pathlib import Path

from superneurons import atomic
from superneurons.bench.baselines import streaming_read, synthetic_store, timing

FORMAT = "superneurons-bench-analyze/1"


def synthetic_run(folder: Path, shape: str, n_probe: int, n_val: int, log=print) -> Path:
    """A finished run in ``folder`` over synthetic stores of ``shape`` (built once)."""
    from superneurons.classifiers import ModelAnswers, Split, SuperNeuronClassifier
    from superneurons.classifiers.artifact import save_classifier
    from superneurons.classifiers.probes import LinearProbeClassifier
    from superneurons.evaluate import MODEL, SN, build_results, prediction_lines, predictions
    from superneurons.outputs import Claim

    if (folder / "results.json").is_file():
        return folder
    with Claim(folder, "run", []) as claim:
        stores = {
            part: synthetic_store(folder / "activations" / part, shape, n, seed, answers=True)
            for part, n, seed in (("probe", n_probe, 0), ("val", n_val, 1))
        }
        probe = Split.from_store(stores["probe"])
        started = time.perf_counter()
        fitted = {SN: SuperNeuronClassifier().fit(probe, probe.labels), MODEL: ModelAnswers()}
        log(f"super neurons fitted in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        fitted["linear_probe"] = LinearProbeClassifier().fit(probe, probe.labels)
        log(f"linear probe fitted in {time.perf_counter() - started:.1f} s")
        meta = stores["probe"].meta
        save_classifier(folder / "classifier", fitted[SN], meta)
        save_classifier(folder / "baselines" / "linear_probe", fitted["linear_probe"], meta)
        val = Split.from_store(stores["val"])
        answers = predictions(fitted, val)
        lines = prediction_lines(answers, stores["val"])
        atomic.write_bytes(folder / "predictions.jsonl", lines, claim.tmp)
        results = build_results(
            fitted,
            stores["val"],
            meta,
            f"synthetic {shape}",
            answers=answers,
            n_probe=n_probe,
            shifted=False,
        ).to_json()
        atomic.write_json(folder / "results.json", results, claim.tmp)
    return folder


def run_analyze_bench(cache: Path, shape: str, n: int, n_val: int, log=print) -> dict:
    """Seconds and peak memory of each analysis, against one streaming read of the probing
    store (and of the validation store, which the analyses read too)."""
    from superneurons.analysis import ANALYSES, CLAIMS_READ, RunData, claims

    run = RunData.open(synthetic_run(cache / f"run-{shape}-{n}-{n_val}", shape, n, n_val, log))
    streaming_read(run.probe)  # the page cache warm, as for every analysis after it
    read = streaming_read(run.probe)
    read_val = streaming_read(run.val)
    log(f"one streaming read: probing store {read:.2f} s, validation store {read_val:.2f} s")
    slab = n * max(width for _, width in run.probe.sites.values()) * 4
    done: dict[str, dict] = {}
    rows = []
    for name, analysis in ANALYSES.items():

        def call(name=name, analysis=analysis) -> None:
            if name == "claims":
                done[name] = claims(run, *(done[n] for n in CLAIMS_READ))
            else:
                done[name] = analysis(run)

        rows.append({"analysis": name, **timing(call, read, slab)})
        log(rows[-1])
    total = sum(row["seconds"] for row in rows)
    return {
        "format": FORMAT,
        "shape": shape,
        "n": n,
        "n_val": n_val,
        "store_gb": round(sum(p.stat().st_size for p in run.probe.path.glob("*.npy")) / 1e9, 2),
        "read_s": round(read, 6),
        "read_val_s": round(read_val, 6),
        "slab_mb": round(slab / 2**20, 1),
        "rows": rows,
        "total_s": round(total, 6),
        "x_read": round(total / read, 2),
        "x_both_reads": round(total / (read + read_val), 2),
    }
