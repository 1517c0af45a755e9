"""Train the embedded default model on synthetic scenes (CPU, fp32, resumable).

Stage 1 (vision): the vision tower and projector learn, per 8-px patch, the attributes of the
object under it (from the renderer's object map) and to map each patch near the language model's
embedding of that object's words ("large red metal cube", "floor"), as LLaVA's first stage aligns
images with captions. No language-model forward is needed, so this takes minutes.

Stage 2 (questions): LoRA on every linear layer of the language model, plus the vision tower and
projector, on one question per image. The loss is on the answer tokens only, and logits are
computed only there (the 49K-word output layer is the costliest part otherwise). An auxiliary
grounding loss supervises every image token at one middle layer: a linear head must tell, from the
token's hidden state, whether its patch shows the object the question's first phrase names, the
second phrase's object, or neither (from the renderer's object map). The question precedes the
image, so image tokens can compute this; the answer position then only has to gather it. The
head is dropped at export: the shipped model is a plain LLaVA checkpoint. Optionally
(``referent_weight``), a second turn after the answer asks which objects the question names and
is trained to list them in full ("small green metal sphere"): a dense target for reading the
named object's attributes, which comes after the answer and so cannot leak into it.

bf16 autocast is pathologically slow for this model's backward pass on the CPUs here (~20x), so
training runs in fp32. Progress is checkpointed every few minutes; rerunning resumes.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from superneurons import atomic
from superneurons.data.prompts import LETTERS, chat_messages, chat_prompt, format_prompt
from superneurons.data.scenes import (
    COLORS,
    MATERIALS,
    SHAPES,
    SIZES,
    iter_scenes,
    mentioned_objects,
    parse_reference,
    scene_questions,
)
from superneurons.data.scenes.write import scene_rng
from superneurons.models.embedded.architecture import (
    END_OF_TURN,
    IMAGE_TOKEN,
    NUM_IMAGE_TOKENS,
    PATCH_SIZE,
)
from superneurons.models.embedded.assemble import VISION_PROJECTOR_FILE, WEIGHTS_DIR, load_base

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
ATTRIBUTES = {
    "color": list(COLORS),
    "shape": list(SHAPES),
    "material": list(MATERIALS),
    "size": list(SIZES),
}


@dataclass
class TrainConfig:
    seed: int = 0
    vision_scenes: int = 3000
    vision_steps: int = 400
    vision_batch: int = 64
    vision_lr: float = 1e-3
    decoder_layers: int | None = 12  # SmolLM2's first layers only (None: all 30)
    qa_steps: int = 2500
    qa_batch: int = 8
    turns: int = 1
    lora_rank: int = 32
    lora_lr: float = 3e-4
    tower_lr: float = 5e-5
    grounding_lr: float = 1e-3
    warmup: int = 50
    grounding_layer: int = 6
    grounding_weight: float = 1.0
    grounding_answer: bool = False  # split the first phrase's patches by the question's answer
    answer_weight: float = 1.0  # 0: grounding alone (a first phase, or a diagnostic)
    # > 0: each sequence gets a second turn after the answer that lists the objects the question
    # names ("large red metal cube; small blue rubber sphere"), its loss weighted by this.
    referent_weight: float = 0.0
    # Stage 2 on perfect object tokens (stage 1's targets) instead of the image: a test of the
    # language-model side alone; evaluations then also report the real vision side.
    oracle_tokens: bool = False
    eval_every: int = 250
    eval_scenes: int = 30
    checkpoint_every_s: float = 300.0
    max_minutes: float | None = None
    device: str = "cpu"
    loader_workers: int = 0  # processes that render stage-2 batches ahead (0: in the loop)


def _vision_modules(model) -> list[torch.nn.Module]:
    return [model.model.vision_tower, model.model.multi_modal_projector]


def vision_projector_state(model) -> dict[str, torch.Tensor]:
    """The vision tower's and projector's weights, under the LLaVA checkpoint's names."""
    state = {}
    for name, tensor in model.state_dict().items():
        name = name.replace("base_model.model.", "")
        if name.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
            state[name] = tensor.detach().clone().contiguous()
    return state


