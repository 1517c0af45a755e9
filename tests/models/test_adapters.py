"""Adapters and capture on tiny random-weight models of every supported architecture.

What transformers 5.24 does, checked here rather than assumed:

- ``output_hidden_states`` is built by forward hooks on the decoder layers (``capture_outputs``):
  ``hidden_states[0]`` is the input of layer 0 (the merged text+image embeddings) and
  ``hidden_states[i + 1]`` the output of layer ``i``, except the last entry, which is replaced
  by ``last_hidden_state``, i.e. the output of layer ``L - 1`` *after the final norm*. So resid
  of layers ``0..L-2`` equals ``hidden_states[1..L-1]`` and resid of layer ``L - 1`` equals
  ``hidden_states[L]`` once the decoder's ``norm`` is applied to it.
- Qwen3-VL adds DeepStack visual features to the hidden states after layers 0..k, in the decoder
  stack's loop, outside the layer: resid (like ``hidden_states``) is the layer output before the
  add, and the add touches image positions only, never the last prompt position.
- Inputs come from each model's real processor class around a word-level tokenizer, except for
  SmolVLM, whose processor cannot be built without ``num2words`` and torchvision; its inputs are
  built by hand as that processor does (see ``tiny.SmolVLMTinyProcessor``).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.tiny import BUILDERS, VOCAB, Tiny, chat_prompts, tiny_images, tiny_llama_text
from superneurons.capture import capture, capture_forward, trace_last_position
from superneurons.models.adapters import (
    ADAPTERS,
    SITES,
    UnsupportedModelError,
    adapter_for,
    supported_classes,
)

QUESTIONS = ["is there a red cube in the image ?", "how many ?"]
DECODER_PATHS = {
    "llava": "model.language_model",
    "qwen2_vl": "model.language_model",
    "qwen2_5_vl": "model.language_model",
    "qwen3_vl": "model.language_model",
    "idefics3": "model.text_model",
    "smolvlm": "model.text_model",
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def tiny(request) -> Tiny:
    return BUILDERS[request.param]()


def _hook_counts(model: torch.nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


def test_every_architecture_has_a_tiny_model():
    assert set(BUILDERS) == set(ADAPTERS) == set(DECODER_PATHS)


def test_adapter_finds_the_decoder(tiny: Tiny):
    model = tiny.model
    adapter = adapter_for(model)
    assert type(model).__name__ in adapter.model_classes
    stack = adapter.language_model(model)
    assert stack is model.get_submodule(DECODER_PATHS[adapter.name])
    assert hasattr(stack, "norm") and hasattr(stack, "embed_tokens")
    assert adapter.decoder_layers(model) is stack.layers
    assert adapter.text_config(model) is model.config.text_config
    assert adapter.n_layers(model) == model.config.text_config.num_hidden_layers == 3


def test_resid_equals_hidden_states(tiny: Tiny):
    model = tiny.model
    adapter = adapter_for(model)
    n = adapter.n_layers(model)
    inputs = tiny.inputs(QUESTIONS)
    with torch.inference_mode(), trace_last_position(adapter.targets(model, ["resid"])) as rec:
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    assert len(hidden) == n + 1
    for layer in range(n - 1):
        torch.testing.assert_close(
            rec[f"resid.{layer}"], hidden[layer + 1][:, -1], atol=1e-5, rtol=0
        )
    last = rec[f"resid.{n - 1}"]
    norm = adapter.language_model(model).norm
    with torch.inference_mode():
        torch.testing.assert_close(norm(last), hidden[n][:, -1], atol=1e-5, rtol=0)
    # The last entry really is normed: the raw layer output is far from it.
    assert (last - hidden[n][:, -1]).abs().max() > 1e-2


def test_site_widths(tiny: Tiny):
    model = tiny.model
    adapter = adapter_for(model)
    config = adapter.text_config(model)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    expected = {
        "resid": config.hidden_size,
        "mlp": config.intermediate_size,
        "attn": config.num_attention_heads * head_dim,
    }
    assert {site: adapter.site_width(model, site) for site in SITES} == expected
    acts = capture_forward(model, tiny.inputs(QUESTIONS))
    for site in SITES:
        assert acts[site].shape == (len(QUESTIONS), adapter.n_layers(model), expected[site])
        assert acts[site].dtype == model.dtype


def test_hooks_are_removed(tiny: Tiny):
    model = tiny.model
    targets = adapter_for(model).targets(model)
    inputs = tiny.inputs(QUESTIONS)
    before = _hook_counts(model)
    with torch.inference_mode(), trace_last_position(targets):
        assert _hook_counts(model) != before
        model(**inputs)
    assert _hook_counts(model) == before
    with pytest.raises(RuntimeError, match="boom"), trace_last_position(targets):
        raise RuntimeError("boom")
    assert _hook_counts(model) == before


def test_once_keeps_only_the_prefill(tiny: Tiny):
    model = tiny.model
    adapter = adapter_for(model)
    targets = adapter.targets(model)
    inputs = tiny.inputs(QUESTIONS)
    calls = []
    counter = adapter.decoder_layers(model)[0].register_forward_hook(lambda *_: calls.append(1))
    generate = dict(do_sample=False, max_new_tokens=3, min_new_tokens=3)
    try:
        with torch.inference_mode(), trace_last_position(targets, once=True) as first:
            model.generate(**inputs, **generate)
        with torch.inference_mode(), trace_last_position(targets, once=False) as latest:
            model.generate(**inputs, **generate)
    finally:
        counter.remove()
    assert len(calls) == 6  # prefill + 2 decode steps, twice
    prefill = capture_forward(model, inputs)
    for site in SITES:
        for layer in range(adapter.n_layers(model)):
            name = f"{site}.{layer}"
            torch.testing.assert_close(first[name], prefill[site][:, layer], atol=1e-5, rtol=0)
            assert not torch.allclose(latest[name], first[name], atol=1e-4)


def test_capture_matches_capture_forward(tiny: Tiny):
    """Answers and activations come from one generate; its prefill is what capture_forward runs."""
    images = tiny_images(len(QUESTIONS), tiny.image_size)
    prompts = chat_prompts(tiny.processor, QUESTIONS)
    result = capture(tiny.model, tiny.processor, images, prompts, max_new_tokens=2)
    assert len(result.answers) == len(QUESTIONS)
    assert all(isinstance(answer, str) for answer in result.answers)
    alone = capture_forward(tiny.model, tiny.inputs(QUESTIONS))
    for site in SITES:
        torch.testing.assert_close(result.activations[site], alone[site], atol=1e-5, rtol=0)


def test_capture_forward_stops_after_the_last_requested_layer(tiny: Tiny):
    model = tiny.model
    adapter = adapter_for(model)
    calls = []
    layers = adapter.decoder_layers(model)
    counter = layers[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        early = capture_forward(model, tiny.inputs(QUESTIONS), sites=["resid", "mlp"], layers=[0])
    finally:
        counter.remove()
    assert calls == []
    assert set(early) == {"resid", "mlp"}
    full = capture_forward(model, tiny.inputs(QUESTIONS), sites=["resid", "mlp"])
    for site in early:
        assert early[site].shape[1] == 1
        torch.testing.assert_close(early[site][:, 0], full[site][:, 0], atol=1e-6, rtol=0)


def test_capture_llava_left_padded_batch_equals_single_runs():
    tiny = BUILDERS["llava"]()
    questions = ["is there a small red cube left of the blue sphere ?", "how many ?"]
    images = tiny_images(2, tiny.image_size)
    prompts = chat_prompts(tiny.processor, questions)
    tokenizer = tiny.processor.tokenizer
    tokenizer.padding_side = "right"
    batch = capture(tiny.model, tiny.processor, images, prompts, max_new_tokens=4)
    assert tokenizer.padding_side == "right"  # restored
    n_layers = adapter_for(tiny.model).n_layers(tiny.model)
    assert len(batch.answers) == 2 and all(isinstance(a, str) for a in batch.answers)
    for site in SITES:
        width = adapter_for(tiny.model).site_width(tiny.model, site)
        assert batch.activations[site].shape == (2, n_layers, width)
    # The prompts differ in length, so the shorter row was left-padded.
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert lengths[0] != lengths[1]
    for i in range(2):
        single = capture(
            tiny.model, tiny.processor, images[i : i + 1], prompts[i : i + 1], max_new_tokens=4
        )
        for site in SITES:
            torch.testing.assert_close(
                batch.activations[site][i], single.activations[site][0], atol=1e-4, rtol=0
            )


def test_qwen3_vl_deepstack_lands_outside_resid():
    tiny = BUILDERS["qwen3_vl"]()
    model = tiny.model
    layers = adapter_for(model).decoder_layers(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        layers[0].register_forward_hook(lambda m, a, out: seen.setdefault("out0", out)),
        layers[1].register_forward_pre_hook(lambda m, a: seen.setdefault("in1", a[0])),
    ]
    inputs = tiny.inputs(QUESTIONS)
    try:
        with torch.inference_mode():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    image = inputs["input_ids"] == VOCAB["<|image_pad|>"]
    delta = (seen["in1"] - seen["out0"]).abs().amax(-1)
    assert (delta[image] > 1e-4).all()  # DeepStack features added between layers 0 and 1
    assert (delta[~image] == 0).all()  # text positions, the last one included, untouched


def test_trace_accepts_tuple_outputs():
    """Older transformers releases return (hidden, ...) tuples from decoder layers."""

    class TupleLayer(torch.nn.Module):
        def forward(self, x):
            return x * 2, None

    layer = TupleLayer()
    x = torch.arange(12.0).reshape(1, 3, 4)
    with trace_last_position({"resid.0": (layer, "output"), "in": (layer, "input")}) as rec:
        layer(x)
    torch.testing.assert_close(rec["resid.0"], x[:, -1] * 2)
    torch.testing.assert_close(rec["in"], x[:, -1])


def test_unsupported_model_is_refused_clearly():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**tiny_llama_text()))
    with pytest.raises(UnsupportedModelError) as error:
        adapter_for(model)
    message = str(error.value)
    assert "LlamaForCausalLM" in message
    assert all(cls in message for cls in supported_classes())


def test_subclass_of_a_supported_model_is_accepted():
    tiny = BUILDERS["llava"]()
    subclass = type("MyLlava", (type(tiny.model),), {})
    tiny.model.__class__ = subclass
    assert adapter_for(tiny.model).name == "llava"


def test_unknown_site_and_hook_point_are_refused():
    tiny = BUILDERS["llava"]()
    adapter = adapter_for(tiny.model)
    with pytest.raises(ValueError, match="unknown site"):
        adapter.site_module(tiny.model, "heads", 0)
    before = _hook_counts(tiny.model)
    targets = {"ok": adapter.site_module(tiny.model, "mlp", 0)}
    targets["bad"] = (adapter.site_module(tiny.model, "resid", 0)[0], "middle")
    with pytest.raises(ValueError, match="hook point"), trace_last_position(targets):
        pass
    assert _hook_counts(tiny.model) == before
