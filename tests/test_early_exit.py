"""Early exit reads exactly the scalars a full forward computes, for every architecture."""

from __future__ import annotations

import pytest
import torch

from models.tiny import BUILDERS
from superneurons.capture import capture_forward
from superneurons.early_exit import early_exit_activations
from superneurons.models.adapters import SITES, adapter_for

QUESTIONS = ["is there a red cube in the image ?", "how many ?"]


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tiny(request):
    return BUILDERS[request.param]()


@pytest.mark.parametrize("exit_sites", [SITES, ("attn",), ("mlp",), ("resid",)])
def test_early_exit_equals_the_full_forward_at_every_exit_layer(tiny, exit_sites):
    model = tiny.model
    inputs = tiny.inputs(QUESTIONS)  # left-padded: the rows have different lengths
    full = capture_forward(model, inputs, SITES)
    for k in range(adapter_for(model).n_layers(model)):
        needed = {site: ([0, k] if site in exit_sites else [0]) for site in SITES}
        if k == 0:
            needed = {site: [0] for site in exit_sites}
        got = early_exit_activations(model, inputs, needed)
        assert set(got) == {(site, layer) for site, layers in needed.items() for layer in layers}
        for (site, layer), value in got.items():
            torch.testing.assert_close(value, full[site][:, layer], atol=1e-5, rtol=1e-5)


def test_early_exit_never_runs_later_layers_or_the_lm_head(tiny):
    model = tiny.model
    adapter = adapter_for(model)
    calls = []
    later = [adapter.decoder_layers(model)[1]] if adapter.n_layers(model) > 1 else []
    handles = [
        m.register_forward_hook(lambda *a, m=m: calls.append(m)) for m in [*later, model.lm_head]
    ]
    try:
        early_exit_activations(model, tiny.inputs(QUESTIONS), {"resid": [0]})
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []


def test_a_layer_that_is_not_llama_style_is_refused_not_computed_wrongly():
    from superneurons.errors import ModelError

    tiny = BUILDERS["llava"]()
    layer = adapter_for(tiny.model).decoder_layers(tiny.model)[0]
    # A Gemma-style extra norm around the MLP: the default exit layer would skip it.
    layer.pre_feedforward_layernorm = torch.nn.LayerNorm(layer.mlp.down_proj.out_features)
    with pytest.raises(ModelError, match=r"pre_feedforward_layernorm.*own exit_forward"):
        early_exit_activations(tiny.model, tiny.inputs(QUESTIONS), {"resid": [0]})


def test_an_adapter_can_bring_its_own_exit_layer(monkeypatch):
    from dataclasses import replace

    from superneurons.capture import StopForward
    from superneurons.models import adapters

    tiny = BUILDERS["llava"]()
    default = adapters.ADAPTERS["llava"]
    seen = []

    class OwnExit(type(default)):
        def exit_forward(self, layer, sites, records):
            def forward(hidden_states, *args, **kwargs):
                seen.append(layer)
                records.update({site: hidden_states[:, -1] for site in sites})
                raise StopForward

            return forward

    monkeypatch.setitem(adapters.ADAPTERS, "llava", OwnExit(**vars(replace(default))))
    got = early_exit_activations(tiny.model, tiny.inputs(QUESTIONS), {"resid": [1]})
    assert seen == [adapter_for(tiny.model).decoder_layers(tiny.model)[1]]
    full = capture_forward(tiny.model, tiny.inputs(QUESTIONS), ["resid"])
    torch.testing.assert_close(got["resid", 1], full["resid"][:, 0], atol=1e-5, rtol=1e-5)
