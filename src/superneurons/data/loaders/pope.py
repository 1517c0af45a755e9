"""POPE (Li et al. 2023, github AoiDragon/POPE): "Is there a {object} in the image?" over COCO.

Layout of ``data_dir``::

    coco_pope_{random,popular,adversarial}.json   (or output/coco/… as in the POPE repository)
    val2014/COCO_val2014_*.jpg                    (or images/COCO_val2014_*.jpg)
    annotations/instances_train2014.json          (train only)
    train2014/COCO_train2014_*.jpg                (train only)

or, for ``val``, the ``lmms-lab/POPE`` parquet files anywhere under ``data_dir``
(``data/test-0000x-of-00003.parquet``; rows of the other variants are skipped by ``category``).

``val``: POPE's own 3,000 questions of the variant (JSON lines: question_id, image, text, label).

``train``: POPE has none, so a probing set is built the way POPE builds its questions, from the
COCO train2014 instances. For each of ``n_images`` images drawn with the seed, ``k`` = up to
``per_image`` present categories become "yes" questions and ``k`` absent ones "no" questions, so
every image is balanced. The absent categories depend on the variant:

- random: drawn uniformly among the absent categories;
- popular: the absent categories present in the most train2014 images;
- adversarial: the absent categories that co-occur most with the present ones (number of
  train2014 images holding both, summed over the image's present categories).

The question is POPE's template, "Is there a {category} in the image?", with COCO's names.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from superneurons.data.loaders.common import (
    CocoInstances,
    find_parquet,
    first_existing,
    image_from,
    iter_parquet,
    keyed_rng,
    need,
    read_coco_instances,
    unique_ids,
)
from superneurons.data.records import BINARY_LABELS, DataError, Record
from superneurons.errors import ConfigError

VARIANTS = ("random", "popular", "adversarial")
QUESTION = "Is there a {name} in the image?"


def load_pope(
    data_dir: str | Path,
    split: str,
    seed: int = 0,
    variant: str = "random",
    n_images: int | None = 1000,
    per_image: int = 3,
) -> list[Record]:
    """POPE ``val`` questions of ``variant``, or a ``train`` probing set built from COCO train2014
    with the variant's negative sampling (``n_images`` images, None for all)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown POPE variant {variant!r}; known: {VARIANTS}")
    data_dir = Path(data_dir)
    if split == "val":
        return _val(data_dir, variant)
    if split == "train":
        return _train(data_dir, variant, seed, n_images, per_image)
    raise ConfigError(f"POPE splits are 'train' (built from COCO) and 'val'; got {split!r}")


def _record(variant: str, qid: object, image, text: str, label: str, **extra) -> Record:
    return Record(
        id=f"pope-{variant}-{qid}",
        image=image,
        question=text,
        label=label,
        family=f"pope-{variant}",
        extra={"question_id": str(qid), "variant": variant, **extra},
    )


def _label(value: str, where: str) -> str:
    label = value.strip().lower()
    if label not in BINARY_LABELS:
        raise DataError(f"{where}: label {value!r} is not yes or no")
    return label


def _val(data_dir: Path, variant: str) -> list[Record]:
    name = f"coco_pope_{variant}.json"
    candidates = [data_dir / name, data_dir / "output" / "coco" / name]
    questions = next((path for path in candidates if path.is_file()), None)
    if questions is None:
        parquet = find_parquet(data_dir, ("test", "val", "validation", variant))
        if parquet:
            return _val_parquet(parquet, variant)
        raise DataError(
            f"POPE {variant}: {name} not found at {candidates[0]} or {candidates[1]}, "
            f"and no lmms-lab/POPE parquet files under {data_dir}"
        )
    images = first_existing(
        [data_dir / "val2014", data_dir / "images"], "POPE images (COCO val2014)"
    )
    records = []
    with questions.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{questions}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg})") from None
            qid = need(raw, "question_id", where, (int, str))
            image = need(raw, "image", where, str)
            text = need(raw, "text", where, str)
            label = _label(need(raw, "label", where, str), where)
            records.append(_record(variant, qid, images / image, text, label))
    return unique_ids(records, questions)


def _val_parquet(files: list[Path], variant: str) -> list[Record]:
    records = []
    seen: set[str] = set()
    for where, row in iter_parquet(files):
        category = row.get("category")
        if category in VARIANTS and category != variant:
            continue
        qid = str(need(row, "question_id", where))
        # The mirror's two configs hold the same questions: keep the first copy.
        if qid in seen:
            continue
        seen.add(qid)
        image = image_from(need(row, "image", where), where)
        if image is None:
            raise DataError(f"{where}: no image")
        text = need(row, "question", where, str)
        label = _label(need(row, "answer", where, str), where)
        records.append(_record(variant, qid, image, text, label))
    if not records:
        raise DataError(f"POPE {variant}: no rows of this variant in {[str(f) for f in files]}")
    return records


def _train(
    data_dir: Path, variant: str, seed: int, n_images: int | None, per_image: int
) -> list[Record]:
    path = first_existing(
        [
            data_dir / "annotations" / "instances_train2014.json",
            data_dir / "instances_train2014.json",
        ],
        "POPE train: COCO train2014 instances",
    )
    images = first_existing([data_dir / "train2014"], "POPE train: COCO train2014 images")
    coco = read_coco_instances(path)
    present = _present(coco)
    frequency = Counter(category for categories in present.values() for category in categories)
    cooccurrence = _cooccurrence(present, list(coco.categories))

    image_ids = sorted(i for i in present if i in coco.file_names)
    rng = np.random.default_rng(seed)
    if n_images is not None and n_images < len(image_ids):
        image_ids = sorted(int(i) for i in rng.choice(image_ids, n_images, replace=False))
    records = []
    for image_id in image_ids:
        here = sorted(present[image_id])
        absent = [c for c in sorted(coco.categories) if c not in present[image_id]]
        k = min(per_image, len(here), len(absent))
        if k == 0:
            continue
        # Positives depend only on the image, so the three variants share them.
        positives = keyed_rng(seed, f"pope-train-{image_id}").choice(here, k, replace=False)
        if variant == "random":
            negatives = keyed_rng(seed, f"pope-random-{image_id}").choice(absent, k, replace=False)
        elif variant == "popular":
            negatives = sorted(absent, key=lambda c: (-frequency[c], c))[:k]
        else:
            score = {c: sum(cooccurrence[p][c] for p in here) for c in absent}
            negatives = sorted(absent, key=lambda c: (-score[c], -frequency[c], c))[:k]
        image = images / coco.file_names[image_id]
        for categories, label in ((sorted(positives), "yes"), (sorted(negatives), "no")):
            for category in categories:
                name = coco.categories[int(category)]
                records.append(
                    _record(
                        variant,
                        f"train-{image_id}-{category}",
                        image,
                        QUESTION.format(name=name),
                        label,
                        image_id=image_id,
                        category=name,
                    )
                )
    return unique_ids(records, path)


def _present(coco: CocoInstances) -> dict[int, set[int]]:
    """Image id → the categories annotated in it."""
    present: dict[int, set[int]] = {}
    for image_id, category, _ in coco.annotations.values():
        present.setdefault(image_id, set()).add(category)
    return present


def _cooccurrence(present: dict[int, set[int]], categories: list[int]) -> dict[int, Counter]:
    """Category → Counter of the categories sharing an image with it (counted in images)."""
    counts: dict[int, Counter] = {c: Counter() for c in categories}
    for here in present.values():
        for a in here:
            counts[a].update(b for b in here if b != a)
    return counts
