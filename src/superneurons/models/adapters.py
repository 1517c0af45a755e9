"""Per-architecture adapters: where each activation site lives in a VLM's language model.

The rest of the package speaks of *sites* and layer numbers only:

- ``resid``: output of decoder layer ``i`` (the residual stream after layer ``i``), width hidden;
- ``mlp``: input of ``layers[i].mlp.down_proj`` (the MLP neurons ``act(gate) * up``), width
  ``intermediate_size``;
- ``attn``: input of ``layers[i].self_attn.o_proj`` (the concatenated head outputs, what SAVs
  split per head), width ``num_heads * head_dim``.

One :class:`Adapter` per architecture says where the decoder stack is and, relative to one
decoder layer, where the MLP and attention sites are, and how early exit runs the exit layer
(``exit_forward``). Adding an architecture means adding one adapter to :data:`ADAPTERS`; nothing
downstream changes. Paths checked against transformers 5.24.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn
from transformers import PretrainedConfig

from superneurons.errors import ConfigError, ModelError

SITES: tuple[str, ...] = ("resid", "mlp", "attn")
Site = Literal["resid", "mlp", "attn"]
HookPoint = Literal["input", "output"]


class UnsupportedModelError(ModelError):
    """The model's class has no adapter."""


@dataclass(frozen=True)
class Adapter:
    """Where the sites live in one architecture.

    ``language_model_path`` is the dotted path, from the top-level model, of the decoder stack
    (the module holding ``.layers``, ``.norm`` and ``.embed_tokens``); ``mlp_path`` and
    ``attn_path`` are dotted paths relative to one decoder layer of the module whose *input* is
    the site.
    """

    name: str
    model_classes: tuple[str, ...]
    language_model_path: str
    mlp_path: str = "mlp.down_proj"
    attn_path: str = "self_attn.o_proj"
    # The parts of one decoder layer that early exit runs (paths relative to the layer).
    attention_path: str = "self_attn"
    mlp_block_path: str = "mlp"
    norm_paths: tuple[str, str] = ("input_layernorm", "post_attention_layernorm")
    # The pip extra (pyproject.toml) holding what its processor imports beyond transformers.
    extra: str | None = None
    # Whether cached vision tower + projector outputs may stand in for an image's pixels: its
    # ``pixel_values`` hold one row per image and its model takes ``mm_encoder_outputs``
    # (superneurons.image_cache).
    caches_image_features: bool = False
    # The config attribute holding the id of the token that ends an image's block in the prompt,
    # for reusing the keys and values of a prompt's image prefix (superneurons.prefix_cache).
    image_end_token: str | None = None

    def exit_forward(self, layer: nn.Module, sites: Sequence[str], records: dict):
        """A replacement ``forward`` for the exit layer ``layer``: it records ``sites`` at the
        last position into ``records`` and aborts the forward (``StopForward``). The default is
        the Llama-style layer's (:mod:`superneurons.models.exit_layer`); an architecture whose
        layers differ overrides this in its adapter."""
        from superneurons.models.exit_layer import llama_exit_forward

        return llama_exit_forward(self, layer, sites, records)

    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack (``.layers``, ``.norm``) of ``model``."""
        return model.get_submodule(self.language_model_path)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).layers

    def text_config(self, model: nn.Module) -> PretrainedConfig:
        """The language model's config (``num_hidden_layers``, ``hidden_size``, …)."""
        return self.language_model(model).config

    def n_layers(self, model: nn.Module) -> int:
        return len(self.decoder_layers(model))

    def site_module(self, model: nn.Module, site: str, layer: int) -> tuple[nn.Module, HookPoint]:
        """The module whose input or output is ``site`` at ``layer``, and which of the two."""
        block = self.decoder_layers(model)[layer]
        if site == "resid":
            return block, "output"
        if site == "mlp":
            return block.get_submodule(self.mlp_path), "input"
        if site == "attn":
            return block.get_submodule(self.attn_path), "input"
        raise ConfigError(f"unknown site {site!r}; known: {SITES}")

    def site_width(self, model: nn.Module, site: str) -> int:
        """Scalars per position at ``site`` in every layer.

        Read from the modules themselves rather than the config, because configs disagree on
        how they spell ``head_dim`` (Qwen2-VL derives it, Qwen3-VL and Llama may set it).
        """
        if site == "resid":
            return self.text_config(model).hidden_size
        module, _ = self.site_module(model, site, 0)
        return module.in_features

    def n_heads(self, model: nn.Module) -> int:
        """Attention heads per layer: the ``attn`` site is ``n_heads × head_dim`` wide."""
        return int(self.text_config(model).num_attention_heads)

    def targets(
        self, model: nn.Module, sites: Sequence[str] = SITES, layers: Iterable[int] | None = None
    ) -> dict[str, tuple[nn.Module, HookPoint]]:
        """Hook targets named ``"{site}.{layer}"`` for every site and layer (all by default)."""
        layers = range(self.n_layers(model)) if layers is None else layers
        return {
            f"{site}.{layer}": self.site_module(model, site, layer)
            for site in sites
            for layer in layers
        }


# transformers 5.x nests the decoder stack inside the base model (``model.model``); older 4.x
# releases had it at ``language_model.model``: one more reason to keep the paths here only.
ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        # Also the project's embedded default (a LLaVA over a small Llama decoder).
        Adapter(
            "llava",
            ("LlavaForConditionalGeneration",),
            "model.language_model",
            caches_image_features=True,
            image_end_token="image_token_id",
        ),
        Adapter(
            "qwen2_vl",
            ("Qwen2VLForConditionalGeneration",),
            "model.language_model",
            extra="qwen",
            image_end_token="vision_end_token_id",
        ),
        Adapter(
            "qwen2_5_vl",
            ("Qwen2_5_VLForConditionalGeneration",),
            "model.language_model",
            extra="qwen",
            image_end_token="vision_end_token_id",
        ),
        # DeepStack adds visual features at image positions *after* layers 0..k, outside the
        # decoder layer: resid (the layer output) excludes them, as transformers' hidden_states
        # do; the last prompt position is a text token and never receives them.
        Adapter(
            "qwen3_vl",
            ("Qwen3VLForConditionalGeneration",),
            "model.language_model",
            extra="qwen",
            image_end_token="vision_end_token_id",
        ),
        Adapter("idefics3", ("Idefics3ForConditionalGeneration",), "model.text_model"),
        Adapter(
            "smolvlm", ("SmolVLMForConditionalGeneration",), "model.text_model", extra="smolvlm"
        ),
    )
}


def supported_classes() -> list[str]:
    return [cls for adapter in ADAPTERS.values() for cls in adapter.model_classes]


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``'s class (or its nearest supported base class)."""
    by_class = {cls: adapter for adapter in ADAPTERS.values() for cls in adapter.model_classes}
    for cls in type(model).__mro__:
        if cls.__name__ in by_class:
            return by_class[cls.__name__]
    raise UnsupportedModelError(
        f"no adapter for {type(model).__name__}; supported: {', '.join(supported_classes())}"
    )
