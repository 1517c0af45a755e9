"""Training the embedded model (``training/``): its parts, and a tiny training run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from superneurons.errors import DataError
from superneurons.models.embedded.shipped import WEIGHTS_DIR

# ---------------------------------------------------------------- ground-truth supervision


def test_a_patch_belongs_to_the_largest_object_covering_an_eighth_of_it():
    from superneurons.models.embedded.architecture import IMAGE_SIZE, PATCH_SIZE
    from training.supervision import MIN_OBJECT_PIXELS, patch_owners

    object_map = np.full((IMAGE_SIZE, IMAGE_SIZE), -1)
    object_map[0, :MIN_OBJECT_PIXELS] = 0  # patch 0: object 0 covers exactly an eighth
    object_map[PATCH_SIZE - 1, 1:MIN_OBJECT_PIXELS] = 1  # and one pixel less of object 1
    object_map[0, PATCH_SIZE : PATCH_SIZE + MIN_OBJECT_PIXELS - 1] = 1  # patch 1: one pixel short
    object_map[PATCH_SIZE:, :] = 2  # the whole second patch row and below
    object_map[PATCH_SIZE, : MIN_OBJECT_PIXELS * 2] = 3  # patch 8: object 2 still has the most
    owners = patch_owners(object_map, n_objects=4)
    n = IMAGE_SIZE // PATCH_SIZE
    assert owners.shape == (n * n,)
    assert owners[0] == 0  # floor covers most of the patch; the larger object owns it
    assert owners[1] == -1
    assert owners[2:n].tolist() == [-1] * (n - 2)
    assert owners[n] == 2 and (owners[n:] == 2).all()


def test_grounding_labels_mark_the_patches_of_the_named_objects():
    from superneurons.data.scenes import iter_scenes, scene_questions
    from training.supervision import grounding_labels, patch_labels

    seen_roles = set()
    for scene, render in iter_scenes(seed=0, split="train", n=6):
        owner = patch_labels(render.object_map, scene.objects)["owner"]
        for q in scene_questions(scene, seed=0):
            labels = grounding_labels(owner, q.mentions)
            groups = q.mentions
            assert labels.shape == owner.shape
            for role, objects in enumerate(groups, start=1):
                assert set(owner[labels == role]) <= set(objects), q
                # Every patch an object owns is marked with that object's role.
                assert (labels[np.isin(owner, objects)] == role).all(), q
            assert (labels[~np.isin(owner, [o for g in groups for o in g])] == 0).all(), q
            if q.family == "existence" and q.label == "no":
                assert not labels.any(), q
            seen_roles |= set(labels.tolist())
    assert seen_roles == {0, 1, 2}


def test_balanced_cross_entropy_weighs_each_class_equally():
    import torch.nn.functional as F

    from training.supervision import balanced_cross_entropy

    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    rare = torch.tensor([0] * 9 + [2])
    per_class = [F.cross_entropy(logits[:9], rare[:9]), F.cross_entropy(logits[9:], rare[9:])]
    assert torch.allclose(balanced_cross_entropy(logits, rare), torch.stack(per_class).mean())
    even = torch.tensor([0, 1] * 5)
    assert torch.allclose(balanced_cross_entropy(logits, even), F.cross_entropy(logits, even))


def test_stage1_targets_are_the_attributes_then_the_patch_row_and_column():
    from training.vision import GRID, patch_targets

    labels = torch.randint(0, 5, (2, 4, GRID * GRID), dtype=torch.int8)
    targets = patch_targets(labels)
    assert targets.shape == (2, 6, GRID * GRID)
    assert (targets[:, :4] == labels).all()
    patch = 3 * GRID + 5
    assert targets[:, 4, patch].tolist() == [3, 3] and targets[:, 5, patch].tolist() == [5, 5]


# ---------------------------------------------------------------- tokenizer


def test_the_word_level_tokenizer_splits_words_and_punctuation_and_maps_the_rest_to_unk():
    from superneurons.models.embedded.architecture import UNKNOWN_TOKEN, build_tokenizer

    texts = ["Is there a red cube?", "What colour is it?\nA. red\nB. blue", "yes"]
    tokenizer = build_tokenizer(texts)
    # The vocabulary depends on the set of words, not on the order of the texts.
    assert build_tokenizer(texts[::-1]).get_vocab() == tokenizer.get_vocab()
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Is there a green cube?")["input_ids"])
    assert tokens == ["Is", "there", "a", UNKNOWN_TOKEN, "cube", "?"]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("<|im_start|>user\nB. red")["input_ids"])
    assert tokens == ["<|im_start|>", "user", "\n", "B", ".", "red"]
    ids = tokenizer("yes<|im_end|>")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "yes"
    assert ids[-1] == tokenizer.eos_token_id


# ---------------------------------------------------------------- a tiny training run


def tiny_config(**overrides):
    from training.train import TrainConfig

    settings = dict(
        scenes=24,
        draws=1,
        val_scenes=6,
        vision_steps=4,
        steps=10,
        existence_steps=3,
        decay_steps=4,
        warmup=2,
        batch=8,
        eval_every=5,
        workers=1,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def tiny_training(tmp_path_factory) -> Path:
    from training.train import train_default

    out = tmp_path_factory.mktemp("tiny-run")
    exported = train_default(out, tiny_config(), log=lambda _: None)
    assert exported == out / "export"
    return out


def test_train_default_exports_a_checkpoint_the_auto_classes_load(tiny_training):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from superneurons.data.prompts import chat_prompt

    export = tiny_training / "export"
    record = json.loads((export / "training.json").read_text())
    assert record["stage2_steps"] == 10
    assert [h["step"] for h in record["history"]] == [5, 10]
    assert {"existence", "attribute", "spatial", "color_choice", "yes_no"} <= set(
        record["held_out"]
    )
    processor = AutoProcessor.from_pretrained(export)
    model = AutoModelForImageTextToText.from_pretrained(export)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.text_config.num_hidden_layers == 8
    # The output layer is a matrix of its own (untied from the input embeddings), also reloaded.
    embeddings = model.get_input_embeddings().weight
    assert model.lm_head.weight.data_ptr() != embeddings.data_ptr()
    assert not torch.equal(model.lm_head.weight, embeddings)
    image = np.zeros((64, 64, 3), np.uint8)
    inputs = processor(
        images=image, text=chat_prompt(processor, "Is there a cube?"), return_tensors="pt"
    )
    out = model.generate(**inputs, do_sample=False, max_new_tokens=3)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_training_batches_are_the_processors_prompts_and_give_the_models_logits(tiny_training):
    """Stage 2 trains on what inference sees: the processor's token ids, and cached tower
    features in place of the image tokens give the full model's logits."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from superneurons.data.prompts import chat_prompt
    from training.pool import Pool
    from training.train import QuestionSet, forward

    processor = AutoProcessor.from_pretrained(tiny_training / "export")
    model = AutoModelForImageTextToText.from_pretrained(tiny_training / "export").eval()
    pool = Pool.load(tiny_training / "pool_val.pt")
    questions = QuestionSet(pool, processor)
    assert "color_choice" in questions.family  # options listed: "A. red" …
    for row in range(len(questions)):
        image = pool.images[pool.scene[row]].numpy()
        inputs = processor(
            images=image, text=chat_prompt(processor, pool.text[row]), return_tensors="pt"
        )
        assert inputs["input_ids"][0].tolist() == questions.ids[row], pool.text[row]
    rows = [0, len(questions) // 2, len(questions) - 1]
    with torch.no_grad():
        pixels = processor.image_processor(images=list(pool.images.numpy()), return_tensors="pt")
        tower = model.model.vision_tower(pixel_values=pixels["pixel_values"])
        logits, _ = forward(model, questions.batch(rows, tower.last_hidden_state[:, 1:]))
        for k, r in enumerate(rows):
            inputs = processor(
                images=pool.images[pool.scene[r]].numpy(),
                text=chat_prompt(processor, pool.text[r]),
                return_tensors="pt",
            )
            full = model(**inputs).logits[0, -1]
            assert torch.allclose(logits[k, 0], full, atol=1e-4)


def test_training_batches_attend_to_their_left_padding_in_place_of_the_templates_pads(
    tiny_training,
):
    from transformers import AutoProcessor

    from superneurons.models.embedded.architecture import LEADING_PADS
    from training.pool import Pool
    from training.train import QuestionSet

    processor = AutoProcessor.from_pretrained(tiny_training / "export")
    pool = Pool.load(tiny_training / "pool_val.pt")
    questions = QuestionSet(pool, processor)
    pad = processor.tokenizer.pad_token_id
    assert all(ids[:LEADING_PADS] == [pad] * LEADING_PADS for ids in questions.ids)
    assert all(ids[LEADING_PADS] != pad for ids in questions.ids)
    lengths = np.array([len(ids) for ids in questions.ids])
    rows = [int(lengths.argmax()), int(lengths.argmin())]
    features = torch.zeros(len(pool.images), 64, 64)
    batch = questions.batch(rows, features, attend_padding=True)
    assert (batch["attention_mask"] == 1).all()
    assert batch["position_ids"][1].tolist() == list(range(batch["input_ids"].shape[1]))
    for k, row in enumerate(rows):
        sequence = [*questions.ids[row][LEADING_PADS:], int(questions.answer[row])]
        assert batch["input_ids"][k, -len(sequence) :].tolist() == sequence
    # The longest question starts at position 0; the shortest after as many pads as it lacks.
    assert batch["input_ids"][0, 0] != pad
    padding = lengths.max() - lengths.min()
    assert padding > 0 and batch["input_ids"][1, :padding].tolist() == [pad] * padding
    # As the processor pads: the template's pads kept and attended, the padding masked.
    masked = questions.batch(rows, features)
    length = masked["input_ids"].shape[1]
    assert masked["attention_mask"][1].tolist() == [0] * padding + [1] * (length - padding)
    assert masked["input_ids"][1, padding : padding + LEADING_PADS].eq(pad).all()


def test_the_end_of_turn_token_adds_to_the_loss_only_when_asked(tiny_training):
    import torch.nn.functional as F
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.pool import Pool
    from training.train import QuestionSet, forward, stage2_loss

    processor = AutoProcessor.from_pretrained(tiny_training / "export")
    model = AutoModelForImageTextToText.from_pretrained(tiny_training / "export").eval()
    questions = QuestionSet(Pool.load(tiny_training / "pool_val.pt"), processor)
    features = torch.load(tiny_training / "features_val.pt").float()
    batch = questions.batch([0, 1, 2], features, attend_padding=True)
    with torch.no_grad():
        logits, _ = forward(model, batch)
        answer_only = stage2_loss(model, None, batch, grounding_layer=0, end_of_turn=False)
        both = stage2_loss(model, None, batch, grounding_layer=0, end_of_turn=True)
    assert torch.allclose(answer_only, F.cross_entropy(logits[:, 0], batch["answer"]))
    assert torch.allclose(both - answer_only, F.cross_entropy(logits[:, 1], batch["end"]))


def test_an_interrupted_run_resumes_to_the_same_model(tiny_training, tmp_path):
    from safetensors.torch import load_file

    from training.train import train_default

    stopped = train_default(tmp_path, tiny_config(max_minutes=0), log=lambda _: None)
    assert stopped is None and (tmp_path / "checkpoint.pt").is_file()
    assert not (tmp_path / "export").exists()
    assert train_default(tmp_path, tiny_config(), log=lambda _: None) == tmp_path / "export"
    resumed = load_file(tmp_path / "export" / "model.safetensors")
    straight = load_file(tiny_training / "export" / "model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_each_steps_batch_depends_on_the_seed_and_the_step_alone():
    from training.train import batch_rows

    config = tiny_config(existence_steps=2)

    class Rows:
        def __len__(self):
            return 1000

    existence = np.arange(0, 1000, 7)
    first = batch_rows(config, Rows(), existence, 1)
    assert set(first) <= set(existence)
    assert (batch_rows(config, Rows(), existence, 1) == first).all()
    later = batch_rows(config, Rows(), existence, 5)
    assert not set(later) <= set(existence)
    assert not (batch_rows(tiny_config(seed=1), Rows(), existence, 5) == later).all()


def test_the_learning_rate_warms_up_stays_then_decays_to_a_tenth():
    from training.train import lr_factor

    config = tiny_config(steps=20, warmup=4, decay_steps=5)
    factors = [lr_factor(config, s) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and set(factors[4:15]) == {1.0}
    assert factors[15:] == sorted(factors[15:], reverse=True)
    assert factors[19] == pytest.approx(0.1 + 0.9 / 5)


@pytest.mark.skipif(not (WEIGHTS_DIR / "config.json").is_file(), reason="no model shipped")
def test_stage1_pixel_values_equal_the_shipped_image_processors():
    """Stage 1 and the cached features normalise images themselves (fast, batched); the model
    is later fed by the processor, so the two must agree."""
    from transformers import AutoProcessor

    from superneurons.models import default_model_dir
    from training.vision import pixel_values

    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    processor = AutoProcessor.from_pretrained(default_model_dir())
    expected = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    assert torch.allclose(pixel_values(torch.from_numpy(images)), expected, atol=1e-5)


class _Planted:
    """Unpickling this runs code: what a malicious file planted in a training folder does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_planted_pickle_in_a_training_folder_does_not_run(tmp_path):
    from training.pool import Pool

    marker = tmp_path / "it-ran"
    torch.save({"images": _Planted(str(marker))}, tmp_path / "pool_train.pt")
    with pytest.raises(
        DataError, match=r"pool_train\.pt: not a file written by python -m training"
    ):
        Pool.load(tmp_path / "pool_train.pt")
    assert not marker.exists()


def test_the_training_tool_runs_from_a_source_checkout_and_refuses_bad_options():
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "training", "--steps", "0"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: Invalid value for '--steps': Input should be greater than or equal to 1 "
        "(see `python -m training --help`)"
    ]
