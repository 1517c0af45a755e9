"""Stage 1: train the vision tower on the renderer's per-patch ground truth, then cache features.

Each patch token must tell the attributes of the object under it (colour, shape, material, size,
or floor) and its own row and column; nothing else trains the tower, and it is frozen afterwards,
so stage 2 reads its patch features from a cache instead of running it.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from superneurons.models.embedded.architecture import IMAGE_SIZE, PATCH_SIZE, VISION_CONFIG
from training.supervision import PATCH_ATTRIBUTES

GRID = IMAGE_SIZE // PATCH_SIZE
_MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) images normalised as the CLIP image processor does (no resize needed)."""
    return ((images.permute(0, 3, 1, 2).float() / 255) - _MEAN.to(images.device)) / _STD.to(
        images.device
    )


def patch_targets(patch_labels: torch.Tensor) -> torch.Tensor:
    """Stage 1's targets per patch: the attribute labels, then the patch's row and column."""
    n, _, patches = patch_labels.shape
    position = torch.arange(patches, device=patch_labels.device)
    rows = (position // GRID).expand(n, 1, patches)
    cols = (position % GRID).expand(n, 1, patches)
    return torch.cat([patch_labels.long(), rows, cols], 1)


def _head_sizes() -> list[int]:
    return [len(values) + 1 for values in PATCH_ATTRIBUTES.values()] + [GRID, GRID]


def train_tower(
    images: torch.Tensor,
    patch_labels: torch.Tensor,
    steps: int,
    seed: int,
    batch: int = 64,
    lr: float = 2e-3,
    device: str = "cpu",
    log=print,
) -> CLIPVisionModel:
    """A CLIP vision tower trained ``steps`` steps on per-patch targets (:func:`patch_targets`)."""
    torch.manual_seed(seed)
    tower = CLIPVisionModel(CLIPVisionConfig(**VISION_CONFIG)).to(device)
    hidden = VISION_CONFIG["hidden_size"]
    heads = torch.nn.ModuleList([torch.nn.Linear(hidden, n) for n in _head_sizes()]).to(device)
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, steps)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=generator)
        targets = patch_targets(patch_labels[idx]).to(device)
        features = tower(pixel_values=pixel_values(images[idx].to(device))).last_hidden_state[:, 1:]
        logits = [head(features) for head in heads]
        loss = sum(
            F.cross_entropy(lg.flatten(0, 1), targets[:, k].flatten())
            for k, lg in enumerate(logits)
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            on_object = targets[:, 0] < len(PATCH_ATTRIBUTES["color"])
            accuracy = [
                round((lg.argmax(-1) == targets[:, k])[on_object].float().mean().item(), 3)
                for k, lg in enumerate(logits)
            ]
            log(
                f"vision step {step} loss {loss.item():.3f} object-patch accuracy "
                f"(colour, shape, material, size, row, column) {accuracy} "
                f"{time.time() - start:.0f}s"
            )
    return tower.eval()


@torch.no_grad()
def patch_features(tower: CLIPVisionModel, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The tower's last hidden state of every patch token (what LLaVA's projector reads), fp16."""
    device = next(tower.parameters()).device
    return torch.cat(
        [
            tower(pixel_values=pixel_values(images[k : k + batch].to(device)))
            .last_hidden_state[:, 1:]
            .half()
            .cpu()
            for k in range(0, len(images), batch)
        ]
    )