def _atomic_torch_save(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic.write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------- stage 1: vision


# A patch belongs to the object covering most of it once that object covers this many pixels.
# Most objects are smaller than a few patches: with a plain majority vote (floor included) 39 % of
# objects owned no patch at all, and stage 1 taught the projector to map them to "floor".
MIN_OBJECT_PIXELS = PATCH_SIZE * PATCH_SIZE // 8


def patch_owners(object_map: np.ndarray, n_objects: int) -> np.ndarray:
    """Per patch (row-major), the object covering most of it, -1 if none covers enough (floor)."""
    n = object_map.shape[0] // PATCH_SIZE
    patches = (
        object_map.reshape(n, PATCH_SIZE, n, PATCH_SIZE).transpose(0, 2, 1, 3).reshape(n * n, -1)
    )
    owners = np.full(n * n, -1)
    for k, patch in enumerate(patches):
        pixels = np.bincount(patch[patch >= 0], minlength=n_objects)
        if pixels.max(initial=0) >= MIN_OBJECT_PIXELS:
            owners[k] = pixels.argmax()
    return owners


def patch_labels(object_map: np.ndarray, objects) -> dict[str, np.ndarray]:
    """Per patch, the index of each attribute of its owner (:func:`patch_owners`; last = ground)."""
    owner = patch_owners(object_map, len(objects))
    labels = {}
    for attr, values in ATTRIBUTES.items():
        labels[attr] = np.array(
            [len(values) if o < 0 else values.index(getattr(objects[o], attr)) for o in owner]
        )
    labels["owner"] = owner
    return labels


# What a patch shows: the floor, or an object as (size, colour, material, shape).
DESCRIPTIONS: list = ["floor"] + [
    (size, color, material, shape)
    for size in SIZES
    for color in COLORS
    for material in MATERIALS
    for shape in SHAPES
]
_DESCRIPTION_INDEX = {d: k for k, d in enumerate(DESCRIPTIONS)}


def oracle_table(model, tokenizer) -> torch.Tensor:
    """Per :data:`DESCRIPTIONS` entry, the mean input embedding of its words (" large red metal
    cube", " floor"): stage 1's alignment targets, and perfect object tokens."""
    embed = model.get_input_embeddings().weight.detach()
    rows = []
    for description in DESCRIPTIONS:
        text = " floor" if description == "floor" else " " + " ".join(description)
        rows.append(embed[tokenizer(text, add_special_tokens=False)["input_ids"]].mean(0))
    return torch.stack(rows)


def patch_descriptions(owners: np.ndarray, objects) -> torch.Tensor:
    """Per patch, the index in :data:`DESCRIPTIONS` of what it shows, from :func:`patch_owners`."""
    keys = [(o.size, o.color, o.material, o.shape) for o in objects]
    return torch.tensor([0 if o < 0 else _DESCRIPTION_INDEX[keys[o]] for o in owners])


def train_vision(model, processor, config: TrainConfig, log) -> None:
    """Stage 1: per-patch attribute heads and word-embedding alignment of the projected patches."""
    hidden = model.config.text_config.hidden_size
    heads = torch.nn.ModuleDict(
        {a: torch.nn.Linear(hidden, len(v) + 1) for a, v in ATTRIBUTES.items()}
    ).to(model.device)
    targets = oracle_table(model, processor.tokenizer)
    target_scale = targets.pow(2).mean()
    log(f"stage 1: rendering {config.vision_scenes} scenes")
    pixels, labels, aligns = [], defaultdict(list), []
    for scene, render in iter_scenes(config.seed, "train", config.vision_scenes, start=10_000_000):
        pixels.append(
            processor.image_processor(render.image, return_tensors="pt")["pixel_values"][0]
        )
        lab = patch_labels(render.object_map, scene.objects)
        for attr in ATTRIBUTES:
            labels[attr].append(torch.from_numpy(lab[attr]))
        aligns.append(targets[patch_descriptions(lab["owner"], scene.objects)])
    device = model.device
    pixels = torch.stack(pixels).to(device)
    labels = {a: torch.stack(v).to(device) for a, v in labels.items()}
    aligns = torch.stack(aligns).to(device)
    params = [p for m in _vision_modules(model) for p in m.parameters()] + list(heads.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.vision_lr, config.vision_steps)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    start = time.time()
    for step in range(config.vision_steps):
        idx = torch.randint(len(pixels), (config.vision_batch,), generator=generator)
        features = model.model.get_image_features(pixel_values=pixels[idx]).pooler_output
        features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
        features = features.reshape(len(idx), NUM_IMAGE_TOKENS, hidden)
        loss_attr = sum(
            F.cross_entropy(heads[a](features).flatten(0, 1), labels[a][idx].flatten())
            for a in ATTRIBUTES
        )
        loss_align = F.mse_loss(features, aligns[idx]) / target_scale
        loss = loss_attr + loss_align
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == config.vision_steps - 1:
            with torch.no_grad():
                acc = {
                    a: round(
                        (heads[a](features).argmax(-1) == labels[a][idx]).float().mean().item(), 3
                    )
                    for a in ATTRIBUTES
                }
            log(
                f"stage 1 step {step}: attr loss {loss_attr.item():.3f} "
                f"align {loss_align.item():.3f} acc {json.dumps(acc)} ({time.time() - start:.0f}s)"
            )
    model.eval()


# ---------------------------------------------------------------- stage 2: questions


REFERENT_QUESTION = "Which objects does the question name?"


def referent_text(scene, question) -> str:
    """The objects each phrase of ``question`` names, left to right, described in full.

    Phrases are separated by "; ", objects by ", "; a phrase that names nothing is "none".
    """
    phrases = []
    for group in mentioned_objects(scene, question):
        objects = sorted((scene.objects[i] for i in group), key=lambda o: o.pixel_center[0])
        described = [f"{o.size} {o.color} {o.material} {o.shape}" for o in objects]
        phrases.append(", ".join(described) or "none")
    return "; ".join(phrases)


def _conversation(questions, rng: np.random.Generator, turns: int) -> tuple[list[dict], list]:
    """Up to ``turns`` turns about one scene, at most one question per family.

    Each family comes as a yes/no pair; with both halves in one conversation the second answer
    follows from the first without looking at the image, a shortcut that single-question
    inference cannot use (a first run learned it: training loss fell, held-out stayed at 50 %).
    Returns the messages and the questions asked.
    """
    by_family: dict[str, list] = defaultdict(list)
    for q in questions:
        by_family[q.family].append(q)
    families = sorted(by_family)
    picked = [
        by_family[f][rng.integers(len(by_family[f]))] for f in rng.permutation(families)[:turns]
    ]
    messages = []
    for k, q in enumerate(picked):
        text = format_prompt(q.question, q.choices)
        content = chat_messages(text)[0]["content"] if k == 0 else [{"type": "text", "text": text}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": q.label}]})
    return messages, picked


def _answer_positions(ids: list[int], header: list[int], end_id: int) -> list[list[int]]:
    """Per assistant turn, the positions whose next token is one of its tokens."""
    turns, n = [], len(header)
    for i in range(len(ids) - n):
        if ids[i : i + n] == header:
            turns.append([])
            j = i + n
            while True:
                turns[-1].append(j - 1)
                if ids[j] == end_id:
                    break
                j += 1
    return turns


def qa_batch(processor, config: TrainConfig, step: int) -> dict[str, torch.Tensor]:
    """Batch ``step`` of stage 2: right-padded conversations, the same for the same (seed, step)."""
    tokenizer = processor.tokenizer
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    rows, images, positions, grounding, descriptions = [], [], [], [], []
    for b in range(config.qa_batch):
        index = step * config.qa_batch + b
        scene, render = next(iter_scenes(config.seed, "train", 1, start=index))
        questions = scene_questions(scene, config.seed)
        rng = scene_rng(config.seed, "train", index, stream=7)
        messages, asked = _conversation(questions, rng, config.turns)
        if config.referent_weight:
            messages += [
                {"role": "user", "content": [{"type": "text", "text": REFERENT_QUESTION}]},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": referent_text(scene, asked[0].question)}],
                },
            ]
        text = processor.apply_chat_template(messages)
        owners = patch_owners(render.object_map, len(scene.objects))
        grounding.append(_grounding_labels(scene, owners, asked[0], config.grounding_answer))
        descriptions.append(patch_descriptions(owners, scene.objects))
        encoded = processor(images=render.image, text=text, return_tensors="pt")
        ids = encoded["input_ids"][0].tolist()
        rows.append(ids)
        images.append(encoded["pixel_values"][0])
        turns = _answer_positions(ids, header, end_id)
        answer_turns = len(turns) - (1 if config.referent_weight else 0)
        positions.append([(p, k >= answer_turns) for k, turn in enumerate(turns) for p in turn])
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, ids in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention_mask[r, : len(ids)] = 1
    batch_index = torch.tensor([r for r, pos in enumerate(positions) for _ in pos])
    position = torch.tensor([p for pos in positions for p, _ in pos])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "image_mask": input_ids == image_id,
        "grounding": torch.stack(grounding),
        "patch_descriptions": torch.stack(descriptions),
        "pixel_values": torch.stack(images),
        "batch_index": batch_index,
        "position": position,
        "targets": input_ids[batch_index, position + 1],
        "referent": torch.tensor([r for pos in positions for _, r in pos]),
    }


