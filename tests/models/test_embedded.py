"""The shipped embedded model: assembled offline, loaded through the Auto classes, answering."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from superneurons.models.embedded.assemble import VISION_PROJECTOR_FILE, WEIGHTS_DIR

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / VISION_PROJECTOR_FILE).is_file(), reason="no trained weights shipped yet"
)

ANSWER_SCRIPT = """
import json, sys
import numpy as np
from transformers import AutoModelForImageTextToText, AutoProcessor
from superneurons.data.prompts import chat_messages, format_prompt
from superneurons.data.scenes import iter_scenes, scene_questions
from superneurons.models import default_model_dir

path = default_model_dir()
processor = AutoProcessor.from_pretrained(path)
model = AutoModelForImageTextToText.from_pretrained(path)
rows = []
for scene, render in iter_scenes(seed=123, split="val", n=4):
    for q in scene_questions(scene, seed=123, families=["existence", "attribute"]):
        messages = chat_messages(q.question)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=render.image, text=prompt, return_tensors="pt")
        out = model.generate(**inputs, do_sample=False, max_new_tokens=8)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        rows.append({"answer": answer, "label": q.label})
print(json.dumps(rows))
"""


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("superneurons-cache")


def test_shipped_model_answers_offline_through_auto_classes(model_cache):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "SUPERNEURONS_CACHE": str(model_cache),
    }
    done = subprocess.run(
        [sys.executable, "-c", ANSWER_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    answers = [r["answer"].strip().lower() for r in rows]
    assert len(rows) >= 12
    # One word, then end of sequence (generation stops before its 8-token limit).
    assert all(a in ("yes", "no") for a in answers), answers
    # How often the answers are right is measured, not asserted: see docs/embedded-model.md.


def test_processor_builds_the_training_prompt(model_cache, monkeypatch):
    from transformers import AutoProcessor

    from superneurons.data.prompts import chat_messages
    from superneurons.data.scenes import iter_scenes
    from superneurons.models import default_model_dir
    from superneurons.models.embedded.architecture import IMAGE_TOKEN, NUM_IMAGE_TOKENS
    from superneurons.models.embedded.train import TrainConfig, qa_batch

    monkeypatch.setenv("SUPERNEURONS_CACHE", str(model_cache))
    processor = AutoProcessor.from_pretrained(default_model_dir())
    prompt = processor.apply_chat_template(
        chat_messages("Is there a cube?"), add_generation_prompt=True
    )
    assert (
        prompt == "<|im_start|>user\nIs there a cube?\n<image><|im_end|>\n<|im_start|>assistant\n"
    )
    _, render = next(iter_scenes(seed=0, split="train", n=1))
    ids = processor(images=render.image, text=prompt, return_tensors="pt")["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((ids == image_id).sum()) == NUM_IMAGE_TOKENS
    # A one-turn training conversation starts with exactly the inference prompt's tokens.
    batch = qa_batch(processor, TrainConfig(qa_batch=1, turns=1), step=0)
    trained = batch["input_ids"][0]
    prompt_ids = processor(
        images=render.image,
        text=processor.apply_chat_template(
            chat_messages(_first_training_question(processor)), add_generation_prompt=True
        ),
        return_tensors="pt",
    )["input_ids"][0]
    assert trained[: len(prompt_ids)].tolist() == prompt_ids.tolist()
    assert batch["position"].tolist()[0] == len(prompt_ids) - 1


def _first_training_question(processor) -> str:
    """The user text of training batch 0's single turn, read back from its tokens."""
    from superneurons.models.embedded.train import TrainConfig, qa_batch

    ids = qa_batch(processor, TrainConfig(qa_batch=1, turns=1), step=0)["input_ids"][0]
    text = processor.tokenizer.decode(ids)
    return text.split("<|im_start|>user\n", 1)[1].split("\n<image>", 1)[0]


def test_a_patch_belongs_to_the_largest_object_covering_an_eighth_of_it():
    from superneurons.models.embedded.architecture import IMAGE_SIZE, PATCH_SIZE
    from superneurons.models.embedded.train import MIN_OBJECT_PIXELS, patch_owners

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
    from superneurons.data.scenes import iter_scenes, mentioned_objects, scene_questions
    from superneurons.models.embedded.train import _grounding_labels, patch_labels

    seen_roles = set()
    for scene, render in iter_scenes(seed=0, split="train", n=6):
        owner = patch_labels(render.object_map, scene.objects)["owner"]
        for q in scene_questions(scene, seed=0):
            labels = _grounding_labels(scene, owner, q).numpy()
            groups = mentioned_objects(scene, q.question)
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


