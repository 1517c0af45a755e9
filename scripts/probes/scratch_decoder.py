"""Research probe (not part of the package): can a from-scratch decoder learn the scenes' questions?

A small CLIP-style vision tower is trained on the renderer's per-patch attributes (stage 1), then
frozen; its patch features are cached and a from-scratch Llama decoder (word-level vocabulary,
question before the 64 image tokens, answer at the last position, exactly the layout of the
embedded model's chat template) learns to answer from them, optionally with the grounding loss
(which image tokens show an object the question names) at one layer. ``--features oracle``
replaces the tower's features by one-hot true attributes and patch row/column. Results and the
commands that produced them are in docs/embedded-model.md (runs 14-18).

    python scripts/probes/scratch_decoder.py pool --split val --scenes 500
    python scripts/probes/scratch_decoder.py pool --split train --scenes 20000
    python scripts/probes/scratch_decoder.py vision --vision-steps 2500 --vision-hidden 64
    python scripts/probes/scratch_decoder.py oracle
    python scripts/probes/scratch_decoder.py train --families existence --minutes 9 --save ex.pt
    python scripts/probes/scratch_decoder.py train --init ex.pt --minutes 40 --save all.pt

(the decoder's input width follows the cached features; the grounding loss is on at layer 2
unless ``--grounding-layer 0``).

Everything is written under ``--out`` (default runs/scratch).
"""

from __future__ import annotations

import argparse
import re
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from superneurons.data.scenes.questions import generate_questions
from superneurons.data.scenes.write import iter_scenes, scene_rng
from superneurons.models.embedded.architecture import IMAGE_SIZE, PATCH_SIZE
from superneurons.models.embedded.train import (
    ATTRIBUTES,
    _atomic_torch_save,
    _grounding_labels,
    balanced_cross_entropy,
    patch_labels,
)

ROUNDS = 6  # question draws per train scene (one per validation scene)
CHUNK = 250
CLIP_MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
CLIP_STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
WORD = re.compile(r"\w+|[^\w\s]")


# ---------------------------------------------------------------- scene pools


def _render_chunk(job: tuple[str, int, int]):
    split, start, n = job
    images, labels, questions = [], [], []
    for scene, render in iter_scenes(0, split, n, start=start):
        lab = patch_labels(render.object_map, scene.objects)
        images.append(render.image)
        labels.append(np.stack([lab[a] for a in ATTRIBUTES]))
        asked = []
        for r in range(ROUNDS if split == "train" else 1):
            rng = scene_rng(0, split, scene.index, stream=20 + r)
            for q in generate_questions(scene, rng):
                grounding = _grounding_labels(scene, lab["owner"], q).numpy().astype(np.int8)
                asked.append((q.question, q.label, q.family, grounding))
        questions.append(asked)
    return images, labels, questions


def pool(out: Path, split: str, n: int) -> None:
    """Render scenes 0..n-1 of (seed 0, split) with per-patch labels and questions."""
    images, labels, questions = [], [], []
    start = time.time()
    with Pool(2) as workers:
        jobs = [(split, k, min(CHUNK, n - k)) for k in range(0, n, CHUNK)]
        for im, lab, qs in workers.imap(_render_chunk, jobs):
            images += im
            labels += lab
            questions += qs
    print(f"rendered {n} {split} scenes in {time.time() - start:.0f}s", flush=True)
    _atomic_torch_save(
        {
            "images": torch.from_numpy(np.stack(images)),
            "labels": torch.from_numpy(np.stack(labels)),
            "questions": questions,
        },
        out / f"pool_{split}.pt",
    )


def _load_pool(out: Path, split: str) -> dict:
    return torch.load(out / f"pool_{split}.pt", weights_only=False)


# ---------------------------------------------------------------- stage 1: vision tower


def vision_config(hidden: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_act="quick_gelu",
    )


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return ((images.permute(0, 3, 1, 2).float() / 255) - CLIP_MEAN) / CLIP_STD


