"""Extraction: run a model over records, streaming activations and answers into a store."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from superneurons.capture import capture_prepared, prepare_inputs
from superneurons.data.images import DEFAULT_MAX_PIXELS
from superneurons.data.prompts import Prompter, TemplateSpec
from superneurons.data.records import Record
from superneurons.errors import ConfigError
from superneurons.metrics import parse_choice, parse_yes_no
from superneurons.models.adapters import SITES, adapter_for
from superneurons.models.fingerprint import model_fingerprint
from superneurons.models.loading import LoadedModel, ModelFiles
from superneurons.preflight import check_images, check_prompt_lengths
from superneurons.store import (
    ActivationStore,
    ActivationWriter,
    complete_shards,
    is_complete,
    merge_shards,
    shard_records,
)


def dataset_fingerprint(records: Sequence[Record]) -> str:
    """Hash of the records' ids, questions, labels, choices and image names."""
    digest = hashlib.sha256()
    for r in records:
        image = r.image.name if isinstance(r.image, Path) else f"<image {r.id}>"
        fields = [r.id, r.question, r.label, r.choices, r.context, image]
        digest.update(json.dumps(fields).encode())
    return digest.hexdigest()[:16]


def build_prompt(processor, record: Record, prompter: Prompter) -> str:
    """The chat prompt of ``record``: its question, choices and context."""
    return prompter.chat(processor, record.question, record.choices, record.context)


def parse_answer(record: Record, answer: str) -> str | None:
    """The label the model's text answer means, or None when it cannot be parsed."""
    if record.choices:
        return parse_choice(answer, len(record.choices))
    return parse_yes_no(answer)


def check_records(
    model: LoadedModel | ModelFiles,
    records: Sequence[Record],
    template: str | TemplateSpec,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    prompts: Sequence[str] | None = None,
) -> None:
    """Decode every image and measure every prompt against the model's context; one error
    lists every problem (:mod:`superneurons.preflight`). ``model`` may be opened without its
    weights (:func:`~superneurons.models.loading.open_model`)."""
    if not records:
        return
    sizes = check_images(records, max_pixels)
    if prompts is None:
        prompter = Prompter.for_model(template, model.architecture)
        prompts = [build_prompt(model.processor, r, prompter) for r in records]
    names = [r.id for r in records]
    check_prompt_lengths(model.config, model.processor, prompts, names, sizes)


def progress_bar(show: bool = True) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show,
    )


