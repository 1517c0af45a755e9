"""The command line, run as a real process."""

from __future__ import annotations

import json
from pathlib import Path

from command import superneurons


def test_scenes_command_writes_a_reproducible_dataset(tmp_path: Path):
    for name in ("a", "b"):
        done = superneurons("scenes", "--out", str(tmp_path / name), "--scenes", "3", "--seed", "5")
        assert done.returncode == 0, done.stderr
    first, second = tmp_path / "a", tmp_path / "b"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    records = [json.loads(line) for line in (first / "questions.jsonl").open()]
    assert records and all({"image", "question", "label", "family"} <= r.keys() for r in records)
    assert all((first / r["image"]).is_file() for r in records)
    assert all("choices" in r for r in records if r["family"] == "color_choice")


def test_unknown_split_is_a_clear_error(tmp_path: Path):
    done = superneurons("scenes", "--out", str(tmp_path), "--scenes", "1", "--split", "dev")
    assert done.returncode == 2
    assert "'--split': 'dev' is not one of train, val, test" in done.stderr
    assert "Traceback" not in done.stderr
