"""A bounded LRU cache of images' vision tower + projector outputs, by content.

Many questions are asked about one image (POPE asks six; a robot asks many per frame). For an
architecture whose adapter allows it (``Adapter.caches_image_features``: LLaVA), an image whose
pixel values were seen before skips the vision tower and the projector: its cached features go
into the model's forward as ``mm_encoder_outputs``, transformers' own injection point, in place
of ``pixel_values``. The key is a hash of the image's preprocessed pixel values, so the features
are those the image would get (tested equal to the uncached early exit within 1e-5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from superneurons.lru import ByteLRU, content_key
from superneurons.models.adapters import adapter_for


class ImageFeatureCache:
    """Up to ``max_bytes`` of image features, least recently used evicted first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # Counted by the memory a value keeps alive: its whole storage.
        self._entries = ByteLRU(max_bytes, lambda t: t.untyped_storage().nbytes())
        self.hits = 0  # images answered from the cache
        self.misses = 0  # images whose features were computed

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._entries.bytes

    def inject(self, model: nn.Module, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """``inputs`` with the images' features, cached or computed now, in place of their
        pixels; unchanged for an architecture the cache does not support."""
        pixels = inputs.get("pixel_values")
        if pixels is None or not adapter_for(model).caches_image_features or self.max_bytes <= 0:
            return inputs
        keys = [content_key(row) for row in pixels]
        features: dict[bytes, torch.Tensor] = {}
        for key in keys:
            if (found := self._entries.get(key)) is not None:
                features[key] = found
        missing = list(dict.fromkeys(k for k in keys if k not in features))
        self.misses += len(missing)  # computed now (an image twice in a batch: once)
        self.hits += len(keys) - len(missing)
        if missing:
            rows = [keys.index(k) for k in missing]
            config = model.config
            with torch.inference_mode():
                computed = model.model.get_image_features(
                    pixel_values=pixels[rows].to(model.device, model.dtype),
                    vision_feature_layer=config.vision_feature_layer,
                    vision_feature_select_strategy=config.vision_feature_select_strategy,
                    return_dict=True,
                ).pooler_output
            for key, value in zip(missing, computed, strict=True):
                # A copy: the model's per-image features are views of one batch-wide tensor,
                # which a cached view would keep whole while the cache counted only the view.
                value = value.clone()
                features[key] = value
                self._entries.put(key, value)
        injected = {k: v for k, v in inputs.items() if k != "pixel_values"}
        outputs = BaseModelOutputWithPooling(pooler_output=[features[k] for k in keys])
        injected["mm_encoder_outputs"] = {"image": outputs}
        return injected
