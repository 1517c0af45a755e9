"""Train the embedded default model on synthetic scenes (CPU or GPU, fp32, resumable).

1. Pool (:mod:`pool`): scenes rendered once, several question draws each.
2. Stage 1 (:mod:`vision`): the vision tower learns per-patch attributes and positions, then is
   frozen; its patch features are cached.
3. Stage 2: the projector and a from-scratch Llama decoder learn to answer, on the cached
   features placed in the exact token layout the processor builds (chat template, question
   before the 64 image tokens). Training batches are left-padded with pads the decoder attends
   to, positions counted over them (the template's leading pads dropped: the padding stands for
   them); a decoder trained so leans on pads in front, hence the template's (run 26 in the
   runs log: ``git show ff343f0:docs/embedded-model.md``). The loss is on the answer token, and
   over the last steps also on the end-of-turn token after it (learnt from the start, it seemed
   to hold the answer back).
   An auxiliary grounding loss supervises every image token at one early layer: a linear head
   must tell, from the token's hidden state, whether its patch shows the object the question's
   first phrase names, the second phrase's, or neither. The decoder first learns existence
   questions alone (on all families at once it settled on one answer to everything), then all
   families; the learning rate decays linearly over the last steps.

Each step's batch is drawn from the step number, so a resumed run sees the same batches as an
uninterrupted one. Checkpoints every few minutes; rerunning resumes. The export is a plain LLaVA
checkpoint (the grounding head is dropped).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlavaForConditionalGeneration, LlavaProcessor

from superneurons import atomic
from superneurons.data.prompts import chat_prompt
from superneurons.models.embedded.architecture import (
    END_OF_TURN,
    IMAGE_TOKEN,
    LEADING_PADS,
    NUM_IMAGE_TOKENS,
    build_config,
    build_processor,
    build_tokenizer,
)
from superneurons.models.embedded.shipped import WEIGHTS_DIR
from superneurons.outputs import Claim
from training.pool import Pool, render_pool
from training.supervision import (
    GROUNDING_CLASSES,
    atomic_torch_save,
    balanced_cross_entropy,
    load_torch,
)
from training.vision import patch_features, train_tower


@dataclass
class TrainConfig:
    seed: int = 0
    scenes: int = 20_000  # training scenes in the pool
    draws: int = 6  # question draws per training scene
    val_scenes: int = 500  # held-out scenes (one draw each) for the evaluations
    vision_steps: int = 2500
    steps: int = 6000  # stage-2 steps in all
    existence_steps: int = 800  # of which the first ones on existence questions only
    decay_steps: int = 1000  # the last ones, learning rate decaying linearly to a tenth
    end_of_turn_steps: int = 500  # the last ones also learn the end-of-turn token
    warmup: int = 300
    batch: int = 64
    lr: float = 1e-3
    grounding_layer: int = 2  # 0: no grounding loss
    eval_every: int = 500
    checkpoint_every_s: float = 300.0
    max_minutes: float | None = None  # stop stage 2 early (resumable) after this long
    device: str = "cpu"
    workers: int = 2  # processes rendering the pool


class QuestionSet:
    """A pool's questions tokenised in the processor's layout, ready to batch."""

    def __init__(self, pool: Pool, processor: LlavaProcessor) -> None:
        tokenizer = processor.tokenizer
        prefix, suffix = chat_prompt(processor, "\x00").split("\x00")
        encoded = tokenizer([prefix + text + suffix for text in pool.text])["input_ids"]
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.ids = [_expand_image(ids, image_id) for ids in encoded]  # LEADING_PADS pads first
        self.answer = torch.tensor(tokenizer.convert_tokens_to_ids(pool.answer))
        self.family = np.array(pool.family)
        self.scene = pool.scene.long()
        self.grounding = pool.grounding
        self.pad_id = tokenizer.pad_token_id
        self.end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(
        self, rows, features: torch.Tensor, attend_padding: bool = False
    ) -> dict[str, torch.Tensor]:
        """Prompt + answer ids left-padded to the longest, mask, positions, image features, targets.

        By default as the processor and ``generate`` pad: the padding masked, positions counted
        from the first token. ``attend_padding`` (training): the template's leading pads dropped
        and the padding attended to, positions counted over it.
        """
        rows = torch.as_tensor(rows)
        start = LEADING_PADS if attend_padding else 0
        sequences = [[*self.ids[r][start:], int(self.answer[r])] for r in rows]
        length = max(map(len, sequences))
        input_ids = torch.full((len(rows), length), self.pad_id)
        mask = torch.full((len(rows), length), int(attend_padding))  # 1: padding attended
        for k, sequence in enumerate(sequences):
            input_ids[k, length - len(sequence) :] = torch.tensor(sequence)
            mask[k, length - len(sequence) :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "features": features[self.scene[rows]].float(),
            "answer": self.answer[rows],
            "end": torch.full((len(rows),), self.end_id),
            "grounding": self.grounding[rows].long(),
        }


def _expand_image(ids: list[int], image_id: int) -> list[int]:
    k = ids.index(image_id)
    return ids[:k] + [image_id] * NUM_IMAGE_TOKENS + ids[k + 1 :]


def forward(model: LlavaForConditionalGeneration, batch: dict, hidden_layer: int = 0):
    """Logits at the last two positions (the answer, then end of turn) and the image tokens'
    hidden states after decoder layer ``hidden_layer`` (None when 0), from cached features."""
    inner = model.model
    embeds = inner.language_model.embed_tokens(batch["input_ids"])
    image = batch["input_ids"] == model.config.image_token_index
    projected = inner.multi_modal_projector(batch["features"])
    embeds = embeds.masked_scatter(image.unsqueeze(-1), projected.to(embeds.dtype))
    out = inner.language_model(
        inputs_embeds=embeds,
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        output_hidden_states=bool(hidden_layer),
    )
    logits = model.lm_head(out.last_hidden_state[:, -2:])
    states = None
    if hidden_layer:
        hidden = out.hidden_states[hidden_layer]
        states = hidden[image].view(len(hidden), NUM_IMAGE_TOKENS, -1)
    return logits, states


def stage2_loss(model, head: torch.nn.Module, batch: dict, grounding_layer: int, end_of_turn: bool):
    """Answer cross-entropy, plus the end-of-turn token's when ``end_of_turn``, plus the
    grounding loss when ``grounding_layer``."""
    logits, states = forward(model, batch, grounding_layer)
    loss = F.cross_entropy(logits[:, 0], batch["answer"])
    if end_of_turn:
        loss = loss + F.cross_entropy(logits[:, 1], batch["end"])
    if grounding_layer:
        loss = loss + grounding_loss(head, states, batch["grounding"])
    return loss


def grounding_loss(head: torch.nn.Module, states: torch.Tensor, grounding: torch.Tensor):
    """The grounding head's balanced cross-entropy on the image tokens' RMS-scaled states."""
    states = states / states.norm(dim=-1, keepdim=True) * states.shape[-1] ** 0.5
    return balanced_cross_entropy(head(states).flatten(0, 1), grounding.flatten())


@torch.no_grad()
def correct_answers(model, questions: QuestionSet, features: torch.Tensor, batch: int = 256):
    """Per question, whether the greedy first answer token is right, on batches laid out as the
    processor lays them out."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = []
    for start in range(0, len(questions), batch):
        rows = range(start, min(start + batch, len(questions)))
        b = {k: v.to(device) for k, v in questions.batch(rows, features).items()}
        correct.append((forward(model, b)[0][:, 0].argmax(-1) == b["answer"]).cpu())
    model.train(was_training)
    return torch.cat(correct).numpy()


