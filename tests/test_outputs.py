"""Claimed outputs: never another's data, one writer at a time, files honouring the umask."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from command import superneurons
from superneurons.classifiers.artifact import load_classifier
from superneurons.errors import OutputError
from superneurons.outputs import STATE, Claim, check_output_file


def test_a_users_folder_is_refused_and_kept(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="not written by superneurons"):
        Claim(mine, "classifier")
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_an_output_overlapping_an_input_is_refused(tmp_path):
    (tmp_path / "run" / "store").mkdir(parents=True)
    for out, relation in ((tmp_path / "run", "contains"), (tmp_path / "run/store/x", "inside")):
        with pytest.raises(OutputError, match=relation):
            Claim(out, "classifier", inputs=[tmp_path / "run" / "store"])


def test_a_claim_that_writes_nothing_leaves_no_trace(tmp_path):
    with Claim(tmp_path / "a" / "b", "run"):
        assert (tmp_path / "a" / "b" / STATE / "lock").is_file()
    assert not (tmp_path / "a").exists()
    with Claim(tmp_path / "c", "run") as claim:
        (claim.path / "results.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [STATE, "results.json"]
    assert sorted(p.name for p in (tmp_path / "c" / STATE).iterdir()) == ["owner.json"]


def test_a_second_process_is_refused_while_the_first_holds_the_output(tmp_path):
    out = tmp_path / "out"
    with Claim(out, "scenes"):
        done = superneurons("scenes", "--out", out, "--scenes", "1")
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"error: {out} is in use by process {os.getpid()}; wait for it to finish"
    )


def test_two_identical_commands_at_once_one_runs_and_the_other_is_refused_at_once(tmp_path):
    out = tmp_path / "scenes"
    args = [sys.executable, "-m", "superneurons", "scenes", "--out", str(out), "--scenes", "300"]
    first = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    lock = out / STATE / "lock"
    deadline = time.time() + 60
    while not (lock.is_file() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    first_err = first.communicate(timeout=300)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    assert f"in use by process {first.pid}" in second.stderr
    assert len((out / "questions.jsonl").read_text().splitlines()) > 300


def test_leftovers_of_a_killed_process_are_removed_by_the_next_claim(tmp_path):
    out = tmp_path / "out"
    with Claim(out, "run") as claim:
        (claim.tmp / "half-written.json").write_text("{")
        (claim.path / "results.json").write_text("{}")
    # What earlier versions left beside their outputs when killed.
    (out / ".results.json.123.tmp").write_text("{")
    (out / ".classifier-abc").mkdir()
    with Claim(out, "run") as claim:
        assert list(claim.tmp.iterdir()) == []
        assert sorted(p.name for p in out.iterdir()) == [STATE, "results.json"]


def test_an_output_file_replaces_only_its_own_json(tmp_path):
    ours, theirs = tmp_path / "bench.json", tmp_path / "notes.json"
    ours.write_text('{"format": "superneurons-bench-flops/1"}')
    theirs.write_text('{"mine": true}')
    check_output_file(ours)
    with pytest.raises(OutputError, match="not a JSON file written by superneurons"):
        check_output_file(theirs)
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path)


def test_discover_replaces_its_own_classifier_and_keeps_the_users_files(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "clf"
    store = run_dir / "activations" / "probe"
    first = superneurons(
        "discover", "--store", store, "--out", out, "--selection", "top_k", "--top-k", "3"
    )
    assert first.returncode == 0, first.stderr
    (out / "NOTES.md").write_text("why I kept this classifier\n")
    second = superneurons(
        "discover", "--store", store, "--out", out, "--selection", "top_k", "--top-k", "5"
    )
    assert second.returncode == 0, second.stderr
    classifier, _ = load_classifier(out)
    assert len(classifier.selected_) == 5
    assert (out / "NOTES.md").read_text() == "why I kept this classifier\n"
    assert len(list(out.glob("neurons*.safetensors"))) == 1


def _modes(root: Path) -> set[tuple[str, int]]:
    return {
        ("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode))
        for p in [root, *root.rglob("*")]
    }


def test_every_file_a_run_writes_honours_the_umask(tiny_llava_checkpoint, tmp_path):
    out = tmp_path / "run"
    script = "import os, sys; os.umask(0o027);from superneurons.cli import main; main(sys.argv[1:])"
    args = [
        "run",
        "--out",
        out,
        "--model",
        tiny_llava_checkpoint,
        "--n-probe",
        "8",
        "--n-val",
        "8",
        "--max-new-tokens",
        "2",
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert _modes(out) == {("dir", 0o750), ("file", 0o640)}
    kinds = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert {".json", ".npy", ".png", ".jsonl", ".safetensors"} <= kinds


def test_a_users_files_that_merely_share_our_names_are_not_taken_for_ours(tmp_path):
    for files in ({"scenes.json": "{}", "questions.jsonl": "{}"}, {"results.json": "{}"},
                  {"manifest.json": '{"mine": 1}'}):  # fmt: skip
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        for kind in ("scenes", "run", "store"):
            with pytest.raises(OutputError, match="not written by superneurons"):
                Claim(folder, kind)
        assert {p.name: p.read_text() for p in folder.iterdir()} == files


def test_a_claim_that_writes_nothing_keeps_the_users_empty_folders(tmp_path):
    (tmp_path / "out" / "figures").mkdir(parents=True)
    with Claim(tmp_path / "out", "run") as claim:
        (claim.path / "data").mkdir()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["figures"]


def test_a_planted_link_in_place_of_the_lock_is_refused(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "out" / STATE).mkdir(parents=True)
    (tmp_path / "out" / STATE / "lock").symlink_to(target)
    with pytest.raises(OutputError, match="cannot open the lock file"):
        Claim(tmp_path / "out", "run")
    assert target.read_text() == "keep me"


def test_a_file_output_inside_a_run_another_process_works_in_is_refused(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    args = ["evaluate", "--classifier", run / "classifier", "--store", run / "activations" / "val"]
    out = run / "evaluation.json"
    with Claim(run, "run"):  # as a `run --out` resuming there would
        done = superneurons(*args, "--out", out)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"error: --out {out}: {run.resolve()} is in use by process {os.getpid()}; "
        "wait for it to finish"
    )
    assert not out.exists()
    done = superneurons(*args, "--out", out)  # the run is idle: written, and no lock is left
    assert done.returncode == 0, done.stderr
    assert out.is_file() and not (run / STATE / "lock").exists()


def test_a_file_output_never_replaces_a_file_of_a_claimed_output(tiny_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run[0], other)
    run = tiny_run[0]
    args = ["evaluate", "--classifier", run / "classifier", "--store", run / "activations" / "val"]
    for target, kind in ((other / "classifier" / "classifier.json", "classifier"),
                         (other / "results.json", "run")):  # fmt: skip
        before = target.read_bytes()
        done = superneurons(*args, "--out", target)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (
            f"error: --out {target} is part of the superneurons {kind} {target.parent.resolve()} "
            "and is not replaced; choose a new file name"
        )
        assert target.read_bytes() == before
    assert superneurons(*args, "--out", tmp_path / "evaluation.json").returncode == 0
    again = superneurons(*args, "--out", tmp_path / "evaluation.json")  # its own kind: replaced
    assert again.returncode == 0, again.stderr


def test_a_file_output_replaces_only_a_document_of_its_own_kind(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text('{"format": "superneurons-bench-extract/1"}')
    with pytest.raises(OutputError, match=r"holds a superneurons-bench-extract/1 document, not"):
        check_output_file(bench, document_format="superneurons-results/2")
    check_output_file(bench, document_format="superneurons-bench-extract/1")
    check_output_file(bench)


def test_an_output_file_that_cannot_be_written_is_refused_before_the_work(tiny_run, tmp_path):
    run = tiny_run[0]
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    # As root, without the capability that writes anywhere, as a plain user would be.
    drop = "-dac_override,-dac_read_search"
    prefix = ["setpriv", "--bounding-set", drop, "--inh-caps", drop, "--"]
    command = [
        *(prefix if os.geteuid() == 0 else []), sys.executable, "-m", "superneurons", "evaluate",
        "--classifier", str(run / "classifier"), "--store", str(run / "activations" / "val"),
        "--out", str(locked / "x.json"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"error: --out {locked / 'x.json'}: cannot write in {locked} (Permission denied)"
    )
    assert list(locked.iterdir()) == []
