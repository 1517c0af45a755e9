"""ScienceQA (Lu et al. 2022): multiple-choice science questions; only those with an image are used.

Layout of ``data_dir`` (the repository's ``data/scienceqa/``)::

    problems.json                       {pid: {question, choices, answer, hint, image, split, …}}
    images/{train,val,test}/{pid}/image.png

or parquet files anywhere under ``data_dir`` from ``derek-thomas/ScienceQA``
(``data/{train,validation,test}-*.parquet``) or ``lmms-lab/ScienceQA`` config ScienceQA-IMG
(``ScienceQA-IMG/{train,validation,test}-*.parquet``); point ``data_dir`` at one of them, not both.

Multiple choice → binary, as for A-OKVQA: ``'{question} Is the answer "{choice}"?'`` is asked with
the correct choice ("yes") and with one wrong choice ("no") drawn by a generator seeded by
(seed, question, choices), which both formats carry, so raw files and parquet give the same
questions. The hint, when not empty, becomes the record's ``context``.
"""

from __future__ import annotations

from pathlib import Path

from superneurons.data.loaders.common import (
    SPLIT_ALIASES,
    check_choices,
    choice_pair,
    find_parquet,
    image_from,
    iter_parquet,
    keyed_rng,
    need,
    read_json,
    unique_ids,
)
from superneurons.data.records import DataError, Record
from superneurons.errors import ConfigError

SPLITS = ("train", "val", "test")


def _records(
    key: str,
    image,
    question: str,
    choices: list[str],
    answer: int,
    hint: str | None,
    seed: int,
    where: str,
    **extra,
) -> list[Record]:
    check_choices(choices, answer, where)
    rng = keyed_rng(seed, "\x1f".join([question, *choices]))
    return [
        Record(
            id=f"scienceqa-{key}-{pair.label}",
            image=image,
            question=pair.question,
            label=pair.label,
            family="scienceqa",
            context=(hint or "").strip() or None,
            extra={
                **extra,
                "source_question": question,
                "choices": list(choices),
                "answer_idx": int(answer),
                "choice_idx": pair.choice_idx,
            },
        )
        for pair in choice_pair(question, choices, int(answer), rng)
    ]


def load_scienceqa(data_dir: str | Path, split: str, seed: int = 0) -> list[Record]:
    """Two balanced binary questions per ScienceQA problem with an image in ``split``."""
    if split not in SPLITS:
        raise ConfigError(f"ScienceQA splits are {SPLITS}; got {split!r}")
    data_dir = Path(data_dir)
    path = data_dir / "problems.json"
    if not path.is_file():
        parquet = find_parquet(data_dir, SPLIT_ALIASES[split])
        if parquet:
            return _parquet(parquet, split, seed)
        raise DataError(
            f"ScienceQA {split}: expected {path} (with images/{split}/<pid>/image.png), "
            f"or derek-thomas/ScienceQA or lmms-lab/ScienceQA parquet files under {data_dir}"
        )
    problems = read_json(path)
    if not isinstance(problems, dict):
        raise DataError(f"{path}: expected an object keyed by problem id")
    records = []
    for pid, raw in problems.items():
        where = f"{path}: problem {pid!r}"
        if need(raw, "split", where, str) != split or not raw.get("image"):
            continue
        records += _records(
            pid,
            data_dir / "images" / split / pid / raw["image"],
            need(raw, "question", where, str),
            need(raw, "choices", where, list),
            need(raw, "answer", where),
            raw.get("hint"),
            seed,
            where,
            pid=pid,
        )
    return unique_ids(records, path)


def _parquet(files: list[Path], split: str, seed: int) -> list[Record]:
    records = []
    for index, (where, row) in enumerate(iter_parquet(files)):
        image = image_from(need(row, "image", where), where)
        if image is None:  # a text-only problem (derek-thomas/ScienceQA keeps them)
            continue
        records += _records(
            f"{split}-{index}",
            image,
            need(row, "question", where, str),
            need(row, "choices", where, list),
            need(row, "answer", where),
            row.get("hint"),
            seed,
            where,
        )
    if not records:
        raise DataError(f"ScienceQA {split}: no problem with an image in {files[0].parent}")
    return unique_ids(records, files[0].parent)
