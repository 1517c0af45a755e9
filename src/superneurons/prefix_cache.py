"""Reuse an image prefix's keys and values: a further question about an image runs only its own
tokens through layers 0..k.

Where the chat template puts the image before the question (LLaVA-1.5's ``USER: <image>\\n…``,
Qwen-VL's ``<|vision_start|>…<|vision_end|>…``), every token up to the end of the image's
block, the *prefix*, is the same for every question about that image, and so are its keys and
values in every layer (a token's keys and values depend only on the tokens up to it). A prompt
whose prefix was seen before (keyed by the prefix's token ids and the image's pixel values) runs
only its *suffix*, the question and the end of the template, through layers 0..k, attending to
the cached keys and values; a prompt seen for the first time runs whole, as without the cache,
and leaves its prefix's keys and values behind for layers 0..k. The values equal the uncached
early exit's within 1e-5 per site (tests per architecture: LLaVA, Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, whose adapters name the token that ends an image's block, ``image_end_token``).

A template that asks the question before the image has no shared prefix: check with
:func:`image_comes_first` before spending memory on one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from superneurons.capture import to_model
from superneurons.early_exit import generation_position_ids, run_to_exit
from superneurons.lru import ByteLRU, content_key
from superneurons.models.adapters import adapter_for
from superneurons.models.exit_layer import cache_keyword

Span = tuple[int, int]  # a row's prefix: (its first token's position, its image's last one)
KeysValues = list[tuple[torch.Tensor, torch.Tensor]]  # per layer 0..depth-1: (kv heads, P, dim)


def image_comes_first(processor: Any, prompter: Any) -> bool:
    """Whether ``prompter``'s chat prompt puts the image before the question, so questions about
    one image share a prefix."""
    marker = "superneuronsquestionmarker"
    prompt = prompter.chat(processor, marker)
    image = prompt.find(getattr(processor, "image_token", None) or "\0")
    return 0 <= image < prompt.find(marker)


class PrefixKVCache:
    """Up to ``max_bytes`` of image prefixes' keys and values, least recently used evicted."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries = ByteLRU(max_bytes, _bytes)
        self.hits = 0  # prompts that ran only their suffix
        self.misses = 0  # prompts that ran whole and left their prefix behind

    @classmethod
    def for_prompters(cls, max_bytes: int, processor: Any, prompters: Any) -> PrefixKVCache:
        """A cache of ``max_bytes`` if some of ``prompters`` puts the image first, else an
        empty one (0 bytes: nothing would be shared)."""
        shared = any(image_comes_first(processor, prompter) for prompter in prompters)
        return cls(max_bytes if shared else 0)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._entries.bytes

    def activations(
        self,
        model: nn.Module,
        inputs: Mapping[str, Any],
        needed: Mapping[str, Sequence[int]],
        prepare: Callable[[nn.Module, Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ) -> dict[tuple[str, int], torch.Tensor]:
        """:func:`~superneurons.early_exit.early_exit_activations` of ``inputs`` (the processor's
        left-padded output), reusing and filling the cache. ``prepare`` is applied to the inputs
        of the prompts that run whole (the image-feature cache's ``inject``, say)."""
        exit_layer = max(layer for layers in needed.values() for layer in layers)
        end_token = adapter_for(model).image_end_token
        spans = _spans(inputs, getattr(model.config, end_token)) if end_token else None
        if spans is None or self.max_bytes <= 0:
            return _whole(model, inputs, needed, prepare)
        keys = [_key(inputs, row, span) for row, span in enumerate(spans)]
        found = [self._entries.get(key) for key in keys]
        hits = [r for r, entry in enumerate(found) if entry and len(entry) > exit_layer]
        misses = [r for r in range(len(keys)) if r not in set(hits)]
        self.hits, self.misses = self.hits + len(hits), self.misses + len(misses)
        parts = []
        if misses:
            part = _rows(inputs, misses)
            cache = DynamicCache(config=model.config)
            parts.append((misses, _whole(model, part, needed, prepare, cache)))
            part_spans = _spans(part, getattr(model.config, end_token))
            for row, (first, last), layer_kv in zip(
                misses, part_spans, _per_row(cache, exit_layer), strict=True
            ):
                prefix = [(k[:, first : last + 1].clone(), v[:, first : last + 1].clone())
                          for k, v in layer_kv]  # fmt: skip
                self._entries.put(keys[row], prefix)
        if hits:
            part = _rows(inputs, hits)
            spans = _spans(part, getattr(model.config, end_token))
            entries = [found[r][: exit_layer + 1] for r in hits]
            parts.append((hits, _suffix_only(model, part, spans, entries, needed)))
        return _merge(parts, len(keys))


def _bytes(entry: KeysValues) -> int:
    return sum(t.numel() * t.element_size() for pair in entry for t in pair)


def _spans(inputs: Mapping[str, Any], end_id: int) -> list[Span] | None:
    """Each row's prefix span, or None when some row has none: a row must hold one image, be
    left-padded, and keep at least two tokens after its image (the suffix's head and last)."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    images = inputs.get("image_grid_thw", inputs.get("pixel_values"))
    if images is None or len(images) != len(ids):
        return None  # one image per row, or no prefix to key
    if mask is None:
        mask = torch.ones_like(ids)
    spans = []
    for row_ids, row_mask in zip(ids, mask, strict=True):
        real = row_mask.nonzero().flatten()
        ends = ((row_ids == end_id) & row_mask.bool()).nonzero().flatten()
        if not len(real) or not len(ends) or not bool(row_mask[int(real[0]) :].all()):
            return None
        first, last = int(real[0]), int(ends[-1])
        if last > ids.shape[1] - 3:
            return None
        spans.append((first, last))
    return spans


def _image_pixels(inputs: Mapping[str, Any], row: int) -> torch.Tensor | None:
    """Row ``row``'s image pixel values: one row each (LLaVA), or its patches among all images'
    (Qwen-VL: ``image_grid_thw`` patches per image, concatenated)."""
    pixels, grid = inputs.get("pixel_values"), inputs.get("image_grid_thw")
    if pixels is None or grid is None:
        return None if pixels is None else pixels[row]
    offsets = torch.cat([grid.new_zeros(1), grid.prod(-1).cumsum(0)])
    return pixels[int(offsets[row]) : int(offsets[row + 1])]


def _key(inputs: Mapping[str, Any], row: int, span: Span) -> bytes:
    """The content key of row ``row``'s prefix: its token ids and its image."""
    first, last = span
    parts = [inputs["input_ids"][row, first : last + 1]]
    if (pixels := _image_pixels(inputs, row)) is not None:
        parts.append(pixels)
    if (grid := inputs.get("image_grid_thw")) is not None:
        parts.append(grid[row])
    return content_key(*parts)


def _rows(inputs: Mapping[str, Any], rows: list[int]) -> dict[str, Any]:
    """``inputs`` of the rows ``rows`` only, without the columns all of them pad."""
    batch, length = inputs["input_ids"].shape
    if rows == list(range(batch)):
        return dict(inputs)
    index = torch.tensor(rows)
    out = {}
    for name, value in inputs.items():
        if name == "pixel_values" and "image_grid_thw" in inputs:
            out[name] = torch.cat([_image_pixels(inputs, r) for r in rows])
        elif isinstance(value, torch.Tensor) and value.shape[:1] == (batch,):
            out[name] = value[index]
        else:
            out[name] = value
    mask = out.get("attention_mask")
    start = int(mask.any(0).nonzero()[0]) if mask is not None else 0
    for name, value in out.items():
        if isinstance(value, torch.Tensor) and value.shape[:2] == (len(rows), length):
            out[name] = value[:, start:]
    return out


def _whole(model, inputs, needed, prepare=None, cache: DynamicCache | None = None):
    """The plain early exit; with ``cache``, layers 0..k leave their keys and values in it."""
    inputs = to_model(inputs, model)
    position_ids = generation_position_ids(model, inputs)
    if prepare is not None:
        inputs = to_model(prepare(model, inputs), model)
    kwargs = dict(inputs, position_ids=position_ids, use_cache=cache is not None)
    if cache is not None:
        kwargs[cache_keyword(model)] = cache
    return run_to_exit(model, kwargs, needed)


def _per_row(cache: DynamicCache, exit_layer: int) -> list[KeysValues]:
    """Every row's keys and values in layers 0..exit_layer, from the cache of a whole batch."""
    layers = cache.layers[: exit_layer + 1]
    batch = layers[0].keys.shape[0]
    return [[(layer.keys[row], layer.values[row]) for layer in layers] for row in range(batch)]


def _suffix_only(model, inputs, spans: list[Span], entries: list[KeysValues], needed):
    """Early exit over each row's suffix, attending to its cached prefix (left-padded to the
    longest prefix; the suffixes left-padded too, so every row's last token is the last)."""
    inputs = to_model(inputs, model)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    length = ids.shape[1]
    suffix = [length - last - 1 for _, last in spans]
    prefix = [int(entry[0][0].shape[1]) for entry in entries]
    s_max, p_max = max(suffix), max(prefix)
    attention = torch.zeros(len(spans), p_max + s_max, dtype=mask.dtype, device=mask.device)
    for row, (p, s) in enumerate(zip(prefix, suffix, strict=True)):
        attention[row, p_max - p : p_max] = 1
        attention[row, p_max + s_max - s :] = 1
    past = []
    for layer in range(len(entries[0])):
        heads, _, dim = entries[0][layer][0].shape
        keys = entries[0][layer][0].new_zeros(len(spans), heads, p_max, dim)
        values = torch.zeros_like(keys)
        for row, entry in enumerate(entries):
            keys[row, :, p_max - prefix[row] :] = entry[layer][0]
            values[row, :, p_max - prefix[row] :] = entry[layer][1]
        past.append((keys, values))
    position_ids = generation_position_ids(model, inputs)[..., length - s_max :]
    kwargs = {
        "input_ids": ids[:, length - s_max :],
        "attention_mask": attention,
        "position_ids": position_ids,
        "use_cache": True,
        cache_keyword(model): DynamicCache(ddp_cache_data=past),
    }
    return run_to_exit(model, kwargs, needed)


def _merge(parts, n_rows: int) -> dict[tuple[str, int], torch.Tensor]:
    """The parts' values (each for its rows) as one batch in row order."""
    if len(parts) == 1:
        return parts[0][1]
    merged = {}
    for key, first in parts[0][1].items():
        out = first.new_empty((n_rows, *first.shape[1:]))
        for rows, values in parts:
            out[torch.tensor(rows, device=out.device)] = values[key]
        merged[key] = out
    return merged