def grounding_classes(config: TrainConfig) -> int:
    return 4 if config.grounding_answer else 3


def _grounding_labels(scene, owners: np.ndarray, question, by_answer: bool = False) -> torch.Tensor:
    """Per image patch (``owners``: :func:`patch_owners`): 1 or 2 if it shows an object the
    question's first or second phrase names.

    0 otherwise (floor, or an object the question does not name). ``by_answer``: the first
    phrase's patches are 1 when the answer is "no" and 3 otherwise, so each of them must also
    carry the answer (a dense signal for the comparison the answer needs).
    """
    labels = np.zeros(len(owners), dtype=np.int64)
    for role, objects in enumerate(mentioned_objects(scene, question.question), start=1):
        if by_answer and role == 1 and question.label != "no":
            role = 3
        labels[np.isin(owners, objects)] = role
    return torch.from_numpy(labels)


class _QABatches(torch.utils.data.Dataset):
    """Stage-2 batches ``first, first + 1, …``: item ``k`` is ``qa_batch(…, first + k)``."""

    def __init__(self, processor, config: TrainConfig, first: int):
        self.processor, self.config, self.first = processor, config, first

    def __len__(self) -> int:
        return max(0, self.config.qa_steps - self.first)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return qa_batch(self.processor, self.config, self.first + k)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def qa_batches(processor, config: TrainConfig, first: int):
    """Iterate the batches from step ``first`` on; with workers, rendered ahead in parallel.

    The batches are the same either way: each depends on its step alone.
    """
    dataset = _QABatches(processor, config, first)
    if config.loader_workers == 0:
        return (dataset[k] for k in range(len(dataset)))
    return iter(
        torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=config.loader_workers,
            worker_init_fn=_one_thread,
            prefetch_factor=4,
        )
    )


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def oracle_embeds(model, input_ids, patch_descriptions, oracle: torch.Tensor) -> torch.Tensor:
    """Input embeddings with each image token set to its patch's row of ``oracle``."""
    embeds = model.get_input_embeddings()(input_ids)
    image_mask = (input_ids == model.config.image_token_index).unsqueeze(-1)
    return embeds.masked_scatter(image_mask, oracle[patch_descriptions].to(embeds.dtype))


