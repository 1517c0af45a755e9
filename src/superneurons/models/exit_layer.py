"""The exit layer of a Llama-style decoder layer: only what the last position needs.

A Llama-style layer is ``x + attn(norm1(x))``, then ``h + mlp(norm2(h))``, with rotary position
embeddings inside the attention (Llama, Qwen2/2.5/3-VL's text decoders, Idefics3/SmolVLM's). The
exit computes the keys and values of every position, the attention row of the last query only,
and the MLP of the last position only (nothing of it when only the ``attn`` site is read there),
records the sites and aborts the forward. A layer with any other module (Gemma's extra norms,
say) is refused rather than computed wrongly: its adapter overrides ``Adapter.exit_forward``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from superneurons.capture import StopForward, trace_last_position
from superneurons.errors import ModelError

if TYPE_CHECKING:
    from superneurons.models.adapters import Adapter


class _KeysValuesReady(Exception):
    """Raised once the prefix's keys and values are known, to skip the prefix's attention."""


class _PrefixCache:
    """Stands in for the KV cache of one attention call pair: prefix first, then the last query.

    The first ``update`` (positions ``0 .. T-2``) keeps the keys/values after rotary embedding and
    aborts the call; the second (position ``T-1``) returns them concatenated with its own. With
    the forward's own KV cache (``past``: earlier positions' keys and values, as in
    superneurons.prefix_cache), the prefix goes through it first: it is appended to what the cache
    holds for this layer, and the attention sees both.
    """

    def __init__(self, past: Any = None, layer_idx: int | None = None) -> None:
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None
        self.past, self.layer_idx = past, layer_idx

    def update(self, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any):
        if self.prefix is None:
            if self.past is not None:
                key, value = self.past.update(key, value, self.layer_idx)
            self.prefix = (key, value)
            raise _KeysValuesReady
        return torch.cat([self.prefix[0], key], dim=-2), torch.cat([self.prefix[1], value], dim=-2)


def cache_keyword(module: nn.Module) -> str:
    """The name of ``module.forward``'s KV-cache argument."""
    # transformers 5.24 calls it ``cache``; earlier 5.x and 4.x releases ``past_key_values``.
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _split_last(value: Any) -> tuple[Any, Any]:
    """(all but the last position, the last position) along the sequence axis (-2)."""
    return value[..., :-1, :], value[..., -1:, :]


def _check_llama_style(adapter: Adapter, layer: nn.Module) -> None:
    expected = {
        path.split(".")[0]
        for path in (adapter.attention_path, adapter.mlp_block_path, *adapter.norm_paths)
    }
    children = {name for name, _ in layer.named_children()}
    if children != expected:
        raise ModelError(
            f"{type(layer).__name__} has modules {sorted(children)}, not the Llama-style "
            f"{sorted(expected)}: early exit would compute it wrongly; give the "
            f"{adapter.name!r} adapter its own exit_forward"
        )


def llama_exit_forward(
    adapter: Adapter, layer: nn.Module, sites: Sequence[str], records: dict[str, torch.Tensor]
) -> Callable[..., Any]:
    """A replacement ``forward`` for the exit layer: records its ``sites`` at the last position
    into ``records``, then raises ``StopForward``."""
    _check_llama_style(adapter, layer)
    attention = layer.get_submodule(adapter.attention_path)
    mlp = layer.get_submodule(adapter.mlp_block_path)
    input_norm, post_attention_norm = (layer.get_submodule(p) for p in adapter.norm_paths)
    attn_site = layer.get_submodule(adapter.attn_path)
    mlp_site = layer.get_submodule(adapter.mlp_path)
    cache_name = cache_keyword(attention)

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        if args:
            raise TypeError("decoder layers are called with keyword arguments in transformers 5")
        cos_sin = kwargs.pop("position_embeddings")
        mask = kwargs.pop("attention_mask", None)
        past = kwargs.pop("cache", None) or kwargs.pop("past_key_values", None)
        for name in ("past_key_values", "use_cache", "position_ids", "cache_position"):
            kwargs.pop(name, None)
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise NotImplementedError(f"early exit needs a tensor attention mask, got {type(mask)}")
        head, last = _split_last(input_norm(hidden_states))
        (cos_head, cos_last), (sin_head, sin_last) = map(_split_last, cos_sin)
        cache = _PrefixCache(past, getattr(attention, "layer_idx", None))
        with suppress(_KeysValuesReady):
            attention(
                head,
                position_embeddings=(cos_head, sin_head),
                attention_mask=None,
                **{cache_name: cache},
                **kwargs,
            )
        last_mask = None if mask is None else mask[..., -1:, :]
        with trace_last_position({"attn": (attn_site, "input")}) as seen:
            attended, _ = attention(
                last,
                position_embeddings=(cos_last, sin_last),
                attention_mask=last_mask,
                **{cache_name: cache},
                **kwargs,
            )
        records["attn"] = seen["attn"]
        if "mlp" in sites or "resid" in sites:
            residual = hidden_states[:, -1:] + attended
            with trace_last_position({"mlp": (mlp_site, "input")}) as seen:
                out = residual + mlp(post_attention_norm(residual))
            records["mlp"] = seen["mlp"]
            records["resid"] = out[:, -1]
        raise StopForward

    return forward
