"""Research probe (docs/embedded-model.md, run 26): not part of the package.

``train-keep-pads OUT``: ``train-default``'s recipe with the template's 8 pads kept in the
training batches (the trainer drops them and lets the left padding stand for them), so that every
training question, the longest of its batch too, has at least 8 pads in front as at inference.
Resumable; put a run's pool and stage-1 files in OUT first to skip those stages.

``pads OUT``: the checkpoint of a ``train-default`` run in OUT on 600 held-out questions asked
one at a time, each with k attended pads in front instead of the template's 8 (k = 8 is what the
processor feeds).
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration

from superneurons.models.embedded import train
from superneurons.models.embedded.architecture import (
    build_config,
    build_processor,
    build_tokenizer,
)
from superneurons.models.embedded.pool import Pool


def train_keeping_pads(out: Path) -> None:
    train.LEADING_PADS = 0  # QuestionSet.batch then drops none of the template's pads
    log = lambda m: print(time.strftime("%H:%M:%S"), m, flush=True)  # noqa: E731
    train.train_default(out, train.TrainConfig(), log=log)


@torch.no_grad()
def accuracy_with_pads(out: Path, pads=(0, 8, 16, 24, 32), n: int = 600) -> None:
    pool_train, pool_val = Pool.load(out / "pool_train.pt"), Pool.load(out / "pool_val.pt")
    processor = build_processor(build_tokenizer([*pool_train.text, *pool_train.answer]))
    model = LlavaForConditionalGeneration(build_config(processor.tokenizer)).eval()
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    questions = train.QuestionSet(pool_val, processor)
    features = torch.load(out / "features_val.pt", weights_only=True).float()
    rows = np.random.default_rng(0).choice(len(questions), n, replace=False)
    rows = [int(r) for r in rows if questions.family[r] != "color_choice"]
    for k in pads:
        hits = 0
        for row in rows:
            batch = questions.batch([row], features, attend_padding=True)  # no pads in front
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
    {"train-keep-pads": train_keeping_pads, "pads": accuracy_with_pads}[command](out)
