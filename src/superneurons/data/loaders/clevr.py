"""CLEVR v1.0 (Johnson et al. 2017): synthetic scenes with programmatically generated questions.

Layout of ``data_dir`` (the unpacked ``CLEVR_v1.0/``)::

    questions/CLEVR_{train,val}_questions.json
    images/{train,val}/CLEVR_{split}_%06d.png

Categorical subset: the questions whose answer is "yes" or "no" (existence and comparison
questions), taken as they are.
"""

from __future__ import annotations

from pathlib import Path

from superneurons.data.loaders.common import first_existing, need, read_json, unique_ids
from superneurons.data.records import BINARY_LABELS, DataError, Record
from superneurons.errors import ConfigError

SPLITS = ("train", "val")


def load_clevr(data_dir: str | Path, split: str, seed: int = 0) -> list[Record]:
    """The yes/no questions of a CLEVR split (test has no answers)."""
    del seed  # nothing is drawn
    if split not in SPLITS:
        raise ConfigError(f"CLEVR splits with answers are {SPLITS}; got {split!r}")
    data_dir = Path(data_dir)
    path = data_dir / "questions" / f"CLEVR_{split}_questions.json"
    if not path.is_file():
        raise DataError(f"CLEVR {split}: expected {path}")
    images = first_existing([data_dir / "images" / split], f"CLEVR {split} images")
    questions = need(read_json(path), "questions", str(path), list)
    records = []
    for i, raw in enumerate(questions):
        where = f"{path}: questions[{i}]"
        answer = need(raw, "answer", where, str)
        if answer not in BINARY_LABELS:
            continue
        index = raw.get("question_index", i)
        records.append(
            Record(
                id=f"clevr-{split}-{index}",
                image=images / need(raw, "image_filename", where, str),
                question=need(raw, "question", where, str),
                label=answer,
                family="clevr",
                extra={
                    "question_index": index,
                    "question_family_index": raw.get("question_family_index"),
                },
            )
        )
    return unique_ids(records, path)
