"""A cheap fingerprint of a model's weights: tells the checkpoint a classifier was fitted on.

Hashes the architecture config and, for every parameter, its name, shape and a fixed sample of
its values rounded to bfloat16 — so the same checkpoint loaded in fp32, bf16 or fp16 (from the
same stored values) hashes the same, while different or re-initialised weights do not. Hashing
every weight of a 7B model would take minutes; the sample takes milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import nullcontext

import torch
from torch import nn

SAMPLES_PER_TENSOR = 64
_IGNORED_CONFIG_KEYS = {
    "_name_or_path",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "_commit_hash",
}


def _config_text(config) -> str:
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in _IGNORED_CONFIG_KEYS}
        return value

    return json.dumps(clean(config.to_dict()), sort_keys=True, default=str)


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """16 hex digits that change when the architecture or the weights change."""
    digest = hashlib.sha256(_config_text(model.config).encode())
    for name, param in _parameters(model):
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
        sample = flat[::step][:SAMPLES_PER_TENSOR].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(f"{name}:{tuple(param.shape)}:".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.named_parameters()``, with the weights a device map offloaded (on the meta device,
    kept by accelerate's hooks on the CPU or the disk) read from where they are kept."""
    from accelerate.utils import align_module_device

    seen: set[int] = set()
    for prefix, module in model.named_modules():
        own = [(n, p) for n, p in module._parameters.items() if p is not None and id(p) not in seen]
        seen.update(id(p) for _, p in own)
        offloaded = any(p.is_meta for _, p in own)
        with align_module_device(module, torch.device("cpu")) if offloaded else nullcontext():
            for name, _ in own:
                yield f"{prefix}.{name}" if prefix else name, module._parameters[name]
