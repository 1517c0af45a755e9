"""Benchmarks: speed measured side by side in one process, written as JSON."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from rich.table import Table

from superneurons.bench.early_exit import BenchTarget, bench_target
from superneurons.outputs import write_output_json

EXIT_LAYERS = {"k=0": {"resid": [0]}, "k=1": {"resid": [1]}}


def device_description(device: str) -> dict:
    """What the numbers were measured on: the device, its name, torch's version and threads."""
    import torch

    chosen = torch.device(device)
    name = torch.cuda.get_device_name(chosen) if chosen.type == "cuda" else "cpu"
    return {
        "device": str(chosen),
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def scene_set(n: int, seed: int) -> tuple[list, list]:
    """(images, records): ``n`` balanced validation scene questions, chosen as every command
    chooses its records (``select``), generated in a temporary folder."""
    from superneurons.data.loaders import select

    with tempfile.TemporaryDirectory(prefix="superneurons-scenes-") as scratch:
        records = select("scenes", scratch, "val", n, seed, "benchmark set")
        return [r.load_image() for r in records], records


def embedded_target(
    classifier_dir: Path | None, seed: int = 99, n: int = 16, device: str = "cpu"
) -> BenchTarget:
    """The embedded default on held-out scenes, with its fitted classifier when one is given."""
    from superneurons.capture import prepare_inputs
    from superneurons.classifiers import LayerActivations
    from superneurons.data.prompts import Prompter
    from superneurons.models.loading import load_model
    from superneurons.predictor import SuperNeuronPredictor

    loaded = load_model(None, "fp32", device)
    predictor = None
    if classifier_dir is not None:
        predictor = SuperNeuronPredictor.from_pretrained(classifier_dir, model=loaded)
    # Asked as the classifier's probing set was (the embedded model's bare question otherwise).
    prompter = predictor.prompter if predictor else Prompter.for_model("plain", loaded.architecture)
    images, records = scene_set(n, seed)
    prompts = [prompter.chat(loaded.processor, r.question, r.choices, r.context) for r in records]
    exits = dict(EXIT_LAYERS)
    finish = None
    if predictor is not None:
        exits = {"classifier": dict(predictor.needed), **exits}
        classifier = predictor.classifier

        def finish(variant: str, values: dict) -> object:
            if variant != "classifier":
                return values
            arrays = {key: v.float().numpy() for key, v in values.items()}
            return classifier.predict(LayerActivations(arrays, classifier.sites_))

    def make_batch(batch_size: int) -> dict:
        # The processor is part of answering, so it is timed on both paths.
        return prepare_inputs(loaded.processor, images[:batch_size], prompts[:batch_size])

    return BenchTarget("embedded", loaded.model, make_batch, {"max_new_tokens": 128}, exits, finish)


def shape_target(name: str, device: str = "cpu") -> BenchTarget:
    """A real architecture's shapes with random weights; the full model answers in 2 tokens."""
    from superneurons.bench.shapes import SHAPES

    shape = SHAPES[name](device=device)
    make_batch = functools.lru_cache(maxsize=None)(shape.make_inputs)
    return BenchTarget(
        shape.name,
        shape.model,
        make_batch,
        {"min_new_tokens": 2, "max_new_tokens": 2},
        dict(EXIT_LAYERS),
    )


def input_path_rows(batch_sizes: list[int], repeats: int, seed: int = 99) -> list[dict]:
    """The embedded default's processor call against the fast input path on the same scenes
    (``superneurons.fast_inputs``): median milliseconds, interleaved, per batch size."""
    import statistics
    import time

    from superneurons.data.prompts import Prompter
    from superneurons.fast_inputs import FastInputs, processor_inputs
    from superneurons.models.loading import load_model

    loaded = load_model(None, "fp32", "cpu")
    processor = loaded.processor
    prompter = Prompter.for_model("plain", loaded.architecture)
    images, records = scene_set(max(max(batch_sizes), 2), seed)
    prompts = [prompter.chat(processor, r.question, r.choices, r.context) for r in records]
    fast = FastInputs(processor)
    paths = {"processor": functools.partial(processor_inputs, processor), "fast": fast}
    rows = []
    for batch in batch_sizes:
        args = (images[:batch], prompts[:batch])
        times: dict[str, list[float]] = {name: [] for name in paths}
        for round_ in range(repeats + 1):  # round 0 warms up (and checks the fast path)
            for name, run in paths.items():
                start = time.perf_counter()
                run(*args)
                if round_:
                    times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
        rows.append({
            "batch_size": batch,
            "processor_ms": round(ms["processor"], 4),
            "fast_ms": round(ms["fast"], 4),
            "speedup": round(ms["processor"] / ms["fast"], 3),
            "fast_path_used": fast.usable,
        })  # fmt: skip
    return rows


def run_early_exit_bench(
    out: Path,
    models: list[str],
    classifier_dir: Path | None,
    batch_sizes: list[int],
    repeats: int,
    warmup: int,
    device: str = "cpu",
    log=print,
) -> dict:
    """Benchmark every model in ``models`` on ``device``, writing ``out`` after each
    (atomically)."""
    rows: list[dict] = []
    result = {
        "format": "superneurons-bench-early-exit/1",
        "rows": rows,
        "repeats": repeats,
        "warmup": warmup,
        "statistic": "median",
        **device_description(device),
    }
    for name in models:
        if name == "embedded":
            target = embedded_target(classifier_dir, device=device)
        else:
            target = shape_target(name, device)
        rows += bench_target(target, batch_sizes, repeats, warmup, log=log)
        del target
        if name == "embedded":
            result["input_path"] = input_path_rows(batch_sizes, max(20, 4 * repeats))
        write_output_json(out, result)
    return result


def rows_table(rows: list[dict]) -> Table:
    table = Table(title="early exit vs full model (medians)")
    columns = [
        "model",
        "batch_size",
        "exit",
        "k",
        "full_s",
        "early_s",
        "speedup",
        "ceiling",
        "fraction_of_ceiling",
    ]
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "exit") else "right")
    for row in rows:
        table.add_row(
            *(str(row[c]) if not isinstance(row[c], float) else f"{row[c]:g}" for c in columns)
        )
    return table


__all__ = [
    "device_description",
    "embedded_target",
    "input_path_rows",
    "rows_table",
    "run_early_exit_bench",
    "scene_set",
    "shape_target",
]
