"""Deterministic scene streams, in memory or written to disk as images + scenes.json + JSONL.

Scene i of (seed, split) draws from its own SeedSequence([seed, split code, i, stream]), so a
dataset of N scenes is a prefix of one of N + k scenes and splits never share a stream.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from superneurons import atomic
from superneurons.data.scenes.questions import FAMILIES, Question, generate_questions
from superneurons.data.scenes.render import RenderResult
from superneurons.data.scenes.sample import Scene, sample_scene, scale_pixels
from superneurons.errors import ConfigError
from superneurons.outputs import Claim

SPLIT_CODE: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SCENE_STREAM, QUESTION_STREAM = 0, 1
# 2: each yes/no pair of count and existence questions shares its form (question_form).
# 3: each question records the objects it mentions ("mentions"), as its maker chose them.
FORMAT_VERSION = 3


def is_current_dataset(out_dir: str | os.PathLike[str]) -> bool:
    """Whether ``out_dir`` holds a scene dataset written by this generator version."""
    index = Path(out_dir) / "scenes.json"
    try:
        info = json.loads(index.read_text())["info"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(info, dict) and info.get("version") == FORMAT_VERSION


def scene_rng(seed: int, split: str, index: int, stream: int = SCENE_STREAM) -> np.random.Generator:
    """The random stream of one scene (``stream`` 0: layout, 1: questions)."""
    if split not in SPLIT_CODE:
        raise ConfigError(f"unknown split {split!r}; known: {tuple(SPLIT_CODE)}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODE[split], index, stream]))


def make_scene(
    seed: int,
    split: str,
    index: int,
    resolution: int = 64,
    min_objects: int = 3,
    max_objects: int = 6,
) -> tuple[Scene, RenderResult]:
    """Scene ``index`` of (seed, split), the same wherever it is generated."""
    rng = scene_rng(seed, split, index)
    return sample_scene(rng, index, split, resolution, min_objects, max_objects)


def iter_scenes(
    seed: int,
    split: str = "train",
    n: int = 1,
    resolution: int = 64,
    min_objects: int = 3,
    max_objects: int = 6,
    start: int = 0,
) -> Iterator[tuple[Scene, RenderResult]]:
    """Scenes ``start`` … ``start + n - 1`` of (seed, split) with their renderings."""
    for index in range(start, start + n):
        yield make_scene(seed, split, index, resolution, min_objects, max_objects)


def scene_questions(
    scene: Scene, seed: int, families: Iterable[str] | None = None, per_family: int = 1
) -> list[Question]:
    """The questions of a scene, from the scene's own question stream."""
    rng = scene_rng(seed, scene.split, scene.index, QUESTION_STREAM)
    return generate_questions(scene, rng, per_family=per_family, families=families)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an RGB uint8 image (no timestamps, so the bytes are reproducible)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_scene_dataset(
    out_dir: str | os.PathLike[str],
    n_scenes: int,
    seed: int,
    split: str = "train",
    resolution: int = 64,
    min_objects: int = 3,
    max_objects: int = 6,
    families: Iterable[str] | None = None,
    per_family: int = 1,
) -> Path:
    """Write images/, scenes.json and questions.jsonl under ``out_dir``; return ``out_dir``.

    Images are written first and the index files last, each atomically; a dataset there before
    is replaced. ``out_dir`` must be new, empty or a scene dataset (:mod:`superneurons.outputs`).
    """
    out = Path(out_dir)
    families = list(FAMILIES if families is None else families)
    with Claim(out, "scenes") as claim:
        # An index names the images beside it: drop a stale one first, so that a rewrite killed
        # halfway leaves no index (and is written again), never an index over other images.
        for index_file in ("scenes.json", "questions.jsonl"):
            (out / index_file).unlink(missing_ok=True)
        (out / "images").mkdir(exist_ok=True)
        scenes, questions = [], []
        for scene, render in iter_scenes(
            seed, split, n_scenes, resolution, min_objects, max_objects
        ):
            path = out / "images" / scene.image_filename
            atomic.write_bytes(path, png_bytes(render.image), claim.tmp)
            scenes.append(scene.to_json())
            questions.extend(scene_questions(scene, seed, families, per_family))
        info = {
            "generator": "superneurons.data.scenes",
            "version": FORMAT_VERSION,
            "seed": seed,
            "split": split,
            "n_scenes": n_scenes,
            "resolution": resolution,
            "min_objects": min_objects,
            "max_objects": max_objects,
            "min_visible_pixels": scale_pixels(12, resolution),
            "min_occluded_pixels": scale_pixels(3, resolution),
            "families": families,
            "per_family": per_family,
        }
        lines = "".join(json.dumps(q.to_json()) + "\n" for q in questions)
        index = json.dumps({"info": info, "scenes": scenes}).encode()
        atomic.write_bytes(out / "questions.jsonl", lines.encode(), claim.tmp)
        atomic.write_bytes(out / "scenes.json", index, claim.tmp)
    return out
