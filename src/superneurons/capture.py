"""Activations at the first generated token, and the model's own answer, from one ``generate``.

The first generated token is produced from the hidden states at the last prompt position of the
prefill. With left padding that is position ``-1`` of every row, so a hook only has to keep
``[:, -1, :]`` of the first forward call; the decode steps that follow are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from superneurons.fast_inputs import fast_inputs
from superneurons.models.adapters import SITES, adapter_for


class StopForward(Exception):
    """Raised by a hook once every target is recorded; swallowed by :func:`trace_last_position`."""


def _first_tensor(value: Any) -> torch.Tensor:
    # Decoder layers return a tensor in transformers 5, a tuple (hidden, …) in older releases.
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"cannot find a hidden-state tensor in {type(value).__name__}")


@contextmanager
def trace_last_position(
    targets: Mapping[str, tuple[nn.Module, str]], once: bool = True, stop: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``[:, -1, :]`` of each target's input or output while the block runs.

    ``targets`` maps a name to ``(module, "input" | "output")``. Yields a dict that fills with
    ``name -> tensor (batch, width)`` (detached clones, in the model's dtype and device). With
    ``once=True`` only a module's first call is kept (the prefill of ``generate``); otherwise the
    latest call wins. With ``stop=True`` the forward is aborted as soon as every target has been
    recorded, and the abort is swallowed on exit. Hooks are removed on exit, even on error.
    """
    records: dict[str, torch.Tensor] = {}

    def record(name: str, value: Any) -> None:
        if once and name in records:
            return
        records[name] = _first_tensor(value)[:, -1, :].detach().clone()
        if stop and len(records) == len(targets):
            raise StopForward

    def output_hook(name: str):
        return lambda module, args, output: record(name, output)

    def input_hook(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            record(name, args[0] if args else next(iter(kwargs.values())))

        return hook

    handles = []
    try:
        for name, (module, point) in targets.items():
            if point == "output":
                handles.append(module.register_forward_hook(output_hook(name)))
            elif point == "input":
                handles.append(module.register_forward_pre_hook(input_hook(name), with_kwargs=True))
            else:
                raise ValueError(f"{name}: hook point must be 'input' or 'output', not {point!r}")
        yield records
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class CaptureResult:
    """``activations[site]``: float tensor (batch, n_layers, width) on the CPU, in the model's
    dtype; ``answers``: the model's greedy answers, decoded without special tokens, stripped."""

    activations: dict[str, torch.Tensor]
    answers: list[str]


def prepare_inputs(processor: Any, images: list[Image.Image], prompts: list[str]) -> Any:
    """Left-padded processor inputs for one image per chat-formatted prompt: the processor's own
    tensors, built by the fast path where it has them (superneurons.fast_inputs)."""
    return fast_inputs(processor, images, prompts)


def to_model(inputs: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """Processor outputs on the model's device; floating-point ones (pixel values) in its dtype,
    so half-precision checkpoints work; token ids stay integer."""

    def move(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            return value.to(model.device, model.dtype)
        return value.to(model.device)

    return {key: move(value) for key, value in inputs.items()}


def _stack(
    records: Mapping[str, torch.Tensor], sites: Sequence[str], layers: Sequence[int]
) -> dict[str, torch.Tensor]:
    return {
        site: torch.stack([records[f"{site}.{layer}"] for layer in layers], dim=1).cpu()
        for site in sites
    }


def capture(
    model: nn.Module,
    processor: Any,
    images: list[Image.Image],
    prompts: list[str],
    sites: Sequence[str] = SITES,
    max_new_tokens: int = 128,
) -> CaptureResult:
    """Greedy-generate answers and record every site of every layer at the last prompt position.

    ``prompts`` are already chat-formatted (``apply_chat_template(..., add_generation_prompt=
    True)``), one image each. Activations and answers come from the same ``generate`` call.
    """
    inputs = prepare_inputs(processor, images, prompts)
    return capture_prepared(model, processor, inputs, sites, max_new_tokens)


def capture_prepared(
    model: nn.Module,
    processor: Any,
    inputs: Mapping[str, Any],
    sites: Sequence[str] = SITES,
    max_new_tokens: int = 128,
) -> CaptureResult:
    """:func:`capture` from the processor's output (``prepare_inputs``) already made."""
    adapter = adapter_for(model)
    layers = range(adapter.n_layers(model))
    inputs = to_model(inputs, model)
    with torch.inference_mode(), trace_last_position(adapter.targets(model, sites)) as records:
        output = model.generate(
            **inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    answers = processor.batch_decode(new_tokens, skip_special_tokens=True)
    return CaptureResult(_stack(records, sites, layers), [answer.strip() for answer in answers])


def capture_forward(
    model: nn.Module,
    inputs: Mapping[str, Any],
    sites: Sequence[str] = SITES,
    layers: Iterable[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Activations ``site -> (batch, len(layers), width)`` at the last position, no answers.

    Runs the prefill through ``generate`` so position ids (left padding, Qwen's M-RoPE) are
    built exactly as in :func:`capture`, and stops as soon as the last requested layer is done:
    neither the later layers nor the LM head run.
    """
    adapter = adapter_for(model)
    layers = list(range(adapter.n_layers(model)) if layers is None else layers)
    targets = adapter.targets(model, sites, layers)
    inputs = to_model(inputs, model)
    with (
        torch.inference_mode(),
        trace_last_position(targets, once=True, stop=True) as records,
    ):
        model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=1)
    return _stack(records, sites, layers)