def extract(
    loaded: LoadedModel,
    records: Sequence[Record],
    out_dir: str | Path,
    sites: Sequence[str] = SITES,
    template: str | TemplateSpec = "plain",
    batch_size: int = 8,
    max_new_tokens: int = 128,
    description: str = "extract",
    shard: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_inputs: bool = True,
    prefetch: int | None = None,
    progress: bool = True,
) -> ActivationStore:
    """Capture every site's activations at the first generated token, and the model's answers.

    Resumable: rerunning with the same arguments continues after the last committed batch; a
    finished store is returned as is, and a store made with other arguments (model, weights,
    records, template, sites) is refused. ``shard=(i, n)`` extracts only samples ``i, i + n, …``
    (for splitting the work across machines). Without ``shard``, when every shard store of
    ``out_dir`` is complete, they are merged into it (``store.merge_shards``), refused before
    anything is written if they were extracted with other arguments.
    ``template`` is a built-in template's name or any :class:`TemplateSpec`.

    Before a store is started every image is decoded and every prompt measured against the
    model's context (:func:`check_records`; ``check_inputs=False`` when the caller did it), so
    bad input never leaves a partial store.

    Each batch's store append runs on a thread while the model runs the next batch, and the
    inputs of the next ``prefetch`` batches are prepared on another (default: 2 when the model
    is on an accelerator; 0 on the CPU, whose cores the model's threads already keep busy, where
    prefetching was measured 3 % slower). The store is the same byte for byte either way.
    ``progress=False`` hides the progress bar (a launched rank other than 0).
    """
    out_dir = Path(out_dir)
    if not records:
        raise ConfigError(f"{out_dir}: no records to extract")
    fingerprint = dataset_fingerprint(records)
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ConfigError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
        records = shard_records(records, index, count)
        if not records:
            raise ConfigError(f"{out_dir}: shard {index}/{count} holds no records")
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise ConfigError(f"unknown site(s) {unknown}; known: {list(SITES)}")
    model, processor = loaded.model, loaded.processor
    adapter = adapter_for(model)
    shapes = {s: (adapter.n_layers(model), adapter.site_width(model, s)) for s in sites}
    prompter = Prompter.for_model(template, adapter.name)
    meta = {
        "model": loaded.model_id,
        "revision": loaded.revision,
        "weights_fingerprint": model_fingerprint(model),
        "architecture": adapter.name,
        "model_class": type(model).__name__,
        "dataset_fingerprint": fingerprint,
        "template": template.name if isinstance(template, TemplateSpec) else template,
        "prompt": prompter.to_json(),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        # The weights' fingerprint ignores their dtype: rows computed in another are refused.
        "model_dtype": str(model.dtype).removeprefix("torch."),
    }
    if shard is not None:
        meta["shard"] = list(shard)
    dtype = "bfloat16" if model.dtype == torch.bfloat16 else "float16"
    if shard is None and not is_complete(out_dir) and (shards := complete_shards(out_dir)):
        merge_shards(shards, out_dir, expect=(shapes, dtype, meta))  # refused unless the same
    prompts = [build_prompt(processor, r, prompter) for r in records]
    if check_inputs and not is_complete(out_dir):
        check_records(loaded, records, template, max_pixels, prompts)

    if prefetch is None:
        prefetch = 0 if loaded.device.type == "cpu" else 2
    # The prefetching thread gets a processor of its own: a fast tokenizer used from two
    # threads at once can fail ("Already borrowed") while it sets its padding.
    preparing = copy.deepcopy(processor) if prefetch > 0 else processor

    def prepare(start: int) -> Any:
        images = [r.load_image(max_pixels) for r in records[start : start + batch_size]]
        return prepare_inputs(preparing, images, prompts[start : start + batch_size])

    with (
        ActivationWriter(out_dir, shapes, len(records), dtype, meta) as writer,
        progress_bar(progress) as bar,
        ThreadPoolExecutor(1) as store_thread,
    ):
        task = bar.add_task(description, total=len(records), completed=writer.n_done)
        starts = range(writer.n_done, len(records), batch_size)
        appending = None  # the previous batch's append, running while the model runs this one
        for start, inputs in zip(starts, prefetched(prepare, starts, prefetch), strict=True):
            batch = records[start : start + batch_size]
            result = capture_prepared(model, processor, inputs, sites, max_new_tokens)
            rows = [
                {
                    "id": r.id,
                    "label": r.label,
                    "family": r.family,
                    "choices": r.choices,
                    "answer": answer,
                    "parsed": parse_answer(r, answer),
                }
                for r, answer in zip(batch, result.answers, strict=True)
            ]
            if appending is not None:
                bar.advance(task, appending.result())  # re-raises a failed append
            appending = store_thread.submit(_append, writer, result.activations, rows)
        if appending is not None:
            bar.advance(task, appending.result())
        return writer.finish()


def _append(writer: ActivationWriter, activations: dict, rows: list[dict]) -> int:
    writer.append(activations, rows)
    return len(rows)


def prefetched(prepare: Callable[[Any], Any], items: Iterable[Any], depth: int) -> Iterator[Any]:
    """``prepare(item)`` for each item in order, up to ``depth`` items prepared ahead on a thread
    (image decoding, the processor and the tokenizer release the GIL much of the time, so they
    overlap the model's forward); ``depth`` 0 prepares each when it is needed."""
    items = iter(items)
    if depth <= 0:
        yield from map(prepare, items)
        return
    with ThreadPoolExecutor(1) as pool:
        ahead = deque(pool.submit(prepare, item) for item in islice(items, depth))
        while ahead:
            done = ahead.popleft().result()
            ahead.extend(pool.submit(prepare, item) for item in islice(items, 1))
            yield done
