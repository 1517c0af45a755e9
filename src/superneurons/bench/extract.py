"""``superneurons bench extract``: where extraction's time goes on the embedded default, against
``generate`` alone on the same batches already preprocessed, side by side in one process.

Over the same scene questions (image files on disk, as a run reads them): interleaved rounds of
``extract`` itself end to end (with inputs prepared when needed, ``prefetch=0``, and two batches
ahead on a thread, ``prefetch=2``) and plain greedy ``generate`` (no hooks) on the preprocessed
batches, medians reported; then the extraction loop timed once phase by phase (decoding the
images, the processor, the model with the capture hooks, the store's append and commit). The
headline is extract's default for the model's device (prefetch 0 on the CPU, 2 on an
accelerator); the ratio of its throughput to plain ``generate``'s is what the input pipeline
overlapping the model raises."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from superneurons.bench import device_description
from superneurons.bench.clock import timed

FORMAT = "superneurons-bench-extract/1"
PHASES = ("decode", "preprocess", "model", "store")


def run_extract_bench(
    n: int,
    batch_size: int,
    max_new_tokens: int,
    seed: int,
    repeats: int = 3,
    device: str = "cpu",
    log=print,
) -> dict:
    """Seconds and samples/s of extraction, its phases, and plain ``generate`` (medians of
    ``repeats`` interleaved rounds)."""
    from superneurons.capture import capture_prepared, prepare_inputs, to_model
    from superneurons.data.loaders import select
    from superneurons.data.prompts import Prompter
    from superneurons.extract import build_prompt, extract
    from superneurons.models.adapters import SITES, adapter_for
    from superneurons.models.loading import load_model
    from superneurons.store import ActivationWriter

    loaded = load_model(None, "fp32", device)
    model, processor = loaded.model, loaded.processor
    adapter = adapter_for(model)
    shapes = {s: (adapter.n_layers(model), adapter.site_width(model, s)) for s in SITES}
    with tempfile.TemporaryDirectory(prefix="superneurons-bench-extract-") as scratch:
        records = select("scenes", scratch, "val", n, seed, "benchmark set")
        prompter = Prompter.for_model("plain", adapter.name)
        prompts = [build_prompt(processor, r, prompter) for r in records]
        batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        warm = prepare_inputs(processor, [records[0].load_image()], prompts[:1])
        with torch.inference_mode():  # first calls pay one-off costs: not timed
            model.generate(**to_model(warm, model), do_sample=False, max_new_tokens=2)

        prepared = [
            prepare_inputs(
                processor, [records[i].load_image() for i in rows], [prompts[i] for i in rows]
            )
            for rows in batches
        ]

        def plain_generate() -> None:
            with torch.inference_mode():
                for inputs in prepared:
                    model.generate(**to_model(inputs, model), do_sample=False, num_beams=1,
                                   max_new_tokens=max_new_tokens)  # fmt: skip

        # Interleaved rounds: extract with each batch prepared when needed and two prepared
        # ahead, then plain generate; the median of each is reported.
        seconds: dict[str, list[float]] = {"0": [], "2": [], "generate": []}
        for round_ in range(repeats):
            for prefetch in (0, 2):
                started = time.perf_counter()
                extract(loaded, records, Path(scratch) / f"whole-{prefetch}-{round_}",
                        batch_size=batch_size, max_new_tokens=max_new_tokens,
                        description="bench", prefetch=prefetch, progress=False)  # fmt: skip
                seconds[str(prefetch)].append(time.perf_counter() - started)
            seconds["generate"].append(timed(plain_generate, loaded.device)[1])
            log(
                f"round {round_ + 1}/{repeats}: extract {seconds['0'][-1]:.2f} s (prefetch 0), "
                f"{seconds['2'][-1]:.2f} s (prefetch 2); generate {seconds['generate'][-1]:.2f} s"
            )
        # Timed last, when every first call's one-off cost is paid.
        phases = dict.fromkeys(PHASES, 0.0)
        path = Path(scratch) / "phases"
        with ActivationWriter(path, shapes, n, "float16", {"bench": "extract"}) as writer:
            for rows in batches:
                mark = time.perf_counter()
                images = [records[i].load_image() for i in rows]
                phases["decode"] += time.perf_counter() - mark
                mark = time.perf_counter()
                inputs = prepare_inputs(processor, images, [prompts[i] for i in rows])
                phases["preprocess"] += time.perf_counter() - mark
                mark = time.perf_counter()
                result = capture_prepared(model, processor, inputs, SITES, max_new_tokens)
                phases["model"] += time.perf_counter() - mark
                mark = time.perf_counter()
                writer.append(result.activations, [{"id": records[i].id} for i in rows])
                phases["store"] += time.perf_counter() - mark
            writer.finish()

        medians = {name: statistics.median(values) for name, values in seconds.items()}
        default = "0" if loaded.device.type == "cpu" else "2"  # extract's own default
        whole, generate = medians[default], medians["generate"]
    total = sum(phases.values())
    return {
        "format": FORMAT,
        "model": loaded.model_id,
        **device_description(str(loaded.device)),
        "n": n,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "statistic": "median",
        "prefetch": int(default),
        "extract_s": round(whole, 4),
        "extract_samples_per_s": round(n / whole, 2),
        "extract_s_by_prefetch": {depth: round(medians[depth], 4) for depth in ("0", "2")},
        "rounds_s": {name: [round(v, 4) for v in values] for name, values in seconds.items()},
        "phases_s": {name: round(seconds, 4) for name, seconds in phases.items()},
        "phase_shares": {name: round(seconds / total, 4) for name, seconds in phases.items()},
        "generate_s": round(generate, 4),
        "generate_samples_per_s": round(n / generate, 2),
        "extract_vs_generate": round(generate / whole, 3),  # throughput ratio; target >= 0.9
        "hooks_vs_generate": round(generate / phases["model"], 3),
    }
