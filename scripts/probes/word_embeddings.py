"""Research probe (docs/embedded-model.md, runs 33-34): not part of the package.

``cosines OUT...``: for the stage-2 checkpoint of each ``train-default`` run directory, the cosine
similarity of the input embeddings of word pairs a question turns on (metal/rubber, cube/cylinder,
left/right, ...). A pair near 1 is one word to the decoder: it cannot answer questions that
differ only by it.

``breakdown OUT``: the checkpoint in OUT on the held-out questions, attribute questions split by
the attribute asked and existence questions by subtype, adversarial negatives by the attribute
changed (the validation questions are regenerated from the seed to know these).
"""

import sys
from collections import Counter
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration

from superneurons.data.scenes import generate_questions, iter_scenes
from superneurons.data.scenes.questions import VALUES, find_objects, parse_reference
from superneurons.data.scenes.write import scene_rng
from superneurons.models.embedded import train
from superneurons.models.embedded.architecture import (
    IMAGE_SIZE,
    build_config,
    build_processor,
    build_tokenizer,
)
from superneurons.models.embedded.pool import QUESTION_STREAM, Pool

PAIRS = [
    ("metal", "rubber"),
    ("red", "blue"),
    ("gray", "cyan"),
    ("small", "large"),
    ("cube", "sphere"),
    ("cube", "cylinder"),
    ("left", "right"),
    ("one", "two"),
    ("three", "four"),
]


def load(out: Path):
    """The run's validation pool, processor and stage-2 checkpoint (model, step)."""
    pool_train, pool_val = Pool.load(out / "pool_train.pt"), Pool.load(out / "pool_val.pt")
    processor = build_processor(build_tokenizer([*pool_train.text, *pool_train.answer]))
    model = LlavaForConditionalGeneration(build_config(processor.tokenizer)).eval()
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])  # tied checkpoints hold lm_head.weight too
    return pool_val, processor, model, state["step"]


def cosines(outs: list[Path]) -> None:
    for out in outs:
        _, processor, model, step = load(out)
        embeddings = model.get_input_embeddings().weight
        ids = processor.tokenizer.convert_tokens_to_ids
        pairs = [
            f"{a}/{b} {torch.cosine_similarity(embeddings[ids(a)], embeddings[ids(b)], 0):.2f}"
            for a, b in PAIRS
        ]
        print(out, "step", step, " ".join(pairs))


def question_keys(scene, question) -> list[str]:
    """The groups a validation question counts in."""
    keys = [question.family]
    if question.family == "attribute":
        (kind,) = parse_reference(question.question.split()[-1])  # the value asked, last
        keys += [f"attribute: {kind}", f"attribute: {kind}: {question.label}"]
    if question.family == "existence":
        keys.append(f"existence: {question.label}: {question.subtype}")
        if question.label == "no" and question.subtype == "adversarial":
            attrs = parse_reference(question.question)
            for name in attrs:  # the attribute whose change made the phrase match nothing
                if any(find_objects(scene, {**attrs, name: v}) for v in VALUES[name]):
                    keys.append(f"existence: adversarial, changed {name}")
    return keys


def breakdown(out: Path, seed: int = 0) -> None:
    pool_val, processor, model, step = load(out)
    questions = train.QuestionSet(pool_val, processor)
    keys = [
        question_keys(scene, question)
        for scene, _ in iter_scenes(seed, "val", len(pool_val.images), resolution=IMAGE_SIZE)
        for question in generate_questions(
            scene, scene_rng(seed, "val", scene.index, stream=QUESTION_STREAM)
        )
    ]
    assert len(keys) == len(questions), "the pool was not made with this seed"
    correct = train.correct_answers(
        model, questions, torch.load(out / "features_val.pt", weights_only=True)
    )
    hits, totals = Counter(), Counter()
    for groups, ok in zip(keys, correct, strict=True):
        for key in groups:
            hits[key] += ok
            totals[key] += 1
    print(out, "step", step)
    for key in sorted(totals):
        print(f"  {key:40s} {hits[key] / totals[key]:.3f}  n={totals[key]}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    command, *paths = sys.argv[1:]
    if command == "cosines":
        cosines([Path(p) for p in paths])
    elif command == "breakdown":
        breakdown(Path(paths[0]))
    else:
        sys.exit(__doc__)
