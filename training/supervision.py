"""What the renderer's ground truth says about each image patch: the targets of auxiliary losses.

Stage 1 learns, per 8-px patch, the attributes of the object under it and where the patch is;
stage 2's grounding loss learns, per image token, whether it shows an object the question names.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from superneurons import atomic
from superneurons.data.scenes import COLORS, MATERIALS, SHAPES, SIZES
from superneurons.errors import DataError
from superneurons.models.embedded.architecture import PATCH_SIZE

PATCH_ATTRIBUTES = {
    "color": list(COLORS),
    "shape": list(SHAPES),
    "material": list(MATERIALS),
    "size": list(SIZES),
}

# A patch belongs to the object covering most of it once that object covers this many pixels.
# Most objects are smaller than a few patches: with a plain majority vote (floor included) 39 % of
# objects owned no patch at all.
MIN_OBJECT_PIXELS = PATCH_SIZE * PATCH_SIZE // 8

GROUNDING_CLASSES = 3  # neither, the first phrase's object(s), the second phrase's


def patch_owners(object_map: np.ndarray, n_objects: int) -> np.ndarray:
    """Per patch (row-major), the object covering most of it, -1 if none covers enough (floor)."""
    n = object_map.shape[0] // PATCH_SIZE
    patches = (
        object_map.reshape(n, PATCH_SIZE, n, PATCH_SIZE).transpose(0, 2, 1, 3).reshape(n * n, -1)
    )
    owners = np.full(n * n, -1)
    for k, patch in enumerate(patches):
        pixels = np.bincount(patch[patch >= 0], minlength=n_objects)
        if pixels.max(initial=0) >= MIN_OBJECT_PIXELS:
            owners[k] = pixels.argmax()
    return owners


def patch_labels(object_map: np.ndarray, objects) -> dict[str, np.ndarray]:
    """Per patch, the index of each attribute of its owner (:func:`patch_owners`; last = ground)."""
    owner = patch_owners(object_map, len(objects))
    labels = {}
    for attr, values in PATCH_ATTRIBUTES.items():
        labels[attr] = np.array(
            [len(values) if o < 0 else values.index(getattr(objects[o], attr)) for o in owner]
        )
    labels["owner"] = owner
    return labels


def grounding_labels(owners: np.ndarray, mentions: list[list[int]]) -> np.ndarray:
    """Per image patch (``owners``: :func:`patch_owners`): 1 or 2 if it shows an object the
    question's first or second phrase names (``mentions``, as the question's maker recorded
    them), 0 otherwise (floor, or an object not named)."""
    labels = np.zeros(len(owners), dtype=np.int8)
    for role, objects in enumerate(mentions, start=1):
        labels[np.isin(owners, objects)] = role
    return labels


def balanced_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the classes present of each class's mean cross-entropy.

    Named objects cover a few percent of the patches; plain cross-entropy settles at predicting
    "neither" everywhere (measured: no named patch found after 180 steps).
    """
    losses = F.cross_entropy(logits, targets, reduction="none")
    return torch.stack([losses[targets == c].mean() for c in targets.unique()]).mean()


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` through a temporary file: a reader never sees half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def load_torch(path: Path, map_location: str | None = None):
    """What ``atomic_torch_save`` wrote: tensors and plain containers only, never pickled code
    (``weights_only``); anything else is a DataError naming the file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a file written by python -m training ({message})") from None
