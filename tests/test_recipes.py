"""`run` end to end on every task's fixture files, and on every architecture family."""

from __future__ import annotations

import json

import pytest

from command import superneurons
from data.fixtures import (
    save_image,
    write_aokvqa,
    write_clevr,
    write_coco_train2014,
    write_instaorder,
    write_pope_val,
    write_scienceqa,
    write_vizwiz,
)
from models.tiny import BUILDERS
from superneurons.data.loaders import TASKS
from superneurons.models.loading import LoadedModel
from superneurons.pipeline import RunConfig, run


def write_jsonl(root):
    for split in ("train", "val"):
        lines = []
        for k in range(6):
            save_image(root / "images" / f"{split}{k}.png", k)
            label = "yes" if k % 2 else "no"
            lines.append({"image": f"images/{split}{k}.png", "question": f"Q{k}?", "label": label})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def both_splits(write):
    return lambda root: (write(root, "train"), write(root, "val"))


FIXTURES = {
    "pope-random": lambda root: (write_pope_val(root), write_coco_train2014(root)),
    "pope-popular": lambda root: (write_pope_val(root), write_coco_train2014(root)),
    "pope-adversarial": lambda root: (write_pope_val(root), write_coco_train2014(root)),
    "vizwiz": both_splits(write_vizwiz),
    "clevr": both_splits(write_clevr),
    "aokvqa": both_splits(write_aokvqa),
    "scienceqa": write_scienceqa,
    "instaorder-occlusion": both_splits(write_instaorder),
    "instaorder-depth": both_splits(write_instaorder),
    "jsonl": write_jsonl,
    "scenes": lambda root: None,  # generated into the data directory by the task itself
}
# Generated tasks are as large as asked; the others use their whole (tiny) validation split.
N_VAL = {"scenes": 8}


def config(task: str, root, **overrides) -> RunConfig:
    settings = dict(
        task=task,
        data_dir=str(root),
        n_probe=8,
        selection="top_k",
        top_k=3,
        batch_size=4,
        max_new_tokens=2,
        # The fixtures' probing sets are a few questions: too few for the baselines' held-out
        # part (tests/test_baselines_run.py covers them).
        baselines=[],
        exit_layers="none",
    )
    return RunConfig(**{**settings, **overrides})


def test_every_task_has_a_fixture():
    assert set(FIXTURES) == set(TASKS)


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_run_on_each_task(task, tmp_path, tiny_llava_checkpoint):
    FIXTURES[task](tmp_path / "data")
    results = run(
        config(task, tmp_path / "data", model=str(tiny_llava_checkpoint), n_val=N_VAL.get(task)),
        tmp_path / "run",
        log=lambda *_: None,
    )
    assert results["dataset"] == task and len(results["selected"]) == 3
    assert results["template"] == TASKS[task].template
    assert results["n_probe"] >= 2 and results["n_val"] >= 2


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_run_with_each_architecture(arch, tmp_path):
    FIXTURES["pope-adversarial"](tmp_path / "data")
    tiny = BUILDERS[arch]()
    loaded = LoadedModel(tiny.model, tiny.processor, f"tiny-{arch}", tmp_path, "local")
    results = run(
        config("pope-adversarial", tmp_path / "data", model=f"tiny-{arch}"),
        tmp_path / "run",
        log=lambda *_: None,
        loaded=loaded,
    )
    assert results["model"] == f"tiny-{arch}" and results["selected"]
    manifest = json.loads((tmp_path / "run" / "activations" / "val" / "manifest.json").read_text())
    assert manifest["meta"]["architecture"] == arch


def test_data_inspect_prints_label_counts(tmp_path):
    FIXTURES["aokvqa"](tmp_path)
    done = superneurons(
        "data", "inspect", "--task", "aokvqa", "--data-dir", tmp_path, "--split", "val"
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["labels"]["yes"] == summary["labels"]["no"] > 0
    assert summary["n"] == sum(summary["labels"].values())
    missing = superneurons(
        "data", "inspect", "--task", "vizwiz", "--data-dir", tmp_path / "nowhere"
    )
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    assert "Traceback" not in missing.stderr
