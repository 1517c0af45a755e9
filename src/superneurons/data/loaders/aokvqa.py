"""A-OKVQA (Schwenk et al. 2022): multiple-choice questions needing outside knowledge, on COCO 2017.

Layout of ``data_dir``::

    aokvqa_v1p0_{train,val}.json      (or aokvqa/aokvqa_v1p0_{split}.json)
    {train,val}2017/{image_id:012}.jpg  (or coco/{split}2017/…)

or the ``HuggingFaceM4/A-OKVQA`` parquet files anywhere under ``data_dir``
(``data/{train,validation}-*.parquet``).

Multiple choice → binary: each question gives two yes/no questions, ``'{question} Is the answer
"{choice}"?'``: "yes" with the correct choice and "no" with one wrong choice drawn by a generator
seeded by (seed, question_id), so the split is balanced and the draw does not depend on which
other questions are loaded. The original question, choices and answer index stay in ``extra``.
"""

from __future__ import annotations

from pathlib import Path

from superneurons.data.loaders.common import (
    SPLIT_ALIASES,
    check_choices,
    choice_pair,
    find_parquet,
    first_existing,
    image_from,
    iter_parquet,
    keyed_rng,
    need,
    read_json,
    unique_ids,
)
from superneurons.data.records import DataError, Record
from superneurons.errors import ConfigError

SPLITS = ("train", "val")


def _records(
    qid: str, image, question: str, choices: list[str], answer: int, seed: int, where: str
) -> list[Record]:
    check_choices(choices, answer, where)
    return [
        Record(
            id=f"aokvqa-{qid}-{pair.label}",
            image=image,
            question=pair.question,
            label=pair.label,
            family="aokvqa",
            extra={
                "question_id": qid,
                "source_question": question,
                "choices": list(choices),
                "correct_choice_idx": int(answer),
                "choice_idx": pair.choice_idx,
            },
        )
        for pair in choice_pair(question, choices, int(answer), keyed_rng(seed, qid))
    ]


def load_aokvqa(data_dir: str | Path, split: str, seed: int = 0) -> list[Record]:
    """Two balanced binary questions per A-OKVQA multiple-choice question (test has no answers)."""
    if split not in SPLITS:
        raise ConfigError(f"A-OKVQA splits with answers are {SPLITS}; got {split!r}")
    data_dir = Path(data_dir)
    name = f"aokvqa_v1p0_{split}.json"
    candidates = [data_dir / name, data_dir / "aokvqa" / name]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        parquet = find_parquet(data_dir, SPLIT_ALIASES[split])
        if parquet:
            return _parquet(parquet, seed)
        raise DataError(
            f"A-OKVQA {split}: expected {candidates[0]} or {candidates[1]}, "
            f"or HuggingFaceM4/A-OKVQA parquet files under {data_dir}"
        )
    images = first_existing(
        [data_dir / f"{split}2017", data_dir / "coco" / f"{split}2017"],
        f"A-OKVQA {split}: COCO {split}2017 images",
    )
    entries = read_json(path)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of questions, got {type(entries).__name__}")
    records = []
    for i, raw in enumerate(entries):
        where = f"{path}: entry {i}"
        qid = str(need(raw, "question_id", where, (str, int)))
        where = f"{path}: entry {i} (question_id {qid})"
        image_id = need(raw, "image_id", where, int)
        records += _records(
            qid,
            images / f"{image_id:012d}.jpg",
            need(raw, "question", where, str),
            need(raw, "choices", where, list),
            need(raw, "correct_choice_idx", where),
            seed,
            where,
        )
    return unique_ids(records, path)


def _parquet(files: list[Path], seed: int) -> list[Record]:
    records = []
    for where, row in iter_parquet(files):
        image = image_from(need(row, "image", where), where)
        if image is None:
            raise DataError(f"{where}: no image")
        answer = need(row, "correct_choice_idx", where)
        if answer is None:  # the test split's answers are hidden
            raise DataError(f"{where}: 'correct_choice_idx' is empty (a test split?)")
        records += _records(
            str(need(row, "question_id", where)),
            image,
            need(row, "question", where, str),
            need(row, "choices", where, list),
            answer,
            seed,
            where,
        )
    return unique_ids(records, files[0].parent)
