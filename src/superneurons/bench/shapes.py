"""Real architectures' shapes with random weights, for speed benchmarks without the checkpoints.

The configs are written out from the published ``config.json`` files (the weights cannot be
downloaded here); weights are random bf16 (one seeded random block, tiled), built on the device
they run on: only shapes matter for speed.
Inputs are built as each model's processor would: the same number of image and text tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.initialization import no_init_weights

PROMPT_TEXT_TOKENS = 64  # system prompt, question and answer instruction, as in LLaVA's POPE eval


DEPTHS = {"llava-1.5-7b": 32, "qwen3-vl-4b": 36}  # decoder layers, as published


@dataclass
class ShapeModel:
    name: str
    model: torch.nn.Module
    make_inputs: callable  # batch size -> model inputs (dict of tensors)


def _random_model(
    cls, config, dtype: torch.dtype, seed: int, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The model with tiled seeded random weights, built directly on ``device``."""
    with torch.device(device), no_init_weights():
        model = cls._from_config(config, dtype=dtype)
    # Billions of independent draws take minutes on two cores; tiling one seeded block of
    # random values is as good for timing and takes seconds.
    block = torch.randn(1 << 20, generator=torch.Generator().manual_seed(seed)).mul_(0.02)
    block = block.to(device, dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                flat = param.view(-1)
                for start in range(0, flat.numel(), block.numel()):
                    end = min(start + block.numel(), flat.numel())
                    flat[start:end].copy_(block[: end - start])
    return model.eval()


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def llava_1_5_7b(
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    text_layers: int = DEPTHS["llava-1.5-7b"],
    device: str | torch.device = "cpu",
) -> ShapeModel:
    """LLaVA-1.5-7b: CLIP ViT-L/14 at 336 px (576 image tokens) → Vicuna-7B (32 layers; fewer
    with ``text_layers``, which times an early exit at that depth alike with less memory)."""
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        ),
        text_config=LlamaConfig(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=text_layers,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            pad_token_id=0,
        ),
        image_token_index=32000,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=576,
        pad_token_id=0,
    )
    model = _random_model(LlavaForConditionalGeneration, config, dtype, seed, device)
    processor = CLIPImageProcessorPil(size={"height": 336, "width": 336}, do_center_crop=False)
    pixels = processor(_image(640, 480, seed), return_tensors="pt")["pixel_values"]

    def make_inputs(batch: int) -> dict:
        rng = torch.Generator().manual_seed(seed)
        text = torch.randint(2, 32000, (batch, PROMPT_TEXT_TOKENS), generator=rng)
        image = torch.full((batch, 576), 32000)
        ids = torch.cat([text[:, :40], image, text[:, 40:]], dim=1)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "pixel_values": pixels.repeat(batch, 1, 1, 1),
        }

    return ShapeModel("llava-1.5-7b (random weights)", model, make_inputs)


def qwen3_vl_4b(
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    text_layers: int = DEPTHS["qwen3-vl-4b"],
    device: str | torch.device = "cpu",
) -> ShapeModel:
    """Qwen3-VL-4B-Instruct: 24-layer ViT with DeepStack → 36-layer decoder (or ``text_layers``);
    a 640×480 image."""
    config = Qwen3VLConfig(
        vision_config=dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=2560,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[5, 11, 17],
        ),
        text_config=dict(
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=text_layers,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            max_position_embeddings=262144,
            rms_norm_eps=1e-6,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        ),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )
    model = _random_model(Qwen3VLForConditionalGeneration, config, dtype, seed, device)
    processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2)
    image = processor(_image(640, 480, seed), return_tensors="pt")
    n_image_tokens = int(image["image_grid_thw"].prod()) // 4

    def make_inputs(batch: int) -> dict:
        rng = torch.Generator().manual_seed(seed)
        text = torch.randint(0, 151000, (batch, PROMPT_TEXT_TOKENS), generator=rng)
        image_ids = torch.tensor([151652] + [151655] * n_image_tokens + [151653]).repeat(batch, 1)
        ids = torch.cat([text[:, :10], image_ids, text[:, 10:]], dim=1)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == 151655).long(),
            "pixel_values": image["pixel_values"].repeat(batch, 1),
            "image_grid_thw": image["image_grid_thw"].repeat(batch, 1),
        }

    return ShapeModel("qwen3-vl-4b (random weights)", model, make_inputs)


SHAPES = {"llava-1.5-7b": llava_1_5_7b, "qwen3-vl-4b": qwen3_vl_4b}
