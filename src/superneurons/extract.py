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
from superneurons.data.prompts import chat_messages, format_prompt
from superneurons.data.records import Record
from superneurons.metrics import parse_choice, parse_yes_no
from superneurons.models.adapters import SITES, adapter_for
from superneurons.models.fingerprint import model_fingerprint
from superneurons.models.loading import LoadedModel
from superneurons.store import ActivationStore, ActivationWriter, is_complete


def dataset_fingerprint(records: Sequence[Record]) -> str:
    """Hash of the records' ids, questions, labels, choices and image names."""
    digest = hashlib.sha256()
    for r in records:
        image = r.image.name if isinstance(r.image, Path) else f"<image {r.id}>"
        fields = [r.id, r.question, r.label, r.choices, r.context, image]
        digest.update(json.dumps(fields).encode())
    return digest.hexdigest()[:16]


def build_prompt(processor, record: Record, template: str) -> str:
    text = format_prompt(record.question, record.choices, template, record.context)
    return processor.apply_chat_template(chat_messages(text), add_generation_prompt=True)


def parse_answer(record: Record, answer: str) -> str | None:
    """The label the model's text answer means, or None when it cannot be parsed."""
    if record.choices:
        return parse_choice(answer, len(record.choices))
    return parse_yes_no(answer)


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
    template: str = "plain",
    batch_size: int = 8,
    max_new_tokens: int = 128,
    description: str = "extract",
) -> ActivationStore:
    """Capture every site's activations at the first generated token, and the model's answers.

    Resumable: rerunning with the same arguments continues after the last committed batch; a
    finished store is returned as is.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        return ActivationStore.open(out_dir)
    if not records:
        raise ValueError(f"{out_dir}: no records to extract")
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise ValueError(f"unknown site(s) {unknown}; known: {list(SITES)}")
    model, processor = loaded.model, loaded.processor
    adapter = adapter_for(model)
    shapes = {s: (adapter.n_layers(model), adapter.site_width(model, s)) for s in sites}
    meta = {
        "model": loaded.model_id,
        "revision": loaded.revision,
        "weights_fingerprint": model_fingerprint(model),
        "architecture": adapter.name,
        "model_class": type(model).__name__,
        "dataset_fingerprint": dataset_fingerprint(records),
        "template": template,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
    }
    dtype = "bfloat16" if model.dtype == torch.bfloat16 else "float16"
    with (
        ActivationWriter(out_dir, shapes, len(records), dtype, meta) as writer,
        progress_bar() as bar,
    ):
        task = bar.add_task(description, total=len(records), completed=writer.n_done)
        for start in range(writer.n_done, len(records), batch_size):
            batch = records[start : start + batch_size]
            images = [r.load_image() for r in batch]
            prompts = [build_prompt(processor, r, template) for r in batch]
            result = capture(model, processor, images, prompts, sites, max_new_tokens)
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