def test_grounding_labels_by_answer_move_the_first_phrase_of_yes_questions_to_class_3():
    from superneurons.data.scenes import iter_scenes, scene_questions
    from superneurons.models.embedded.train import _grounding_labels, patch_owners

    moved = 0
    for scene, render in iter_scenes(seed=0, split="train", n=6):
        owners = patch_owners(render.object_map, len(scene.objects))
        for q in scene_questions(scene, seed=0):
            plain = _grounding_labels(scene, owners, q).numpy()
            split = _grounding_labels(scene, owners, q, by_answer=True).numpy()
            expected = plain.copy()
            if q.label != "no":
                expected[plain == 1] = 3
            assert (split == expected).all(), q
            moved += int((split == 3).any())
    assert moved > 0


def test_referent_text_describes_each_named_object_phrase_by_phrase():
    from superneurons.data.scenes import iter_scenes, mentioned_objects, scene_questions
    from superneurons.models.embedded.train import referent_text

    seen_none = seen_relation = False
    for scene, _ in iter_scenes(seed=0, split="train", n=6):
        described = {
            i: f"{o.size} {o.color} {o.material} {o.shape}" for i, o in enumerate(scene.objects)
        }
        for q in scene_questions(scene, seed=0):
            groups = mentioned_objects(scene, q.question)
            phrases = referent_text(scene, q.question).split("; ")
            assert len(phrases) == len(groups), q.question
            for phrase, group in zip(phrases, groups, strict=True):
                if not group:
                    assert phrase == "none"
                    seen_none = True
                    continue
                left_to_right = sorted(group, key=lambda i: scene.objects[i].pixel_center[0])
                assert phrase.split(", ") == [described[i] for i in left_to_right]
            seen_relation |= len(groups) == 2
    assert seen_none and seen_relation


def _scene_processor():
    from transformers import AutoTokenizer

    from superneurons.models.embedded.architecture import build_processor
    from superneurons.models.embedded.assemble import smollm2_gguf

    gguf = smollm2_gguf()
    return build_processor(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))


def test_referent_turn_follows_the_answer_and_is_its_own_target():
    from superneurons.data.scenes import iter_scenes
    from superneurons.models.embedded.architecture import END_OF_TURN
    from superneurons.models.embedded.train import (
        TrainConfig,
        asked_question,
        qa_batch,
        referent_text,
    )

    processor = _scene_processor()
    tokenizer = processor.tokenizer
    plain = qa_batch(processor, TrainConfig(qa_batch=3), step=4)
    with_turn = qa_batch(processor, TrainConfig(qa_batch=3, referent_weight=1.0), step=4)
    assert not plain["referent"].any()
    answers = ~with_turn["referent"]
    # The answer turn is untouched: same positions, same targets.
    assert with_turn["position"][answers].tolist() == plain["position"].tolist()
    assert with_turn["targets"][answers].tolist() == plain["targets"].tolist()
    for row in range(3):
        scene, _ = next(iter_scenes(seed=0, split="train", n=1, start=4 * 3 + row))
        question = asked_question(tokenizer, plain["input_ids"][row])
        mine = with_turn["referent"] & (with_turn["batch_index"] == row)
        assert tokenizer.decode(with_turn["targets"][mine]) == (
            referent_text(scene, question) + END_OF_TURN
        )
        # Every referent position comes after every answer position of its row.
        theirs = answers & (with_turn["batch_index"] == row)
        assert with_turn["position"][mine].min() > with_turn["position"][theirs].max()


def test_the_referent_turn_cannot_change_the_answer_loss(shipped):
    import torch

    from superneurons.models.embedded.train import TrainConfig, qa_batch, qa_loss

    model, processor = shipped
    head = torch.nn.Linear(model.config.text_config.hidden_size, 3)
    with torch.no_grad():
        plain = qa_loss(model, qa_batch(processor, TrainConfig(qa_batch=2), step=1), head, 2)
        config = TrainConfig(qa_batch=2, referent_weight=1.0)
        with_turn = qa_loss(model, qa_batch(processor, config, step=1), head, 2)
    assert plain[2].item() == 0.0
    assert torch.allclose(with_turn[0], plain[0], atol=1e-4)  # causal: the answer comes first
    assert torch.allclose(with_turn[1], plain[1], atol=1e-4)
    assert with_turn[2].item() > 0.0


