"""Research probe (docs/embedded-model.md, run 26): not part of the package.

``train OUT``: the shipped recipe (6,000 steps, 800 on existence, 1,000 decaying) with the left
pads attended to, positions counted over them, and the loss on the answer token alone (no
``<|im_end|>``); its evaluations use the same unmasked batches. ``train-with-end OUT``: the same
with the ``<|im_end|>`` loss kept (the pads the only change). Resumable like
``train-default``; put a run's pool and stage-1 files in OUT first to skip those stages.

``pads OUT``: OUT's checkpoint on 600 held-out questions asked one at a time, each with k
unmasked pads in front (k = 0 is what the processor feeds).
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from superneurons.models.embedded import train
from superneurons.models.embedded.architecture import (
    build_config,
    build_processor,
    build_tokenizer,
)
from superneurons.models.embedded.pool import Pool

masked_batch = train.QuestionSet.batch


def unmasked_batch(self, rows, features):
    batch = masked_batch(self, rows, features)
    n, length = batch["input_ids"].shape
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    batch["position_ids"] = torch.arange(length).expand(n, -1)
    return batch


def answer_only_loss(model, head, batch, grounding_layer):
    logits, states = train.forward(model, batch, grounding_layer)
    grounding = train.grounding_loss(head, states, batch["grounding"])
    return F.cross_entropy(logits[:, 0], batch["answer"]) + grounding


def train_probe(out: Path, end_loss: bool = False) -> None:
    train.QuestionSet.batch = unmasked_batch
    if not end_loss:
        train.stage2_loss = answer_only_loss
    config = train.TrainConfig(steps=6000, existence_steps=800, decay_steps=1000)
    train.train_default(out, config, log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))


@torch.no_grad()
def accuracy_with_pads(out: Path, pads=(0, 2, 6, 12, 20), n: int = 600) -> None:
    pool_train, pool_val = Pool.load(out / "pool_train.pt"), Pool.load(out / "pool_val.pt")
    processor = build_processor(build_tokenizer([*pool_train.text, *pool_train.answer]))
    model = LlavaForConditionalGeneration(build_config(processor.tokenizer)).eval()
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    questions = train.QuestionSet(pool_val, processor)
    features = torch.load(out / "features_val.pt").float()
    rows = np.random.default_rng(0).choice(len(questions), n, replace=False)
    rows = [int(r) for r in rows if questions.family[r] != "color_choice"]
    for k in pads:
        hits = 0
        for row in rows:
            batch = masked_batch(questions, [row], features)
            batch["input_ids"] = torch.cat(
                [torch.full((1, k), questions.pad_id), batch["input_ids"]], 1
            )
            length = batch["input_ids"].shape[1]
            batch["attention_mask"] = torch.ones(1, length, dtype=torch.long)
            batch["position_ids"] = torch.arange(length)[None]
            logits = train.forward(model, batch)[0]
            hits += int(logits[0, 0].argmax() == batch["answer"][0])
        print(f"step {state['step']} pads {k}: {hits / len(rows):.3f} of {len(rows)}", flush=True)


if __name__ == "__main__":
    command, out = sys.argv[1], Path(sys.argv[2])
    commands = {
        "train": train_probe,
        "train-with-end": lambda out: train_probe(out, end_loss=True),
        "pads": accuracy_with_pads,
    }
    commands[command](out)
