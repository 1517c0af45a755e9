"""Where a VLM's prefill FLOPs go: vision side (tower + projector), each decoder layer, lm_head.

Counted by ``torch.utils.flop_counter`` on a real forward pass of the model's own modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from superneurons.capture import to_model
from superneurons.models.adapters import adapter_for


def prefill_flop_split(model: torch.nn.Module, inputs: Mapping[str, Any]) -> dict:
    """FLOPs of one prefill, split into ``vision`` (everything before the decoder), the decoder
    ``layers`` (a list, one per layer), ``lm_head``, and their ``total``; plus the vision share."""
    adapter = adapter_for(model)
    root = type(model).__name__
    decoder = f"{root}.{adapter.language_model_path}"
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(**to_model(inputs, model))
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = counts["Global"]
    layers = [counts.get(f"{decoder}.layers.{i}", 0) for i in range(adapter.n_layers(model))]
    lm_head = counts.get(f"{root}.lm_head", 0)
    vision = total - counts.get(decoder, 0) - lm_head
    return {
        "total": total,
        "vision": vision,
        "layers": layers,
        "lm_head": lm_head,
        "vision_share": round(vision / total, 4),
        "input_tokens": int(inputs["input_ids"].shape[1]),
    }