def vision(out: Path, hidden: int, steps: int, batch: int = 64, lr: float = 2e-3) -> None:
    """Per-patch attribute heads on the train pool; then cache the frozen tower's features."""
    torch.manual_seed(0)
    data = _load_pool(out, "train")
    model = CLIPVisionModel(vision_config(hidden))
    heads = torch.nn.ModuleList([torch.nn.Linear(hidden, len(v) + 1) for v in ATTRIBUTES.values()])
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, steps)
    images, labels = data["images"], data["labels"].long()
    generator = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=generator)
        features = model(pixel_values=_pixels(images[idx])).last_hidden_state[:, 1:]
        loss = sum(
            F.cross_entropy(head(features).flatten(0, 1), labels[idx, a].flatten())
            for a, head in enumerate(heads)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            hit = [head(features).argmax(-1) == labels[idx, a] for a, head in enumerate(heads)]
            on_object = labels[idx, 0] < len(ATTRIBUTES["color"])
            print(
                f"vision {step} loss {loss.item():.3f} "
                f"acc {[round(h.float().mean().item(), 3) for h in hit]} "
                f"object patches {[round(h[on_object].float().mean().item(), 3) for h in hit]} "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
    _atomic_torch_save(model.state_dict(), out / "vision.pt")
    model.eval()
    for split in ("train", "val"):
        split_images = _load_pool(out, split)["images"]
        with torch.no_grad():
            features = torch.cat(
                [
                    model(pixel_values=_pixels(split_images[k : k + 500])).last_hidden_state[:, 1:]
                    for k in range(0, len(split_images), 500)
                ]
            )
        _atomic_torch_save(features.half(), out / f"features_{split}.pt")


def oracle(out: Path) -> None:
    """Oracle features: one-hot true attributes (or floor) and patch row/column, padded to 128."""
    for split in ("train", "val"):
        labels = _load_pool(out, split)["labels"].long()
        sizes = [len(v) + 1 for v in ATTRIBUTES.values()]
        parts = [F.one_hot(labels[:, a], n) for a, n in enumerate(sizes)]
        position = torch.arange(labels.shape[-1])
        side = IMAGE_SIZE // PATCH_SIZE
        parts.append(F.one_hot(position // side, side).expand(len(labels), -1, side))
        parts.append(F.one_hot(position % side, side).expand(len(labels), -1, side))
        features = torch.cat(parts, -1).float()
        padded = F.pad(features, (0, 128 - features.shape[-1])).half()
        _atomic_torch_save(padded, out / f"oracle_{split}.pt")


# ---------------------------------------------------------------- stage 2: decoder


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class Vocabulary:
    SPECIAL = ("<pad>", "<unk>", "<image>", "<|im_start|>", "<|im_end|>", "user", "assistant", "\n")

    def __init__(self, questions) -> None:
        seen = {
            w for asked in questions for q, label, *_ in asked for w in [*words(q), label.lower()]
        }
        self.itos = [*self.SPECIAL, *sorted(seen)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(w, 1) for w in tokens]


def samples(vocab: Vocabulary, questions, families: list[str] | None) -> list[tuple]:
    """(scene, prompt ids before the image, answer id, family, grounding) per question."""
    s = vocab.stoi
    rows = []
    for scene, asked in enumerate(questions):
        for q, label, family, grounding in asked:
            if families and family not in families:
                continue
            ids = [s["<|im_start|>"], s["user"], s["\n"], *vocab.encode(words(q)), s["\n"]]
            rows.append((scene, ids, s[label.lower()], family, grounding))
    return rows


class Decoder(torch.nn.Module):
    """Projector + from-scratch Llama decoder, answer logits at the last position."""

    def __init__(self, vocab_size: int, hidden: int, layers: int, vision_hidden: int) -> None:
        super().__init__()
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=hidden * 3,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        self.model = LlamaModel(config)
        self.projector = torch.nn.Sequential(
            torch.nn.Linear(vision_hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden)
        )
        self.image_states: list[torch.Tensor] = []

    def forward(self, prefix, features, suffix):
        embed = self.model.embed_tokens
        x = torch.cat([embed(prefix), self.projector(features.float()), embed(suffix)], 1)
        out = self.model(inputs_embeds=x, output_hidden_states=True)
        start = prefix.shape[1]
        n_image = features.shape[1]
        self.image_states = [h[:, start : start + n_image] for h in out.hidden_states]
        return out.last_hidden_state[:, -1] @ embed.weight.T


def collate(rows, features, vocab: Vocabulary):
    """Left-padded prompts (the pads are attended to: a probe simplification), image features,
    the assistant header, answers and grounding labels."""
    s = vocab.stoi
    length = max(len(r[1]) for r in rows)
    prefix = torch.full((len(rows), length), s["<pad>"])
    for k, row in enumerate(rows):
        prefix[k, length - len(row[1]) :] = torch.tensor(row[1])
    header = [s["<|im_end|>"], s["\n"], s["<|im_start|>"], s["assistant"], s["\n"]]
    suffix = torch.tensor(header).repeat(len(rows), 1)
    image = features[torch.tensor([r[0] for r in rows])]
    answers = torch.tensor([r[2] for r in rows])
    grounding = torch.from_numpy(np.stack([r[4] for r in rows])).long()
    return prefix, image, suffix, answers, grounding


def evaluate(model: Decoder, rows, features, vocab: Vocabulary) -> tuple[float, dict]:
    """Accuracy per family: yes vs no logit, or the option letters (unanswerable here: the
    probe's prompts do not list the options)."""
    model.eval()
    yes_no = torch.tensor([vocab.stoi["yes"], vocab.stoi["no"]])
    letters = torch.tensor([vocab.stoi[c] for c in "abcd"])
    tally: dict[str, list[int]] = {}
    with torch.no_grad():
        for k in range(0, len(rows), 256):
            chunk = rows[k : k + 256]
            prefix, image, suffix, answers, _ = collate(chunk, features, vocab)
            logits = model(prefix, image, suffix)
            choice = torch.tensor([r[3] == "color_choice" for r in chunk])
            predicted = torch.where(
                choice, letters[logits[:, letters].argmax(-1)], yes_no[logits[:, yes_no].argmax(-1)]
            )
            for row, ok in zip(chunk, (predicted == answers).tolist(), strict=True):
                tally.setdefault(row[3], [0, 0])
                tally[row[3]][0] += ok
                tally[row[3]][1] += 1
    model.train()
    binary = [v for family, v in tally.items() if family != "color_choice"]
    overall = sum(c for c, _ in binary) / sum(n for _, n in binary)
    return overall, {family: round(c / n, 3) for family, (c, n) in tally.items()}


def train(out: Path, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    train_pool, val_pool = _load_pool(out, "train"), _load_pool(out, "val")
    kind = "oracle" if args.features == "oracle" else "features"
    train_features = torch.load(out / f"{kind}_train.pt")
    val_features = torch.load(out / f"{kind}_val.pt")
    vocab = Vocabulary(train_pool["questions"] + val_pool["questions"])
    families = args.families.split(",") if args.families else None
    rows = samples(vocab, train_pool["questions"], families)
    val_rows = samples(vocab, val_pool["questions"], families)
    print(f"{len(rows)} train questions, {len(val_rows)} validation, vocabulary {len(vocab.itos)}")
    model = Decoder(len(vocab.itos), args.hidden, args.layers, train_features.shape[-1])
    print("decoder parameters", sum(p.numel() for p in model.parameters()), flush=True)
    head = torch.nn.Linear(args.hidden, 3)
    if args.init:
        state = torch.load(out / args.init)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["grounding_head"])
        print("initialised from", args.init, flush=True)
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.05, betas=(0.9, 0.98)
    )

    def save() -> None:
        state = {"model": model.state_dict(), "grounding_head": head.state_dict()}
        _atomic_torch_save(state, out / args.save)

    rng = np.random.default_rng(0)
    start = time.time()
    step = 0
    while step < args.max_steps and time.time() - start < args.minutes * 60:
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 300)
        idx = rng.integers(len(rows), size=args.batch)
        prefix, image, suffix, answers, grounding = collate(
            [rows[i] for i in idx], train_features, vocab
        )
        loss = F.cross_entropy(model(prefix, image, suffix), answers)
        if args.grounding_layer:
            states = model.image_states[args.grounding_layer]
            states = states / states.norm(dim=-1, keepdim=True) * args.hidden**0.5
            logits = head(states).flatten(0, 1)
            grounding_loss = balanced_cross_entropy(logits, grounding.flatten())
            loss = loss + grounding_loss
            if step % 50 == 0:
                confusion = torch.zeros(3, 3, dtype=torch.long)
                confusion.index_put_(
                    (grounding.flatten(), logits.argmax(-1)),
                    torch.ones_like(grounding.flatten()),
                    accumulate=True,
                )
                print("grounding", round(grounding_loss.item(), 3), confusion.tolist(), flush=True)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
        if step % 300 == 0 and step:
            save()
            print("EVAL", step, evaluate(model, val_rows, val_features, vocab), flush=True)
        step += 1
    print("EVAL final", step, evaluate(model, val_rows, val_features, vocab), flush=True)
    save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["pool", "vision", "oracle", "train"])
    parser.add_argument("--out", type=Path, default=Path("runs/scratch"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--scenes", type=int, default=20_000)
    parser.add_argument("--vision-steps", type=int, default=2500)
    parser.add_argument("--max-steps", type=int, default=10**9, help="train: stop after these")
    parser.add_argument("--vision-hidden", type=int, default=64)
    parser.add_argument("--features", choices=["vision", "oracle"], default="vision")
    parser.add_argument("--families", default="", help="comma-separated; empty: all")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--grounding-layer", type=int, default=2, help="0: no grounding loss")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--init", default="", help="a decoder checkpoint under --out")
    parser.add_argument("--save", default="decoder.pt")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "pool":
        pool(args.out, args.split, args.scenes)
    elif args.command == "vision":
        vision(args.out, args.vision_hidden, args.vision_steps)
    elif args.command == "oracle":
        oracle(args.out)
    else:
        train(args.out, args)


if __name__ == "__main__":
    main()
