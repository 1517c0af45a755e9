"""The record every dataset loader yields, and the generic JSON-lines format.

A JSON-lines file holds one object a line: ``image`` (a path relative to the file's directory),
``question``, ``label`` ("yes"/"no", or an option letter when ``choices`` is given), and optionally
``choices``, ``id``, ``family``, ``context``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from superneurons.data.images import DEFAULT_MAX_PIXELS, open_rgb
from superneurons.data.prompts import LETTERS
from superneurons.errors import DataError, problems_error

BINARY_LABELS = ("yes", "no")
__all__ = ["BINARY_LABELS", "DataError", "Record", "check_label", "load_jsonl"]


@dataclass
class Record:
    """One categorical question about one image."""

    id: str
    image: Path | Image.Image
    question: str
    label: str
    choices: list[str] | None = None
    family: str = ""
    context: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_binary(self) -> bool:
        return not self.choices

    def load_image(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """The image as 8-bit RGB; an unreadable or oversized one is a DataError naming it."""
        where = f"record {self.id!r}" + (f": {self.image}" if isinstance(self.image, Path) else "")
        return open_rgb(self.image, where, max_pixels)


def check_label(record: Record, where: str) -> None:
    """Raise DataError unless the label is in the record's label set."""
    allowed = LETTERS[: len(record.choices)] if record.choices else BINARY_LABELS
    if record.label not in allowed:
        raise DataError(f"{where}: label {record.label!r} is not one of {list(allowed)}")


_KNOWN = {"id", "image", "question", "label", "choices", "family", "context"}
_OPTIONAL_TEXT = ("family", "context")


def _record(raw: object, path: Path, number: int, require_label: bool) -> Record:
    where = f"{path}:{number}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    required = ("image", "question", "label") if require_label else ("image", "question")
    missing = [key for key in required if key not in raw]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}")
    for key in ("image", "question"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise DataError(f"{where}: {key!r} should be a non-empty string, got {raw[key]!r}")
    for key in ("label", "id", *_OPTIONAL_TEXT):
        if raw.get(key) is not None and not isinstance(raw[key], str | int):
            raise DataError(f"{where}: {key!r} should be a string, got {raw[key]!r}")
    choices = raw.get("choices")
    if choices is not None and (
        not isinstance(choices, list)
        or not 2 <= len(choices) <= len(LETTERS)
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise DataError(
            f"{where}: 'choices' should be a list of 2 to {len(LETTERS)} non-empty strings, "
            f"got {choices!r}"
        )
    record = Record(
        id=str(raw.get("id", f"{path.stem}-{number}")),
        image=path.parent / raw["image"],
        question=raw["question"],
        label=str(raw.get("label") or ""),
        choices=choices,
        family=str(raw.get("family") or ""),
        context=None if raw.get("context") is None else str(raw["context"]),
        extra={k: v for k, v in raw.items() if k not in _KNOWN},
    )
    if require_label:
        check_label(record, where)
    return record


def load_jsonl(path: str | Path, require_label: bool = True) -> list[Record]:
    """Records of a JSON-lines file, every line checked; all problems are reported at once,
    each naming the file, the line and what is wrong. Ids must be unique.

    Without ``require_label`` (questions to answer), a missing label is allowed and left empty.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records, problems, first_line = [], [], {}
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            where = f"{path}:{number}"
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                problems.append(f"{where}: not UTF-8 text (byte {error.start})")
                continue
            if not text.strip():
                continue
            try:
                record = _record(json.loads(text), path, number, require_label)
            except json.JSONDecodeError as error:
                problems.append(f"{where}: not valid JSON ({error.msg})")
                continue
            except DataError as error:
                problems.append(str(error))
                continue
            if record.id in first_line:
                problems.append(
                    f"{where}: duplicate id {record.id!r} (first on line {first_line[record.id]})"
                )
                continue
            first_line[record.id] = number
            records.append(record)
    if problems:
        raise problems_error(DataError, str(path), problems)
    if not records:
        raise DataError(f"{path}: no records (the file is empty)")
    return records
