"""A fixed pool of rendered scenes and questions, made once per split and reused by both stages.

Rendering dominates the cost of a training sample here (≈ 20 ms a scene against < 1 ms of model
time per question), so each scene is rendered once and asked several question draws. The pool
holds the images, per-patch labels (:mod:`supervision`) and, per question, the user text exactly
as ``superneurons run`` formats it (choices listed), the answer, the family and the grounding
labels. Worker processes render chunks in parallel; the file is written atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from superneurons.data.prompts import format_prompt
from superneurons.data.scenes import generate_questions, iter_scenes
from superneurons.data.scenes.write import scene_rng
from superneurons.models.embedded.architecture import IMAGE_SIZE
from training.supervision import (
    PATCH_ATTRIBUTES,
    atomic_torch_save,
    grounding_labels,
    load_torch,
    patch_labels,
)

FIRST_DRAW_STREAM = 20  # scene_rng stream of the first question draw (draw r uses 20 + r)
CHUNK_SCENES = 250


@dataclass
class Pool:
    """Scenes ``0 … n-1`` of one split and the questions asked about them (flat, by question)."""

    images: torch.Tensor  # (scenes, H, W, 3) uint8
    patch_labels: torch.Tensor  # (scenes, attributes, patches) int8: PATCH_ATTRIBUTES' order
    scene: torch.Tensor  # (questions,) int32: index into images
    text: list[str]  # user text (question, and options for multiple choice)
    answer: list[str]  # "yes", "no" or an option letter
    family: list[str]
    grounding: torch.Tensor  # (questions, patches) int8

    def save(self, path: Path) -> None:
        atomic_torch_save(self.__dict__, path)

    @classmethod
    def load(cls, path: Path) -> Pool:
        return cls(**load_torch(path))


def _render_chunk(job: tuple[int, str, int, int, int]) -> tuple:
    seed, split, start, n, draws = job
    torch.set_num_threads(1)
    images, labels, rows = [], [], []
    for scene, render in iter_scenes(seed, split, n, resolution=IMAGE_SIZE, start=start):
        patch = patch_labels(render.object_map, scene.objects)
        images.append(render.image)
        labels.append(np.stack([patch[a] for a in PATCH_ATTRIBUTES]).astype(np.int8))
        for draw in range(draws):
            rng = scene_rng(seed, split, scene.index, stream=FIRST_DRAW_STREAM + draw)
            for q in generate_questions(scene, rng):
                grounding = grounding_labels(patch["owner"], q.mentions)
                text = format_prompt(q.question, q.choices)
                rows.append((scene.index, text, q.label, q.family, grounding))
    return images, labels, rows


def render_pool(
    path: Path, seed: int, split: str, scenes: int, draws: int, workers: int = 2, log=print
) -> Pool:
    """Render the pool into ``path`` (or load it if it is already there)."""
    if path.is_file():
        return Pool.load(path)
    start = time.time()
    jobs = [
        (seed, split, k, min(CHUNK_SCENES, scenes - k), draws)
        for k in range(0, scenes, CHUNK_SCENES)
    ]
    images, labels, rows = [], [], []
    with get_context("spawn").Pool(workers) as processes:
        for chunk_images, chunk_labels, chunk_rows in processes.imap(_render_chunk, jobs):
            images += chunk_images
            labels += chunk_labels
            rows += chunk_rows
    pool = Pool(
        images=torch.from_numpy(np.stack(images)),
        patch_labels=torch.from_numpy(np.stack(labels)),
        scene=torch.tensor([r[0] for r in rows], dtype=torch.int32),
        text=[r[1] for r in rows],
        answer=[r[2] for r in rows],
        family=[r[3] for r in rows],
        grounding=torch.from_numpy(np.stack([r[4] for r in rows])),
    )
    pool.save(path)
    log(f"pool {split}: {scenes} scenes, {len(rows)} questions in {time.time() - start:.0f}s")
    return pool
