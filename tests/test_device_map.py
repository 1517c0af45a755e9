"""A model placed by an explicit device map (accelerate's hooks; a layer offloaded to disk):
capture, the weights fingerprint and early exit are those of the model loaded whole."""

from __future__ import annotations

import json

import pytest
import torch

from command import superneurons
from models.tiny import tiny_llava
from superneurons.capture import capture_forward
from superneurons.early_exit import early_exit_activations
from superneurons.models.adapters import SITES, adapter_for
from superneurons.models.fingerprint import model_fingerprint
from superneurons.models.loading import load_model

QUESTIONS = ["is there a red cube in the image ?", "how many ?"]
OFFLOADED = 1  # the decoder layer kept on disk


def _device_map(model) -> dict[str, str]:
    """Every top module on the CPU, decoder layer ``OFFLOADED`` on disk."""
    placement = {
        "model.vision_tower": "cpu",
        "model.multi_modal_projector": "cpu",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.norm": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    for k in range(adapter_for(model).n_layers(model)):
        placement[f"model.language_model.layers.{k}"] = "disk" if k == OFFLOADED else "cpu"
    return placement


@pytest.fixture(scope="module")
def placed(tiny_llava_checkpoint):
    """(the model loaded whole, the same checkpoint through the device map)."""
    whole = load_model(str(tiny_llava_checkpoint), "fp32", "cpu")
    return whole, load_model(
        str(tiny_llava_checkpoint), "fp32", "cpu", device_map=_device_map(whole.model)
    )


def test_the_map_offloads_a_layer_behind_accelerate_hooks(placed):
    _, mapped = placed
    layer = adapter_for(mapped.model).decoder_layers(mapped.model)[OFFLOADED]
    assert hasattr(layer, "_hf_hook")
    assert all(p.device.type == "meta" for p in layer.parameters())  # loaded at each call


def test_capture_and_the_fingerprint_are_the_whole_models(placed):
    whole, mapped = placed
    inputs = tiny_llava().inputs(QUESTIONS)
    full, got = (
        capture_forward(whole.model, inputs, SITES),
        capture_forward(mapped.model, inputs, SITES),
    )
    for site in SITES:
        assert torch.equal(got[site], full[site]), site
    assert model_fingerprint(mapped.model) == model_fingerprint(whole.model)


def test_early_exit_at_every_layer_matches_and_keeps_the_hooks(placed):
    whole, mapped = placed
    inputs = tiny_llava().inputs(QUESTIONS)
    layers = adapter_for(mapped.model).decoder_layers(mapped.model)
    hooked = layers[OFFLOADED].forward
    for k in range(len(layers)):
        needed = {site: [k] for site in SITES}
        ours = early_exit_activations(mapped.model, inputs, needed)
        theirs = early_exit_activations(whole.model, inputs, needed)
        for key, value in ours.items():
            torch.testing.assert_close(value, theirs[key], atol=1e-5, rtol=1e-5)
    assert layers[OFFLOADED].forward is hooked  # accelerate's forward is back in place
    assert torch.equal(
        capture_forward(mapped.model, inputs, ["resid"])["resid"],
        capture_forward(whole.model, inputs, ["resid"])["resid"],
    )


def _questions(root) -> str:
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(root / "red.png")
    rows = [{"id": f"q{i}", "image": "red.png", "question": f"Is it {i}?",
             "label": ("yes", "no")[i % 2]} for i in range(8)]  # fmt: skip
    path = root / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_extract_with_a_device_map_file_writes_the_same_store(
    tmp_path, tiny_llava_checkpoint, placed
):
    whole, _ = placed
    questions = _questions(tmp_path)
    placement = tmp_path / "map.json"
    placement.write_text(json.dumps(_device_map(whole.model)))
    args = ["extract", "--jsonl", questions, "--model", tiny_llava_checkpoint, "--n", "8",
            "--batch-size", "3", "--max-new-tokens", "2", "--device", "cpu"]  # fmt: skip
    plain = superneurons(*args, "--out", tmp_path / "plain")
    mapped = superneurons(*args, "--out", tmp_path / "mapped", "--device-map", placement)
    assert plain.returncode == 0 and mapped.returncode == 0, mapped.stderr
    files = {p.name: p.read_bytes() for p in (tmp_path / "plain").iterdir() if p.is_file()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "mapped").iterdir() if p.is_file()} == files


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "neither one of auto"),
        ("{not json", "not a JSON file"),
        ('{"model.vision_tower": "gpu7"}', "'model.vision_tower'"),
        (
            '{"model.language_model.layerz": "cpu", "": "cpu"}',
            "no module 'model.language_model.layerz'",
        ),
        ('{"model.vision_tower": "cpu"}', "are not placed"),
    ],
)
def test_a_bad_device_map_is_one_error_before_any_work(
    tmp_path, tiny_llava_checkpoint, content, expected
):
    placement = tmp_path / "map.json"
    if content is not None:
        placement.write_text(content)
    done = superneurons(
        "extract", "--jsonl", _questions(tmp_path), "--model", tiny_llava_checkpoint, "--n", "8",
        "--out", tmp_path / "store", "--device-map", placement,
    )  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "store").exists()