def test_referent_reading_scores_only_the_words_the_question_does_not_name(shipped):
    from collections import Counter

    from superneurons.data.scenes import iter_scenes, parse_reference
    from superneurons.models.embedded.train import (
        ATTRIBUTES,
        UNSEEN_BATCHES,
        TrainConfig,
        asked_question,
        qa_batch,
        referent_reading,
        referent_text,
    )

    model, processor = shipped
    config = TrainConfig(qa_batch=4, referent_weight=1.0)
    reading = referent_reading(model, processor, config, batches=2)
    kind_of = {v: kind for kind, values in ATTRIBUTES.items() for v in values}
    expected = {}
    for k in range(2):
        ids = qa_batch(processor, config, UNSEEN_BATCHES + k)["input_ids"]
        for row in range(4):
            scene, _ = next(
                iter_scenes(seed=0, split="train", n=1, start=(UNSEEN_BATCHES + k) * 4 + row)
            )
            question = asked_question(processor.tokenizer, ids[row])
            named = {v for w in question.split() for v in parse_reference(w).values()}
            for word in referent_text(scene, question).replace(",", " ").replace(";", " ").split():
                if word in kind_of and word not in named:
                    expected.setdefault(kind_of[word], Counter())[word] += 1
    assert set(reading) == set(expected)
    for kind, counts in expected.items():
        assert reading[kind]["n"] == counts.total()
        assert reading[kind]["majority"] == max(counts.values()) / counts.total()
        assert 0 <= reading[kind]["accuracy"] <= 1
    with pytest.raises(ValueError, match="referent_weight"):
        referent_reading(model, processor, TrainConfig(qa_batch=1), batches=1)


def test_roc_auc_ranks_positives_above_negatives():
    import math

    from superneurons.models.embedded.train import roc_auc

    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert roc_auc([3, 2, 1], [False, True, True]) == 0.0
    assert roc_auc([1, 1], [True, False]) == 0.5
    assert math.isnan(roc_auc([1, 2], [True, True]))


def test_balanced_cross_entropy_weighs_each_class_equally():
    import torch
    import torch.nn.functional as F

    from superneurons.models.embedded.train import balanced_cross_entropy

    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    rare = torch.tensor([0] * 9 + [2])
    per_class = [F.cross_entropy(logits[:9], rare[:9]), F.cross_entropy(logits[9:], rare[9:])]
    assert torch.allclose(balanced_cross_entropy(logits, rare), torch.stack(per_class).mean())
    even = torch.tensor([0, 1] * 5)
    assert torch.allclose(balanced_cross_entropy(logits, even), F.cross_entropy(logits, even))