def evaluate(model, questions: QuestionSet, features: torch.Tensor, batch: int = 256) -> dict:
    """Held-out accuracy of the greedy first answer token, per family and over the yes/no ones."""
    correct = correct_answers(model, questions, features, batch)
    families = sorted(set(questions.family.tolist()))
    result = {f: round(float(correct[questions.family == f].mean()), 4) for f in families}
    binary = questions.family != "color_choice"
    result["yes_no"] = round(float(correct[binary].mean()), 4)
    return result


def lr_factor(config: TrainConfig, step: int) -> float:
    """Linear warm-up, constant, then a linear decay to 0.1 over the last ``decay_steps``."""
    warm = min(1.0, (step + 1) / config.warmup)
    left = config.steps - step
    return warm * (1.0 if left > config.decay_steps else 0.1 + 0.9 * left / config.decay_steps)


def batch_rows(config: TrainConfig, questions: QuestionSet, existence: np.ndarray, step: int):
    """The rows of step ``step``: a function of (seed, step) alone, so resuming is exact."""
    rng = np.random.default_rng([config.seed, step])
    if step < config.existence_steps:
        return existence[rng.integers(len(existence), size=config.batch)]
    return rng.integers(len(questions), size=config.batch)


def _stage1(out_dir: Path, config: TrainConfig, train: Pool, val: Pool, log) -> dict:
    """The frozen tower's state and cached features (trained, or loaded when present)."""
    names = ("vision_tower", "features_train", "features_val")
    paths = {name: out_dir / f"{name}.pt" for name in names}
    if not all(p.is_file() for p in paths.values()):
        tower = train_tower(
            train.images,
            train.patch_labels,
            config.vision_steps,
            config.seed,
            device=config.device,
            log=log,
        )
        atomic_torch_save(tower.state_dict(), paths["vision_tower"])
        atomic_torch_save(patch_features(tower, train.images), paths["features_train"])
        atomic_torch_save(patch_features(tower, val.images), paths["features_val"])
    return {name: load_torch(path) for name, path in paths.items()}


