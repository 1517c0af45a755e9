"""Extraction: run a model over records, streaming activations and answers into a store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from superneurons.capture import capture
from superneurons.data.images import DEFAULT_MAX_PIXELS
from superneurons.data.prompts import Prompter, TemplateSpec
from superneurons.data.records import Record
from superneurons.errors import ConfigError
from superneurons.metrics import parse_choice, parse_yes_no
from superneurons.models.adapters import SITES, adapter_for
from superneurons.models.fingerprint import model_fingerprint
from superneurons.models.loading import LoadedModel, ModelFiles
from superneurons.preflight import check_images, check_prompt_lengths
from superneurons.store import ActivationStore, ActivationWriter, is_complete, shard_records


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
    check_images(records, max_pixels)
    if prompts is None:
        prompter = Prompter.for_model(template, model.architecture)
        prompts = [build_prompt(model.processor, r, prompter) for r in records]
    first = records[0].load_image(max_pixels)
    names = [r.id for r in records]
    check_prompt_lengths(model.config, model.processor, prompts, names, first)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
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
) -> ActivationStore:
    """Capture every site's activations at the first generated token, and the model's answers.

    Resumable: rerunning with the same arguments continues after the last committed batch; a
    finished store is returned as is, and a store made with other arguments (model, weights,
    records, template, sites) is refused. ``shard=(i, n)`` extracts only samples ``i, i + n, …``
    (for splitting the work across machines; ``store.merge_shards`` joins the parts).
    ``template`` is a built-in template's name or any :class:`TemplateSpec`.

    Before a store is started every image is decoded and every prompt measured against the
    model's context (:func:`check_records`; ``check_inputs=False`` when the caller did it), so
    bad input never leaves a partial store.
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
    }
    if shard is not None:
        meta["shard"] = list(shard)
    prompts = [build_prompt(processor, r, prompter) for r in records]
    if check_inputs and not is_complete(out_dir):
        check_records(loaded, records, template, max_pixels, prompts)
    dtype = "bfloat16" if model.dtype == torch.bfloat16 else "float16"
    with (
        ActivationWriter(out_dir, shapes, len(records), dtype, meta) as writer,
        progress_bar() as bar,
    ):
        task = bar.add_task(description, total=len(records), completed=writer.n_done)
        for start in range(writer.n_done, len(records), batch_size):
            batch = records[start : start + batch_size]
            images = [r.load_image(max_pixels) for r in batch]
            result = capture(
                model, processor, images, prompts[start : start + batch_size], sites, max_new_tokens
            )
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
            writer.append(result.activations, rows)
            bar.advance(task, len(batch))
        return writer.finish()