@pytest.fixture
def shipped(model_cache, monkeypatch):
    """The shipped model (eval mode) and its processor, through the Auto classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from superneurons.models import default_model_dir

    monkeypatch.setenv("SUPERNEURONS_CACHE", str(model_cache))
    path = default_model_dir()
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(
        path
    )


def test_grounding_confusion_counts_every_image_token(shipped):
    import torch

    from superneurons.models.embedded.architecture import NUM_IMAGE_TOKENS
    from superneurons.models.embedded.train import (
        UNSEEN_BATCHES,
        TrainConfig,
        grounding_confusion,
        qa_batch,
    )

    model, processor = shipped
    config = TrainConfig(qa_batch=2)
    head = torch.nn.Linear(model.config.text_config.hidden_size, 3)
    confusion = np.array(grounding_confusion(model, processor, config, head, batches=1))
    labels = qa_batch(processor, config, UNSEEN_BATCHES)["grounding"].flatten()
    assert confusion.sum() == 2 * NUM_IMAGE_TOKENS
    assert confusion.sum(1).tolist() == torch.bincount(labels, minlength=3).tolist()


def test_load_base_keeps_the_first_decoder_layers_of_smollm2():
    import torch

    from superneurons.models.embedded.assemble import load_base

    full, _ = load_base()
    short, _ = load_base(decoder_layers=2)
    assert full.config.text_config.num_hidden_layers == 30
    assert short.config.text_config.num_hidden_layers == 2
    assert len(short.model.language_model.layers) == 2
    full_state, short_state = full.state_dict(), short.state_dict()
    language = [name for name in short_state if name.startswith("model.language_model.")]
    assert not [name for name in language if ".layers.2." in name]
    for name in language:
        assert torch.equal(short_state[name], full_state[name]), name
    with pytest.raises(ValueError, match=r"decoder_layers must be 1\.\.30"):
        load_base(decoder_layers=31)


def test_assembled_model_has_the_shipped_number_of_decoder_layers(model_cache, monkeypatch):
    from transformers import AutoConfig

    from superneurons.models import default_model_dir
    from superneurons.models.embedded.assemble import shipped_decoder_layers

    monkeypatch.setenv("SUPERNEURONS_CACHE", str(model_cache))
    config = AutoConfig.from_pretrained(default_model_dir())
    assert config.text_config.num_hidden_layers == (shipped_decoder_layers() or 30)


def test_batches_rendered_by_workers_equal_those_rendered_in_the_loop():
    from superneurons.models.embedded.train import TrainConfig, qa_batches

    processor = _scene_processor()
    config = TrainConfig(qa_batch=2, qa_steps=5)
    in_loop = list(qa_batches(processor, config, first=2))
    config.loader_workers = 2
    ahead = list(qa_batches(processor, config, first=2))
    assert len(in_loop) == len(ahead) == 3
    for a, b in zip(in_loop, ahead, strict=True):
        assert a.keys() == b.keys()
        assert all(a[k].equal(b[k]) for k in a)


def tiny_train_config(**overrides):
    """Both stages of train_default in seconds: 4 scenes, one decoder layer, one question a step."""
    from superneurons.models.embedded.train import TrainConfig

    settings = dict(
        vision_scenes=4,
        vision_steps=2,
        vision_batch=2,
        decoder_layers=1,
        grounding_layer=1,
        qa_batch=1,
        eval_every=1,
        eval_scenes=1,
    )
    return TrainConfig(**{**settings, **overrides})


def test_train_default_runs_both_stages_exports_and_resumes(tmp_path):
    import json

    from safetensors.torch import load_file

    from superneurons.models.embedded.train import train_default

    config = tiny_train_config(qa_steps=2, loader_workers=1, referent_weight=1.0)
    weights = train_default(tmp_path, config, log=lambda _: None)
    record = json.loads((weights / "training.json").read_text())
    assert record["qa_steps_done"] == 2
    assert record["config"]["referent_weight"] == 1.0
    assert [h["step"] for h in record["eval_history"]] == [0, 1, 2]
    assert record["config"]["decoder_layers"] == 1
    assert load_file(weights / "vision_projector.safetensors")
    assert (weights / "adapter_model.safetensors").is_file()

    config.qa_steps = 3  # resumes from the checkpoint: one more step, one more evaluation
    logged = []
    train_default(tmp_path, config, log=logged.append)
    assert logged[0] == "resumed at step 2"
    record = json.loads((weights / "training.json").read_text())
    assert record["qa_steps_done"] == 3


def test_oracle_tokens_replace_the_image_by_each_patch_description(shipped):
    import torch

    from superneurons.models.embedded.train import (
        DESCRIPTIONS,
        TrainConfig,
        _forward,
        oracle_embeds,
        oracle_table,
        qa_batch,
    )

    model, processor = shipped
    batch = qa_batch(processor, TrainConfig(qa_batch=2), step=0)
    words = batch["patch_descriptions"]
    assert words.shape == batch["grounding"].shape
    assert (words > 0).any() and (words == 0).any()  # objects and floor
    # A patch of a named object shows that object's description.
    named = batch["grounding"] > 0
    assert all(DESCRIPTIONS[int(k)] != "floor" for k in words[named])
    table = oracle_table(model, processor.tokenizer)
    assert table.shape == (len(DESCRIPTIONS), model.config.text_config.hidden_size)
    embeds = oracle_embeds(model, batch["input_ids"], words, table)
    assert torch.equal(embeds[batch["image_mask"]], table[words.flatten()])
    text = ~batch["image_mask"]
    assert torch.equal(embeds[text], model.get_input_embeddings()(batch["input_ids"])[text])
    with torch.no_grad():
        seen = _forward(model, batch, table).last_hidden_state
        blank = {**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}
        assert torch.equal(_forward(model, blank, table).last_hidden_state, seen)
        assert not torch.allclose(_forward(model, batch).last_hidden_state, seen)


def test_train_default_on_oracle_tokens_also_evaluates_the_real_vision_side(tmp_path):
    import json

    from superneurons.models.embedded.train import train_default

    config = tiny_train_config(qa_steps=1, oracle_tokens=True)
    weights = train_default(tmp_path, config, log=lambda _: None)
    history = json.loads((weights / "training.json").read_text())["eval_history"]
    assert [h["step"] for h in history] == [0, 1]
    for entry in history:
        assert set(entry["real_tokens"]) == {"binary", "n", "per_family", "auc"}
        assert set(entry["auc"]) <= set(entry["per_family"]) - {"color_choice"}
        assert all(0 <= v <= 1 or v != v for v in entry["auc"].values())  # nan: one class only
        assert entry["real_tokens"]["n"] == entry["n"]