def train_default(out_dir: Path, config: TrainConfig, log=print) -> Path | None:
    """Run (or resume) every stage into ``out_dir`` (claimed: new, empty or a training run).

    Returns the exported checkpoint's directory, or None when ``max_minutes`` stopped it first.
    """
    with Claim(out_dir, "train"):
        return _train(Path(out_dir), config, log)


def _train(out_dir: Path, config: TrainConfig, log) -> Path | None:
    started = time.time()
    pool_args = dict(seed=config.seed, workers=config.workers, log=log)
    train = render_pool(
        out_dir / "pool_train.pt",
        split="train",
        scenes=config.scenes,
        draws=config.draws,
        **pool_args,
    )
    val = render_pool(
        out_dir / "pool_val.pt", split="val", scenes=config.val_scenes, draws=1, **pool_args
    )
    stage1 = _stage1(out_dir, config, train, val, log)
    processor = build_processor(build_tokenizer([*train.text, *train.answer]))
    questions, held_out = QuestionSet(train, processor), QuestionSet(val, processor)
    existence = np.flatnonzero(questions.family == "existence")
    log(
        f"{len(questions)} training questions, {len(held_out)} held out, "
        f"vocabulary {len(processor.tokenizer)}"
    )

    torch.manual_seed(config.seed)
    model = LlavaForConditionalGeneration(build_config(processor.tokenizer))
    model.model.vision_tower.load_state_dict(stage1["vision_tower"])
    model.model.vision_tower.requires_grad_(False)
    model.to(config.device).train()
    head = torch.nn.Linear(model.config.text_config.hidden_size, GROUNDING_CLASSES)
    head.to(config.device)
    trained = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=0.05, betas=(0.9, 0.98))
    step, history, elapsed = 0, [], 0.0
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.is_file():
        state = load_torch(checkpoint, map_location=config.device)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["grounding_head"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, elapsed = state["step"], state["history"], state["elapsed_s"]
        log(f"resumed at step {step}")

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "grounding_head": head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": history,
            "elapsed_s": elapsed + time.time() - session,
        }
        atomic_torch_save(state, checkpoint)

    def held_out_eval() -> None:
        result = evaluate(model, held_out, stage1["features_val"].to(config.device))
        history.append({"step": step, **result})
        log(f"eval step {step} {json.dumps(result)}")

    session = last_save = time.time()
    budget = None if config.max_minutes is None else config.max_minutes * 60
    while step < config.steps:
        if budget is not None and time.time() - started > budget:
            log(f"stopping at step {step}: {config.max_minutes} minutes (rerun to resume)")
            save()
            return None
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(config, step)
        rows = batch_rows(config, questions, existence, step)
        batch = questions.batch(rows, stage1["features_train"], attend_padding=True)
        batch = {k: v.to(config.device) for k, v in batch.items()}
        end_of_turn = step >= config.steps - config.end_of_turn_steps
        loss = stage2_loss(model, head, batch, config.grounding_layer, end_of_turn)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            log(f"step {step} loss {loss.item():.3f} {time.time() - session:.0f}s")
        if step % config.eval_every == 0 or step == config.steps:
            held_out_eval()
        if time.time() - last_save > config.checkpoint_every_s:
            save()
            last_save = time.time()
    save()
    record = {
        "config": asdict(config),
        "stage2_steps": step,
        "stage2_seconds": round(elapsed + time.time() - session),
        "held_out": history[-1] if history else None,
        "history": history,
    }
    return export(model.cpu(), processor, out_dir / "export", record)


def export(model, processor: LlavaProcessor, out_dir: Path, record: dict) -> Path:
    """Save the model and processor as a standard checkpoint (atomically), with the record."""
    model.generation_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=16,
        eos_token_id=model.config.text_config.eos_token_id,
        pad_token_id=model.config.text_config.pad_token_id,
    )
    with atomic.directory(out_dir) as tmp:
        model.eval().save_pretrained(tmp)
        processor.save_pretrained(tmp)
        atomic.write_json(tmp / "training.json", record)
    return out_dir


def ship(exported: Path) -> None:
    """Replace the package's shipped checkpoint by ``exported``."""
    with atomic.directory(WEIGHTS_DIR) as tmp:
        for path in exported.iterdir():
            shutil.copy(path, tmp / path.name)
