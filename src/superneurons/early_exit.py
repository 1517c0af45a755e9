"""Extreme early exit: run a VLM only as far as the deepest super neuron, at the last position.

The model's own forward runs — vision tower, projector, merge of the image features into the text
embeddings, position ids (left padding, Qwen's M-RoPE), DeepStack additions — through decoder
layers ``0 .. k-1`` as usual. Layer ``k``'s forward is replaced for the call by the adapter's
exit layer, which computes only what the last position needs: keys and values of every
position, the attention row of the last query, and the MLP of the last position (nothing of it
when only the ``attn`` site is read there). Then the forward is aborted: no later layer, no
final norm, no ``lm_head``, no decoding, no KV cache kept. The exit layer is the adapter's
(``Adapter.exit_forward``: the Llama-style default in :mod:`superneurons.models.exit_layer`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from superneurons.capture import StopForward, to_model, trace_last_position
from superneurons.models.adapters import Adapter, adapter_for


def generation_position_ids(model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    """The position ids ``generate`` gives the prefill (from the attention mask with left
    padding; Qwen's M-RoPE indices), built by the model's own method for it, so that a plain
    forward matches the extraction that ran through ``generate``."""
    return model._prepare_position_ids_for_generation(inputs["input_ids"], dict(inputs))


@contextmanager
def _replaced_forward(module: nn.Module, forward) -> Iterator[None]:
    """``module`` runs ``forward`` for the duration. A module under accelerate's hooks (a device
    map) keeps them: its ``_old_forward``, which the hook calls between moving the inputs to the
    module's device and back, is replaced instead of the hook's own ``forward``."""
    name = "_old_forward" if hasattr(module, "_hf_hook") else "forward"
    saved = module.__dict__.get(name)
    setattr(module, name, forward)  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        if saved is None:
            delattr(module, name)
        else:
            setattr(module, name, saved)


def early_exit_activations(
    model: nn.Module, inputs: Mapping[str, Any], needed: Mapping[str, Sequence[int]]
) -> dict[tuple[str, int], torch.Tensor]:
    """``(site, layer) -> (batch, width)`` at the last position, running layers 0..k only.

    ``needed`` maps a site to the layers read there; k is the deepest of them. ``inputs`` are the
    processor's left-padded inputs. The values equal a full forward's (see the tests).
    """
    inputs = to_model(inputs, model)
    position_ids = generation_position_ids(model, inputs)
    return run_to_exit(model, dict(inputs, position_ids=position_ids, use_cache=False), needed)


def run_to_exit(
    model: nn.Module, forward_kwargs: Mapping[str, Any], needed: Mapping[str, Sequence[int]]
) -> dict[tuple[str, int], torch.Tensor]:
    """:func:`early_exit_activations` from the model's forward arguments, already on its device
    (position ids included). With a KV cache among them, layers 0..k read and extend it, the
    exit layer included (superneurons.prefix_cache)."""
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
    with (
        torch.inference_mode(),
        _replaced_forward(layer, adapter.exit_forward(layer, at_exit, exit_records)),
        trace_last_position(earlier) as records,
        suppress(StopForward),
    ):
        # The exit layer aborts the forward before any logits exist.
        model(**forward_kwargs)
    if not exit_records:
        raise RuntimeError(
            f"the forward never reached layer {exit_layer} of {type(model).__name__}"
        )
    result = {(name.split(".")[0], int(name.split(".")[1])): v for name, v in records.items()}
    result.update({(site, exit_layer): exit_records[site] for site in at_exit})
    return result
