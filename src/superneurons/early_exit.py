"""Extreme early exit: run a VLM only as far as the deepest super neuron, at the last position.

The model's own forward runs — vision tower, projector, merge of the image features into the text
embeddings, position ids (left padding, Qwen's M-RoPE), DeepStack additions — through decoder
layers ``0 .. k-1`` as usual. Layer ``k`` is replaced for the call by :func:`_exit_layer`, which
computes only what the last position needs: keys and values of every position, the attention
row of the last query, and the MLP of the last position (nothing of it when only the ``attn``
site is read there). Then the forward is aborted: no later layer, no final norm, no ``lm_head``,
no decoding, no KV cache kept.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from superneurons.capture import StopForward, to_model, trace_last_position
from superneurons.models.adapters import Adapter, adapter_for


class _KeysValuesReady(Exception):
    """Raised once the prefix's keys and values are known, to skip the prefix's attention."""


class _PrefixCache:
    """Stands in for the KV cache of one attention call pair: prefix first, then the last query.

    The first ``update`` (positions ``0 .. T-2``) keeps the keys/values after rotary embedding and
    aborts the call; the second (position ``T-1``) returns them concatenated with its own.
    """

    def __init__(self) -> None:
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any):
        if self.prefix is None:
            self.prefix = (key, value)
            raise _KeysValuesReady
        return torch.cat([self.prefix[0], key], dim=-2), torch.cat([self.prefix[1], value], dim=-2)


def _cache_keyword(attention: nn.Module) -> str:
    # transformers 5.24 calls it ``cache``; earlier 5.x and 4.x releases ``past_key_values``.
    params = inspect.signature(attention.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _split_last(value: Any) -> tuple[Any, Any]:
    """(all but the last position, the last position) along the sequence axis (-2)."""
    return value[..., :-1, :], value[..., -1:, :]


def _exit_layer(layer: nn.Module, sites: Sequence[str], records: dict[str, torch.Tensor]):
    """A replacement ``forward`` for the exit layer: records its ``sites`` at the last position."""
    attention = layer.self_attn
    cache_keyword = _cache_keyword(attention)

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        if args:
            raise TypeError("decoder layers are called with keyword arguments in transformers 5")
        cos_sin = kwargs.pop("position_embeddings")
        mask = kwargs.pop("attention_mask", None)
        for name in ("cache", "past_key_values", "use_cache", "position_ids", "cache_position"):
            kwargs.pop(name, None)
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise NotImplementedError(f"early exit needs a tensor attention mask, got {type(mask)}")
        normed = layer.input_layernorm(hidden_states)
        head, last = _split_last(normed)
        (cos_head, cos_last), (sin_head, sin_last) = map(_split_last, cos_sin)
        cache = _PrefixCache()
        with suppress(_KeysValuesReady):
            attention(
                head,
                position_embeddings=(cos_head, sin_head),
                attention_mask=None,
                **{cache_keyword: cache},
                **kwargs,
            )
        last_mask = None if mask is None else mask[..., -1:, :]
        with trace_last_position({"attn": (attention.o_proj, "input")}) as seen:
            attended, _ = attention(
                last,
                position_embeddings=(cos_last, sin_last),
                attention_mask=last_mask,
                **{cache_keyword: cache},
                **kwargs,
            )
        records["attn"] = seen["attn"]
        if "mlp" in sites or "resid" in sites:
            residual = hidden_states[:, -1:] + attended
            with trace_last_position({"mlp": (layer.mlp.down_proj, "input")}) as seen:
                out = residual + layer.mlp(layer.post_attention_layernorm(residual))
            records["mlp"] = seen["mlp"]
            records["resid"] = out[:, -1]
        raise StopForward

    return forward


def generation_position_ids(model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    """The position ids ``generate`` gives the prefill (from the attention mask with left
    padding; Qwen's M-RoPE indices), built by the model's own method for it, so that a plain
    forward matches the extraction that ran through ``generate``."""
    return model._prepare_position_ids_for_generation(inputs["input_ids"], dict(inputs))


@contextmanager
def _replaced_forward(module: nn.Module, forward) -> Iterator[None]:
    module.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del module.forward


def early_exit_activations(
    model: nn.Module, inputs: Mapping[str, Any], needed: Mapping[str, Sequence[int]]
) -> dict[tuple[str, int], torch.Tensor]:
    """``(site, layer) -> (batch, width)`` at the last position, running layers 0..k only.

    ``needed`` maps a site to the layers read there; k is the deepest of them. ``inputs`` are the
    processor's left-padded inputs. The values equal a full forward's (see the tests).
    """
    adapter: Adapter = adapter_for(model)
    exit_layer = max(layer for layers in needed.values() for layer in layers)
    earlier = {
        f"{site}.{layer}": adapter.site_module(model, site, layer)
        for site, layers in needed.items()
        for layer in layers
        if layer < exit_layer
    }
    at_exit = [site for site, layers in needed.items() if exit_layer in layers]
    exit_records: dict[str, torch.Tensor] = {}
    layer = adapter.decoder_layers(model)[exit_layer]
    inputs = to_model(inputs, model)
    with (
        torch.inference_mode(),
        _replaced_forward(layer, _exit_layer(layer, at_exit, exit_records)),
        trace_last_position(earlier) as records,
        suppress(StopForward),
    ):
        # The exit layer aborts the forward before any logits exist.
        model(**inputs, position_ids=generation_position_ids(model, inputs), use_cache=False)
    if not exit_records:
        raise RuntimeError(
            f"the forward never reached layer {exit_layer} of {type(model).__name__}"
        )
    result = {(name.split(".")[0], int(name.split(".")[1])): v for name, v in records.items()}
    result.update({(site, exit_layer): exit_records[site] for site in at_exit})
    return result
