"""Bad input stops with a message naming what and where, and leaves nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from command import superneurons
from superneurons.data.probing import balanced_sample
from superneurons.data.records import DataError, Record, load_jsonl
from superneurons.store import is_complete


def write_questions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_corrupt_image_names_the_file_and_leaves_no_finished_store(
    tmp_path, tiny_llava_checkpoint
):
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [
        {"image": "good.png", "question": f"q{k}?", "label": "yes" if k % 2 else "no"}
        for k in range(4)
    ]
    rows[3]["image"] = "broken.png"
    questions = write_questions(tmp_path / "q.jsonl", rows)
    store = tmp_path / "store"
    done = superneurons(
        "extract",
        "--out",
        str(store),
        "--jsonl",
        str(questions),
        "--n",
        "4",
        "--model",
        str(tiny_llava_checkpoint),
        "--batch-size",
        "2",
        "--max-new-tokens",
        "2",
    )
    assert done.returncode == 2
    assert "broken.png" in done.stderr and "Traceback" not in done.stderr
    assert not is_complete(store)


def test_a_label_outside_the_label_set_names_the_line(tmp_path):
    path = write_questions(
        tmp_path / "q.jsonl",
        [
            {"image": "a.png", "question": "q?", "label": "yes"},
            {"image": "a.png", "question": "q?", "label": "maybe"},
        ],
    )
    with pytest.raises(DataError, match=r"q\.jsonl:2: label 'maybe'"):
        load_jsonl(path)
    choice = write_questions(
        tmp_path / "c.jsonl",
        [
            {"image": "a.png", "question": "q?", "label": "C", "choices": ["x", "y"]},
        ],
    )
    with pytest.raises(DataError, match=r"c\.jsonl:1: label 'C' is not one of \['A', 'B'\]"):
        load_jsonl(choice)


def test_empty_and_single_class_probing_sets_are_refused():
    yes = [Record(str(k), Path("a.png"), "q?", "yes") for k in range(5)]
    with pytest.raises(DataError, match="no 'no' samples"):
        balanced_sample(yes, 4, seed=0)
    with pytest.raises(DataError, match="no 'yes' samples among 0 records"):
        balanced_sample([], 4, seed=0)


def test_a_model_missing_from_the_cache_says_where_it_looked(tmp_path):
    done = superneurons(
        "extract",
        "--out",
        str(tmp_path / "s"),
        "--model",
        "nobody/no-such-vlm",
        "--n",
        "2",
        env={"HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert done.returncode == 2
    assert "nobody/no-such-vlm" in done.stderr and str(tmp_path / "hub") in done.stderr


def test_a_model_in_the_hf_cache_loads_offline(tmp_path, tiny_llava_checkpoint):
    import shutil

    snapshot = tmp_path / "hub" / "models--someone--tiny-vlm" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_llava_checkpoint, snapshot)
    (tmp_path / "hub" / "models--someone--tiny-vlm" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-vlm" / "refs" / "main").write_text("a" * 40)
    script = (
        "from superneurons.models.loading import load_model; m = load_model('someone/tiny-vlm');"
        "print(m.revision, type(m.model).__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["a" * 40, "LlavaForConditionalGeneration"]
