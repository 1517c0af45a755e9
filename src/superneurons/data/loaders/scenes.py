"""The synthetic scenes as a task like the others: generated, deterministically, not read.

Layout: ``DATA_DIR/{split}-seed{seed}-{n_scenes}/`` holds a scene dataset (images/,
questions.jsonl, scenes.json; docs/scenes.md), written on first use and reused afterwards. The
size follows from the number of questions asked for, so the same (split, seed, n) always gives the
same files and records.
"""

from __future__ import annotations

import math
from pathlib import Path

from superneurons.data.records import Record, load_jsonl
from superneurons.data.scenes import write_scene_dataset
from superneurons.data.scenes.questions import YES_NO_FAMILIES
from superneurons.data.scenes.write import SPLIT_CODE, is_current_dataset
from superneurons.errors import ConfigError

# Each scene yields one yes/no pair per family (a family that does not fit a scene is skipped).
QUESTIONS_PER_SCENE = 10
# A balanced sample of n draws from a few more than n questions: the labels vary by family.
OVERSAMPLE = 1.2
# The defaults of `superneurons run`: ≈ 10 minutes on 2 CPU cores for the embedded model.
DEFAULT_SIZES = {"train": 1000, "val": 600, "test": 600}


def load_scenes(data_dir: Path, split: str, seed: int, n: int | None = None) -> list[Record]:
    """Enough yes/no scene questions of ``split`` for a balanced sample of ``n`` (default: the
    split's default size), generated once under ``data_dir``."""
    if split not in SPLIT_CODE:
        raise ConfigError(f"unknown split {split!r}; known: {tuple(SPLIT_CODE)}")
    wanted = int((n or DEFAULT_SIZES[split]) * OVERSAMPLE)
    n_scenes = max(1, math.ceil(wanted / QUESTIONS_PER_SCENE * 1.1))
    out = Path(data_dir) / f"{split}-seed{seed}-{n_scenes}"
    if not is_current_dataset(out):
        write_scene_dataset(out, n_scenes, seed, split, families=YES_NO_FAMILIES)
    return [r for r in load_jsonl(out / "questions.jsonl") if r.family in YES_NO_FAMILIES]
