"""The shipped embedded model: it loads offline through the Auto classes and prompts as trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from superneurons.models.embedded.shipped import WEIGHTS_DIR

# ---------------------------------------------------------------- the shipped model

ANSWER_SCRIPT = """
import json
from transformers import AutoModelForImageTextToText, AutoProcessor
from superneurons.data.prompts import chat_messages
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
        new = out[0, inputs["input_ids"].shape[1]:]
        answer = processor.decode(new, skip_special_tokens=True)
        rows.append({"answer": answer, "label": q.label, "new": len(new)})
print(json.dumps(rows))
"""


@pytest.mark.skipif(not (WEIGHTS_DIR / "config.json").is_file(), reason="no model shipped")
def test_shipped_model_answers_offline_through_auto_classes():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", ANSWER_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) >= 12
    # One word, then end of turn: generation stops after two tokens, well before its limit.
    assert all(r["answer"] in ("yes", "no") for r in rows), rows
    assert all(r["new"] == 2 for r in rows), rows
    # How often the answers are right is measured, not asserted: see docs/embedded-model.md.


@pytest.mark.skipif(not (WEIGHTS_DIR / "config.json").is_file(), reason="no model shipped")
def test_shipped_processor_builds_the_prompt_the_model_was_trained_on():
    from transformers import AutoProcessor

    from superneurons.data.prompts import chat_messages
    from superneurons.models import default_model_dir
    from superneurons.models.embedded.architecture import (
        IMAGE_TOKEN,
        LEADING_PADS,
        NUM_IMAGE_TOKENS,
        PAD_TOKEN,
    )

    processor = AutoProcessor.from_pretrained(default_model_dir())
    prompt = processor.apply_chat_template(
        chat_messages("Is there a cube?"), add_generation_prompt=True
    )
    chat = "<|im_start|>user\nIs there a cube?\n<image><|im_end|>\n<|im_start|>assistant\n"
    assert prompt == PAD_TOKEN * LEADING_PADS + chat
    inputs = processor(images=np.zeros((64, 64, 3), np.uint8), text=prompt)
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    assert tokens[: LEADING_PADS + 1] == [PAD_TOKEN] * LEADING_PADS + ["<|im_start|>"]
    assert all(inputs["attention_mask"][0])  # the template's pads are attended to
    assert tokens.count(IMAGE_TOKEN) == NUM_IMAGE_TOKENS
    assert "<unk>" not in tokens
