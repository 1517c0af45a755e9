"""What the dataset loaders share: JSON reading with located errors, COCO instance annotations,
offline parquet reading, the multiple-choice → binary rule and keyed randomness."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from superneurons.data.prompts import binary_choice_question
from superneurons.data.records import DataError, Record

# The split names a parquet mirror may use for ours.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "validation"),
    "test": ("test",),
}


def read_json(path: Path) -> Any:
    """The parsed JSON file; a missing or invalid file is a DataError naming it (and the line)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def need(raw: Any, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """``raw[key]``, or a DataError saying where the key is missing or of the wrong type."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if key not in raw:
        raise DataError(f"{where}: missing key {key!r}")
    value = raw[key]
    if kind is not None and not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        names = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: key {key!r} should be {names}, got {type(value).__name__}")
    return value


def first_existing(candidates: Iterable[Path], what: str) -> Path:
    """The first candidate that exists; else a DataError listing where ``what`` was looked for."""
    candidates = list(candidates)
    for path in candidates:
        if path.exists():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise DataError(f"{what} not found; expected one of: {looked}")


def unique_ids(records: list[Record], source: object) -> list[Record]:
    """``records`` unchanged, or a DataError naming the first repeated id and the source."""
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise DataError(f"{source}: duplicate record id {record.id!r}")
        seen.add(record.id)
    return records


def keyed_rng(seed: int, key: object) -> np.random.Generator:
    """A generator that depends only on (seed, key), so an item's draw does not depend on which
    other items were loaded or in which order (raw files and parquet mirrors agree)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


# --- multiple choice → binary ---------------------------------------------------------------


@dataclass(frozen=True)
class BinaryChoice:
    question: str
    label: str
    choice_idx: int


def choice_pair(
    question: str, choices: list[str], answer: int, rng: np.random.Generator
) -> list[BinaryChoice]:
    """The "yes" question for the correct choice and the "no" question for one wrong choice
    drawn by ``rng``; empty when no choice differs from the correct one."""
    wrong = [i for i, choice in enumerate(choices) if choice != choices[answer]]
    if not wrong:
        return []
    other = int(rng.choice(wrong))
    return [
        BinaryChoice(binary_choice_question(question, choices[answer]), "yes", answer),
        BinaryChoice(binary_choice_question(question, choices[other]), "no", other),
    ]


def check_choices(choices: Any, answer: Any, where: str) -> None:
    """DataError unless ``choices`` is a list of strings and ``answer`` an index into it."""
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: 'choices' should be a list of strings, got {choices!r}")
    if isinstance(answer, bool) or not isinstance(answer, int | np.integer):
        raise DataError(f"{where}: answer index should be an integer, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise DataError(f"{where}: answer index {answer} is outside the {len(choices)} choices")


# --- COCO instance annotations ---------------------------------------------------------------


@dataclass
class CocoInstances:
    """The parts of a COCO ``instances_*.json`` the loaders use."""

    path: Path
    file_names: dict[int, str]  # image id → file name
    categories: dict[int, str]  # category id → name
    # annotation id → (image id, category id, [x, y, w, h])
    annotations: dict[int, tuple[int, int, list[float]]] = field(default_factory=dict)

    def by_image(self) -> dict[int, list[int]]:
        """Image id → its annotation ids, in file order."""
        out: dict[int, list[int]] = {}
        for ann_id, (image_id, _, _) in self.annotations.items():
            out.setdefault(image_id, []).append(ann_id)
        return out


def read_coco_instances(path: Path) -> CocoInstances:
    """A COCO instances file; errors name the file, the list and the index of a bad entry."""
    raw = read_json(path)
    where = str(path)
    images, categories, annotations = (
        need(raw, key, where, list) for key in ("images", "categories", "annotations")
    )
    file_names = {}
    for i, image in enumerate(images):
        at = f"{path}: images[{i}]"
        file_names[need(image, "id", at, int)] = need(image, "file_name", at, str)
    names = {}
    for i, category in enumerate(categories):
        at = f"{path}: categories[{i}]"
        names[need(category, "id", at, int)] = need(category, "name", at, str)
    coco = CocoInstances(path, file_names, names)
    for i, ann in enumerate(annotations):
        at = f"{path}: annotations[{i}]"
        category = need(ann, "category_id", at, int)
        if category not in names:
            raise DataError(f"{at}: category_id {category} is not in 'categories'")
        coco.annotations[need(ann, "id", at, int)] = (
            need(ann, "image_id", at, int),
            category,
            list(ann.get("bbox", [])),
        )
    return coco


# --- parquet mirrors -------------------------------------------------------------------------


def find_parquet(data_dir: Path, names: Iterable[str]) -> list[Path]:
    """Parquet files under ``data_dir`` of the splits ``names``: a file named ``{name}-….parquet``
    (``data/test-00000-of-00003.parquet``) or in a folder ``{name}/`` (``validation/0000.parquet``).
    """
    names = set(names)
    found = []
    for path in sorted(data_dir.rglob("*.parquet")):
        folders = path.relative_to(data_dir).parts[:-1]
        if path.stem.split("-")[0] in names or names.intersection(folders):
            found.append(path)
    return found


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "reading parquet files needs the `datasets` package: "
            "pip install 'superneurons[data]' (or 'datasets>=2.19')"
        ) from None
    return datasets


def iter_parquet(files: list[Path]) -> Iterator[tuple[str, dict]]:
    """(``"{file}: row {i}"``, row) for every row of the files, read locally without the network.

    Image columns come back undecoded (``{"bytes", "path"}``): ``image_from`` opens them lazily,
    so a split's images are not all held decoded in memory.
    """
    datasets = _import_datasets()
    for file in files:
        # Streaming reads the file in place: no network, nothing written to the HF cache.
        ds = datasets.load_dataset("parquet", data_files=[str(file)], split="train", streaming=True)
        for name, feature in (ds.features or {}).items():
            if isinstance(feature, datasets.Image):
                ds = ds.cast_column(name, datasets.Image(decode=False))
        for index, row in enumerate(ds):
            yield f"{file}: row {index}", row


def image_from(value: Any, where: str) -> Image.Image | None:
    """A parquet image cell as a lazily decoded PIL image; None for an empty cell."""
    if value is None or isinstance(value, Image.Image):
        return value
    data = value.get("bytes") if isinstance(value, dict) else value
    if isinstance(value, dict) and not data and value.get("path"):
        path = Path(value["path"])
        data = path.read_bytes() if path.is_file() else None
    if not data:
        return None
    if not isinstance(data, bytes | bytearray):
        raise DataError(f"{where}: image cell holds {type(data).__name__}, not image bytes")
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{where}: image bytes are not a readable image ({error})") from None
