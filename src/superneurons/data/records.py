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

from superneurons.data.prompts import LETTERS

BINARY_LABELS = ("yes", "no")


class DataError(ValueError):
    """A dataset file or record is malformed; the message names the file, line or key."""


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

    def load_image(self) -> Image.Image:
        """The image as RGB; an unreadable file is a DataError naming it and the record."""
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        try:
            with Image.open(self.image) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as error:
            raise DataError(
                f"record {self.id!r}: cannot read image {self.image}: {error}"
            ) from None


def check_label(record: Record, where: str) -> None:
    """Raise DataError unless the label is in the record's label set."""
    allowed = LETTERS[: len(record.choices)] if record.choices else BINARY_LABELS
    if record.label not in allowed:
        raise DataError(f"{where}: label {record.label!r} is not one of {list(allowed)}")


def load_jsonl(path: str | Path, require_label: bool = True) -> list[Record]:
    """Records of a JSON-lines file; errors name the file, the line and what is wrong.

    Without ``require_label`` (questions to answer), a missing label is allowed and left empty.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records = []
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg})") from None
            required = ("image", "question", "label") if require_label else ("image", "question")
            missing = [key for key in required if key not in raw]
            if missing:
                raise DataError(f"{where}: missing key(s) {missing}")
            known = {"id", "image", "question", "label", "choices", "family", "context"}
            record = Record(
                id=str(raw.get("id", f"{path.stem}-{number}")),
                image=path.parent / raw["image"],
                question=raw["question"],
                label=str(raw.get("label", "")),
                choices=raw.get("choices"),
                family=raw.get("family", ""),
                context=raw.get("context"),
                extra={k: v for k, v in raw.items() if k not in known},
            )
            if require_label:
                check_label(record, where)
            records.append(record)
    return records
