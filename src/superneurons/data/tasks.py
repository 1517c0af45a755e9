"""Tasks: where a dataset's records come from, and how they are prompted."""

from __future__ import annotations

import math
from pathlib import Path

from superneurons.data.records import Record, load_jsonl
from superneurons.data.scenes import write_scene_dataset
from superneurons.data.scenes.write import SPLIT_CODE, is_current_dataset
from superneurons.errors import ConfigError

SCENE_BINARY_FAMILIES = ("existence", "attribute", "count", "spatial", "occlusion", "depth")
# Each scene yields one yes/no pair per family (a family that does not fit a scene is skipped).
_SCENE_QUESTIONS_PER_SCENE = 10


def scene_records(
    data_dir: Path,
    split: str,
    n_questions: int,
    seed: int,
    families: tuple[str, ...] = SCENE_BINARY_FAMILIES,
) -> list[Record]:
    """Generate (once) and load at least ``n_questions`` yes/no scene questions of ``split``.

    The scenes are written to ``data_dir/split`` so a run's inputs can be inspected; an existing
    dataset written with the same arguments by this generator version is reused.
    """
    if split not in SPLIT_CODE:
        raise ConfigError(f"unknown split {split!r}; known: {tuple(SPLIT_CODE)}")
    n_scenes = max(1, math.ceil(n_questions / _SCENE_QUESTIONS_PER_SCENE * 1.1))
    out = data_dir / f"{split}-seed{seed}-{n_scenes}"
    if not is_current_dataset(out):
        write_scene_dataset(out, n_scenes, seed, split, families=families)
    return [r for r in load_jsonl(out / "questions.jsonl") if r.family in families]