def _forward(model, batch: dict[str, torch.Tensor], oracle: torch.Tensor | None = None):
    """The language model's forward; with ``oracle``, on oracle image tokens, not the image."""
    if oracle is not None:
        return model.model(
            inputs_embeds=oracle_embeds(
                model, batch["input_ids"], batch["patch_descriptions"], oracle
            ),
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
    return model.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        output_hidden_states=True,
    )


def qa_loss(
    model, batch: dict[str, torch.Tensor], grounding_head, layer: int, oracle=None
) -> tuple:
    """(answer loss, grounding loss, referent loss — 0 without a referent turn) of a batch from
    :func:`qa_batch` (``oracle``: see _forward)."""
    out = _forward(model, batch, oracle)
    logits = model.lm_head(out.last_hidden_state[batch["batch_index"], batch["position"]])
    losses = F.cross_entropy(logits, batch["targets"], reduction="none")
    referent = batch["referent"]
    image_states = out.hidden_states[layer][batch["image_mask"]]
    return (
        losses[~referent].mean(),
        balanced_cross_entropy(grounding_head(image_states), batch["grounding"].flatten()),
        losses[referent].mean() if referent.any() else losses.new_zeros(()),
    )


def balanced_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the classes present of each class's mean cross-entropy.

    Named objects cover a few percent of the patches; plain cross-entropy settles at predicting
    "neither" everywhere (measured: no named patch found after 180 steps).
    """
    losses = F.cross_entropy(logits, targets, reduction="none")
    return torch.stack([losses[targets == c].mean() for c in targets.unique()]).mean()


# qa_batch steps from here on hold train scenes that training never reaches.
UNSEEN_BATCHES = 100_000


@torch.no_grad()
def grounding_confusion(
    model, processor, config: TrainConfig, grounding_head, batches: int = 4, oracle=None
):
    """Confusion of the grounding head (rows true, columns predicted: neither, first, second
    phrase, and with ``grounding_answer`` first phrase of a question not answered "no").

    On image tokens of unseen train scenes: the direct measure of whether image tokens match
    their patch against the question's words.
    """
    n = grounding_classes(config)
    confusion = torch.zeros(n, n, dtype=torch.long)
    model.eval()
    for k in range(batches):
        batch = _to(qa_batch(processor, config, UNSEEN_BATCHES + k), model.device)
        out = _forward(model, batch, oracle)
        states = out.hidden_states[config.grounding_layer][batch["image_mask"]]
        predicted = grounding_head(states).argmax(-1)
        confusion += (
            torch.bincount(n * batch["grounding"].flatten() + predicted, minlength=n * n)
            .reshape(n, n)
            .cpu()
        )
    return confusion.tolist()


def asked_question(tokenizer, input_ids) -> str:
    """The question a training sequence asks: the first line of its first user turn."""
    text = tokenizer.decode(input_ids).split("<|im_start|>user\n", 1)[1]
    return text.split("\n", 1)[0]


def _attribute_tokens(tokenizer) -> dict[int, str]:
    """Token id -> attribute kind, for every attribute value after a space, and at the start of
    a text where it is one token (a referent starts with the size: "small", "large")."""
    kinds = {}
    for kind, values in ATTRIBUTES.items():
        for value in values:
            spaced = tokenizer(" " + value, add_special_tokens=False)["input_ids"]
            if len(spaced) != 1:
                raise ValueError(f"attribute value {value!r} is not one token: {spaced}")
            kinds[spaced[0]] = kind
            bare = tokenizer(value, add_special_tokens=False)["input_ids"]
            if len(bare) == 1:
                kinds[bare[0]] = kind
    return kinds


@torch.no_grad()
def referent_reading(
    model, processor, config: TrainConfig, batches: int = 12, oracle=None
) -> dict[str, dict]:
    """How well the referent turn names attribute values that its question does not name.

    A value the question names ("Is the green object small?" -> green, small) can be copied from
    the text; any other (the object's material and shape there) must be read from the image.
    Per attribute: accuracy of the next-token guess on those words (teacher forcing), their
    number, and the share of the most frequent value among them (what guessing without the image
    reaches), on unseen train scenes. Needs ``config.referent_weight`` > 0.
    """
    if not config.referent_weight:
        raise ValueError("referent_reading needs a config with referent_weight > 0")
    kinds = _attribute_tokens(processor.tokenizer)
    hits, words = defaultdict(list), defaultdict(list)
    model.eval()
    for k in range(batches):
        batch = _to(qa_batch(processor, config, UNSEEN_BATCHES + k), model.device)
        out = _forward(model, batch, oracle)
        rows, positions = batch["batch_index"], batch["position"]
        guesses = model.lm_head(out.last_hidden_state[rows, positions]).argmax(-1)
        named = [
            {
                v
                for word in asked_question(processor.tokenizer, ids).split()
                for v in parse_reference(word).values()
            }
            for ids in batch["input_ids"].tolist()
        ]
        for j in torch.nonzero(batch["referent"]).flatten().tolist():
            target = int(batch["targets"][j])
            word = processor.tokenizer.decode(target).strip()
            if target in kinds and word not in named[int(rows[j])]:
                hits[kinds[target]].append(int(guesses[j]) == target)
                words[kinds[target]].append(word)  # "small" and " small": one value
    return {
        kind: {
            "accuracy": float(np.mean(hits[kind])),
            "n": len(hits[kind]),
            "majority": max(map(words[kind].count, set(words[kind]))) / len(words[kind]),
        }
        for kind in ATTRIBUTES
        if hits[kind]
    }


@torch.no_grad()
def evaluate_first_token(
    model, processor, seed: int, n_scenes: int, batch_size: int = 16, oracle=None
) -> dict:
    """Held-out accuracy per family, from the first answer token: yes vs no, or the option letters.

    Questions are prompted exactly as at inference (one turn, left padding, the model's template).
    With ``oracle`` (:func:`oracle_table`), the image tokens are perfect object tokens instead.
    ``auc``: per yes/no family, the ROC AUC of the yes − no logit, which tells whether the model
    ranks the answers before its accuracy leaves chance.
    """
    tokenizer = processor.tokenizer
    yes_no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    letters = tokenizer.convert_tokens_to_ids(list(LETTERS[:4]))
    items = []
    for scene, render in iter_scenes(seed, "val", n_scenes):
        words = None
        if oracle is not None:
            owners = patch_owners(render.object_map, len(scene.objects))
            words = patch_descriptions(owners, scene.objects)
        items += [(render.image, q, words) for q in scene_questions(scene, seed)]
    correct, margins = defaultdict(list), defaultdict(list)
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        texts = [chat_prompt(processor, format_prompt(q.question, q.choices)) for _, q, _ in chunk]
        inputs = processor(
            images=[im for im, _, _ in chunk], text=texts, return_tensors="pt", padding=True
        ).to(model.device)
        if oracle is not None:
            words = torch.stack([w for _, _, w in chunk]).to(model.device)
            inputs = {
                "inputs_embeds": oracle_embeds(model, inputs["input_ids"], words, oracle),
                "attention_mask": inputs["attention_mask"],
            }
        last = model.model(**inputs).last_hidden_state[:, -1]
        logits = model.lm_head(last)
        for row, (_, q, _) in enumerate(chunk):
            if q.choices:
                guess = LETTERS[int(logits[row, letters[: len(q.choices)]].argmax())]
            else:
                margin = float(logits[row, yes_no[0]] - logits[row, yes_no[1]])
                margins[q.family].append((margin, q.label == "yes"))
                guess = "yes" if margin > 0 else "no"
            correct[q.family].append(guess == q.label)
    per_family = {f: float(np.mean(v)) for f, v in correct.items()}
    binary = [c for f, v in correct.items() if f != "color_choice" for c in v]
    auc = {f: roc_auc(*zip(*v, strict=True)) for f, v in margins.items()}
    return {"binary": float(np.mean(binary)), "n": len(items), "per_family": per_family, "auc": auc}


def roc_auc(scores, positive) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    pos, neg = scores[positive][:, None], scores[~positive][None, :]
    if not pos.size or not neg.size:
        return float("nan")
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def _lr_factor(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.qa_steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_default(out_dir: Path, config: TrainConfig, log=print) -> Path:
    """Run both stages into ``out_dir`` (checkpoints, log, exported weights); resumable."""
    from peft import LoraConfig, get_peft_model

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    started = time.time()
    stage1 = out_dir / "stage1_vision_projector.safetensors"
    model, processor = load_base(stage1 if stage1.is_file() else None, config.decoder_layers)
    model.to(config.device)
    if not stage1.is_file():
        t0 = time.time()
        train_vision(model, processor, config, log)
        save_file(vision_projector_state(model), str(stage1))
        (out_dir / "stage1.json").write_text(json.dumps({"seconds": time.time() - t0}) + "\n")

    model = get_peft_model(
        model,
        LoraConfig(
            r=config.lora_rank,
            lora_alpha=2 * config.lora_rank,
            lora_dropout=0.05,
            target_modules=LORA_TARGETS,
        ),
    )
    for module in _vision_modules(model.base_model.model):
        module.requires_grad_(True)
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    tower = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    hidden = model.config.text_config.hidden_size
    # Normalised first: the residual stream has a few very large dimensions.
    grounding_head = torch.nn.Sequential(
        torch.nn.LayerNorm(hidden, elementwise_affine=False),
        torch.nn.Linear(hidden, grounding_classes(config)),
    ).to(config.device)
    optimizer = torch.optim.AdamW(
        [
            {"params": lora, "lr": config.lora_lr},
            {"params": tower, "lr": config.tower_lr},
            {"params": grounding_head.parameters(), "lr": config.grounding_lr},
        ],
        weight_decay=0.0,
    )
    base_lrs = [config.lora_lr, config.tower_lr, config.grounding_lr]
    checkpoint = out_dir / "checkpoint.pt"
    state = {"step": 0, "seconds": 0.0, "history": []}
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False, map_location=config.device)
        model.load_state_dict(saved["trainable"], strict=False)
        grounding_head.load_state_dict(saved["grounding_head"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        log(f"resumed at step {state['step']}")
    inner = model.base_model.model
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}

    def save_checkpoint() -> None:
        trainable = {
            n: p.detach().clone() for n, p in model.named_parameters() if n in trainable_names
        }
        _atomic_torch_save(
            {
                "trainable": trainable,
                "grounding_head": grounding_head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": state,
            },
            checkpoint,
        )

    oracle = oracle_table(inner, processor.tokenizer) if config.oracle_tokens else None

    def evaluation() -> dict:
        result = evaluate_first_token(
            inner, processor, config.seed, config.eval_scenes, oracle=oracle
        )
        result["grounding"] = grounding_confusion(
            inner, processor, config, grounding_head, oracle=oracle
        )
        if config.referent_weight:
            result["referent_reading"] = referent_reading(inner, processor, config, oracle=oracle)
        if oracle is not None:
            result["real_tokens"] = evaluate_first_token(
                inner, processor, config.seed, config.eval_scenes
            )
        return result

    session_start, last_save = time.time(), time.time()
    losses, grounding_losses, referent_losses = [], [], []
    seconds_before = state["seconds"]
    batches = qa_batches(processor, config, state["step"])
    while state["step"] < config.qa_steps:
        step = state["step"]
        if step % config.eval_every == 0 and not any(h["step"] == step for h in state["history"]):
            result = evaluation()
            state["history"].append({"step": step, **result})
            log(f"eval step {step}: {json.dumps(result)}")
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr * _lr_factor(config, step)
        model.train()
        batch = _to(next(batches), config.device)
        loss, grounding, referent = qa_loss(
            inner, batch, grounding_head, config.grounding_layer, oracle
        )
        optimizer.zero_grad()
        (
            config.answer_weight * loss
            + config.grounding_weight * grounding
            + config.referent_weight * referent
        ).backward()
        torch.nn.utils.clip_grad_norm_(lora + tower, 1.0)
        optimizer.step()
        losses.append(loss.item())
        grounding_losses.append(grounding.item())
        referent_losses.append(referent.item())
        state["step"] = step + 1
        state["seconds"] = seconds_before + time.time() - session_start
        if state["step"] % 25 == 0:
            log(
                f"step {state['step']}: answer loss {np.mean(losses[-25:]):.4f} "
                f"grounding {np.mean(grounding_losses[-25:]):.4f} "
                f"referent {np.mean(referent_losses[-25:]):.4f} ({state['seconds']:.0f}s)"
            )
        if time.time() - last_save > config.checkpoint_every_s:
            save_checkpoint()
            last_save = time.time()
        if config.max_minutes and time.time() - started > 60 * config.max_minutes:
            log("time budget reached")
            break
    save_checkpoint()
    final = evaluation()
    state["history"].append({"step": state["step"], **final})
    log(f"final eval: {json.dumps(final)}")
    export(model, out_dir / "weights", config, state)
    return out_dir / "weights"


def export(peft_model, weights_dir: Path, config: TrainConfig, state: dict) -> None:
    """Write the shippable parts in fp16 (vision tower + projector, LoRA adapter) and the record."""
    from peft import get_peft_model_state_dict

    weights_dir.mkdir(parents=True, exist_ok=True)
    half = {k: v.cpu().half() for k, v in vision_projector_state(peft_model).items()}
    save_file(half, str(weights_dir / VISION_PROJECTOR_FILE))
    adapter = {k: v.cpu().half() for k, v in get_peft_model_state_dict(peft_model).items()}
    peft_model.save_pretrained(weights_dir, state_dict=adapter)
    (weights_dir / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    record = {
        "config": asdict(config),
        "qa_steps_done": state["step"],
        "qa_samples": state["step"] * config.qa_batch * config.turns,
        "qa_seconds": round(state["seconds"]),
        "eval_history": state["history"],
    }
    (weights_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def ship(weights_dir: Path) -> None:
    """Copy exported weights into the package (what `default_model_dir` assembles from)."""
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    for path in weights_dir.iterdir():
        if path.is_file():
            (WEIGHTS_DIR / path.name).write_bytes(path.read_bytes())
    load_file(WEIGHTS_DIR / VISION_PROJECTOR_FILE)  # fails loudly on a broken copy
