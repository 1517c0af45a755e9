"""One selection for every command: ``select(task, data_dir, split, n, seed)``; scenes included."""

from __future__ import annotations

import json

from command import superneurons
from superneurons.data.loaders import TASKS, label_counts, select


def test_scenes_are_a_generated_task_with_their_own_sizes():
    spec = TASKS["scenes"]
    assert spec.generated and spec.template == "plain"
    assert dict(spec.sizes) == {"train": 1000, "val": 600, "test": 600}
    assert not TASKS["pope-random"].generated and TASKS["pope-random"].sizes["train"] == 3000


def test_select_is_balanced_seeded_and_writes_only_where_told(tmp_path):
    first = select("scenes", tmp_path / "a", "val", 40, seed=3)
    again = select("scenes", tmp_path / "b", "val", 40, seed=3)
    assert label_counts(first) == {"no": 20, "yes": 20}
    assert [(r.id, r.question, r.label) for r in first] == [
        (r.id, r.question, r.label) for r in again
    ]
    assert [p.name for p in tmp_path.iterdir()] in (["a", "b"], ["b", "a"])
    other = select("scenes", tmp_path / "a", "val", 40, seed=4)
    assert [r.id for r in other] != [r.id for r in first]


def test_a_file_task_takes_all_of_a_split_without_a_size(tmp_path):
    rows = [
        {"id": str(k), "image": "a.png", "question": "q?", "label": ("yes", "no")[k % 3 == 0]}
        for k in range(9)
    ]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(select("jsonl", tmp_path, "val", None)) == 9  # no default size for val
    assert label_counts(select("jsonl", tmp_path, "val", 4)) == {"no": 2, "yes": 2}


def test_scenes_need_no_data_directory_on_the_command_line(tmp_path):
    inspected = superneurons("data", "inspect", "--task", "scenes", "--split", "val", "--n", "8")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout) == {
        "task": "scenes",
        "split": "val",
        "n": 8,
        "labels": {"no": 4, "yes": 4},
    }
    out = tmp_path / "X"
    extracted = superneurons(
        "extract", "--task", "scenes", "--split", "val", "--n", "8", "--out", out,
        "--max-new-tokens", "4",
    )  # fmt: skip
    assert extracted.returncode == 0, extracted.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X"]  # nothing outside --out
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["records"]) == 8 and (out / "data").is_dir()


def test_families_keep_only_their_records_and_a_generated_task_makes_enough(tmp_path):
    import pytest

    from superneurons.errors import ConfigError

    rows = [
        {"id": str(k), "image": "a.png", "question": "q?", "label": ("yes", "no")[k % 2],
         "family": ("colour", "shape", "size")[k % 3]}
        for k in range(30)
    ]  # fmt: skip
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = select("jsonl", tmp_path, "val", None, families=["shape", "size"])
    assert len(kept) == 20 and {r.family for r in kept} == {"shape", "size"}
    with pytest.raises(ConfigError, match=r"no family \['weight'\].*\['colour', 'shape', 'size'\]"):
        select("jsonl", tmp_path, "val", None, families=["weight"])
    # One family of six: the scenes task generates more scenes until 60 of it are there.
    depth = select("scenes", tmp_path / "scenes", "val", 60, seed=1, families=["depth"])
    assert len(depth) == 60 and {r.family for r in depth} == {"depth"}
    assert label_counts(depth) == {"no": 30, "yes": 30}
