"""VizWiz-VQA (Gurari et al. 2018): questions from blind people about their own photos.

Layout of ``data_dir``::

    train.json, val.json            (or Annotations/train.json, Annotations/val.json)
    train/VizWiz_train_*.jpg
    val/VizWiz_val_*.jpg

or the ``lmms-lab/VizWiz-VQA`` parquet files anywhere under ``data_dir`` (``data/val-*.parquet``;
the mirror has no train split). Its ``category`` column is the answer type.

Categorical subset: ``answer_type == "yes/no"``. The label is the majority of the 10 crowd answers
(lower-cased, trailing period dropped); a question is skipped when the majority is neither "yes"
nor "no" (e.g. "unanswerable") or when two answers tie for it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from superneurons.data.loaders.common import (
    SPLIT_ALIASES,
    find_parquet,
    first_existing,
    image_from,
    iter_parquet,
    need,
    read_json,
    unique_ids,
)
from superneurons.data.records import BINARY_LABELS, DataError, Record
from superneurons.errors import ConfigError

SPLITS = ("train", "val")


def majority_answer(answers: list[str]) -> str | None:
    """The most frequent normalised answer, or None when two answers tie for most frequent."""
    counts = Counter(a.strip().lower().rstrip(".").strip() for a in answers).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def _answers(raw: list, where: str) -> list[str]:
    """Answer strings from the official ``[{"answer", "answer_confidence"}]`` or plain strings."""
    out = []
    for i, answer in enumerate(raw):
        if isinstance(answer, dict):
            answer = need(answer, "answer", f"{where}: answers[{i}]")
        if not isinstance(answer, str):
            raise DataError(f"{where}: answers[{i}] is not a string")
        out.append(answer)
    return out


def _record(key: str, image, question: str, answers: list[str], label: str) -> Record:
    return Record(
        id=f"vizwiz-{Path(key).stem}",
        image=image,
        question=question,
        label=label,
        family="vizwiz",
        extra={"answers": answers},
    )


def load_vizwiz(data_dir: str | Path, split: str, seed: int = 0) -> list[Record]:
    """The yes/no questions of a VizWiz split, labelled by their majority answer."""
    del seed  # nothing is drawn
    if split not in SPLITS:
        raise ConfigError(f"VizWiz splits are {SPLITS}; got {split!r}")
    data_dir = Path(data_dir)
    candidates = [data_dir / f"{split}.json", data_dir / "Annotations" / f"{split}.json"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        parquet = find_parquet(data_dir, SPLIT_ALIASES[split])
        if parquet:
            return _parquet(parquet)
        raise DataError(
            f"VizWiz {split}: expected {candidates[0]} or {candidates[1]}, "
            f"or lmms-lab/VizWiz-VQA parquet files under {data_dir}"
        )
    images = first_existing([data_dir / split], f"VizWiz {split} images")
    entries = read_json(path)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of questions, got {type(entries).__name__}")
    records = []
    for i, raw in enumerate(entries):
        where = f"{path}: entry {i}"
        if need(raw, "answer_type", where, str) != "yes/no":
            continue
        image = need(raw, "image", where, str)
        answers = _answers(need(raw, "answers", where, list), where)
        label = majority_answer(answers)
        if label in BINARY_LABELS:
            records.append(
                _record(image, images / image, need(raw, "question", where, str), answers, label)
            )
    return unique_ids(records, path)


def _parquet(files: list[Path]) -> list[Record]:
    records = []
    for where, row in iter_parquet(files):
        kind = row.get("answer_type", row.get("category"))
        if kind is None:
            raise DataError(f"{where}: missing column 'category' (the answer type)")
        if kind != "yes/no":
            continue
        answers = _answers(need(row, "answers", where, list), where)
        label = majority_answer(answers)
        if label not in BINARY_LABELS:
            continue
        image = image_from(need(row, "image", where), where)
        if image is None:
            raise DataError(f"{where}: no image")
        key = str(need(row, "question_id", where))
        records.append(_record(key, image, need(row, "question", where, str), answers, label))
    return unique_ids(records, files[0].parent)
