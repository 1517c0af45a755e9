"""Extraction through the real command line: killed at random moments it resumes to the same
bytes; a full disk is one clear error before anything is written, and the store resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from command import superneurons
from superneurons.store import PROGRESS, ActivationStore

N = 160


def _questions(root: Path, n: int = N) -> Path:
    rng = np.random.default_rng(0)
    for k in range(4):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{k}.png")
    rows = [
        {
            "id": f"q{i}",
            "image": f"{i % 4}.png",
            "question": f"Is it {i}?",
            "label": ("yes", "no")[i % 2],
        }
        for i in range(n)
    ]
    path = root / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _extract_args(questions: Path, out: Path, model: Path, n: int = N) -> list[str]:
    return [
        "extract", "--out", str(out), "--jsonl", str(questions), "--model", str(model),
        "--n", str(n), "--batch-size", "2", "--max-new-tokens", "2",
    ]  # fmt: skip


def _committed(out: Path) -> int:
    """Samples the progress file says are committed (0 before it exists)."""
    try:
        return json.loads((out / PROGRESS).read_text())["n_done"]
    except (OSError, ValueError, KeyError):
        return 0


def _store_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_extraction_killed_at_random_moments_resumes_to_identical_bytes(
    tmp_path, tiny_llava_checkpoint
):
    questions = _questions(tmp_path)
    reference = superneurons(*_extract_args(questions, tmp_path / "ref", tiny_llava_checkpoint))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "superneurons",
               *_extract_args(questions, out, tiny_llava_checkpoint)]  # fmt: skip
    rng = np.random.default_rng(7)
    partial = []
    for _ in range(3):
        process = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        # A random moment after a random number of committed samples, in the first half: mid-way
        # however loaded or fast the machine is (a fixed delay after start lands before the
        # first chunk on a loaded one; a target near N lets a fast one finish before the kill).
        target = int(rng.integers(1, N // 2))
        deadline = time.time() + 120
        while process.poll() is None and _committed(out) < target:
            assert time.time() < deadline
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.01)))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if (out / PROGRESS).is_file():
            partial.append(json.loads((out / PROGRESS).read_text())["n_done"])
    assert any(0 < n_done < N for n_done in partial), partial  # some kill landed mid-way

    finished = superneurons(*_extract_args(questions, out, tiny_llava_checkpoint))
    assert finished.returncode == 0, finished.stderr
    assert _store_files(out) == _store_files(tmp_path / "ref")
    assert ActivationStore.open(out).n == N


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs when this process may mount one, else None."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        yield None
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# Without a small disk to fill, the reservation itself is made to fail as a full disk would.
NO_SPACE = """
import errno, os, sys
def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.posix_fallocate = full
from superneurons.cli import main
main(sys.argv[1:])
"""


def test_a_full_disk_is_one_clear_error_and_the_store_resumes(
    tmp_path, tiny_llava_checkpoint, small_disk
):
    questions = _questions(tmp_path)
    if small_disk is not None:
        out = small_disk / "store"
        # Leave 64 KiB: less than the store's 160 x 3 sites x 2 layers x 2 bytes x width.
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (free - 64 * 1024))
        done = superneurons(*_extract_args(questions, out, tiny_llava_checkpoint))
        filler.unlink()
    else:
        out = tmp_path / "store"
        args = _extract_args(questions, out, tiny_llava_checkpoint)
        done = subprocess.run([sys.executable, "-c", NO_SPACE, *args], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert str(out) in errors[0] and "bytes" in errors[0] and "free" in errors[0]
    assert not out.exists() or not any(p.suffix == ".npy" for p in out.iterdir())

    again = superneurons(*_extract_args(questions, out, tiny_llava_checkpoint))
    assert again.returncode == 0, again.stderr
    store = ActivationStore.open(out)
    # The dtype the weights ran in is recorded: a resume in another one is refused.
    assert store.n == N and store.meta["model_dtype"] == "float32"


def test_prefetching_inputs_and_overlapping_the_store_leave_the_same_bytes(
    tmp_path, tiny_llava_checkpoint
):
    """Inputs prepared ahead on a thread and appends overlapping the model: the same store as
    preparing each batch when needed."""
    from superneurons.data.records import Record
    from superneurons.extract import extract
    from superneurons.models.loading import load_model

    questions = _questions(tmp_path)
    lines = [json.loads(line) for line in questions.read_text().splitlines()][:20]
    records = [
        Record(id=str(i), image=tmp_path / line["image"], question=line["question"],
               label=line["label"])
        for i, line in enumerate(lines)
    ]  # fmt: skip
    loaded = load_model(str(tiny_llava_checkpoint), "fp32", "cpu")
    options = {"batch_size": 3, "max_new_tokens": 2, "check_inputs": False}
    extract(loaded, records, tmp_path / "sequential", prefetch=0, **options)
    extract(loaded, records, tmp_path / "prefetched", prefetch=2, **options)
    assert _store_files(tmp_path / "prefetched") == _store_files(tmp_path / "sequential")


def test_batch_composition_changes_no_answer_and_activations_only_by_rounding(
    tmp_path, tiny_llava_checkpoint
):
    """Batches of 1 (no padding) and of 7 (left padding, other neighbours): the same records,
    the same answers, activations equal within float16 rounding. Shards of a launch are
    batched otherwise than one process, so their stores must not depend on it."""
    from superneurons.data.records import Record
    from superneurons.extract import extract
    from superneurons.models.loading import load_model

    lines = [json.loads(line) for line in _questions(tmp_path).read_text().splitlines()][:14]
    # Questions of different lengths, so that a batch of several is padded.
    records = [
        Record(id=str(i), image=tmp_path / line["image"],
               question=line["question"] + " ?" * (i % 5), label=line["label"])
        for i, line in enumerate(lines)
    ]  # fmt: skip
    loaded = load_model(str(tiny_llava_checkpoint), "fp32", "cpu")
    options = {"max_new_tokens": 3, "check_inputs": False}
    one = extract(loaded, records, tmp_path / "one", batch_size=1, **options)
    seven = extract(loaded, records, tmp_path / "seven", batch_size=7, **options)
    assert [r["answer"] for r in one.records] == [r["answer"] for r in seven.records]
    assert [r["id"] for r in one.records] == [r["id"] for r in seven.records]
    for site, (n_layers, _) in one.sites.items():
        for layer in range(n_layers):
            x, y = (s.layer(site, layer).astype(np.float32) for s in (one, seven))
            ulp = np.spacing(np.maximum(np.abs(x), np.abs(y)).astype(np.float16))
            assert np.all(np.abs(x - y) <= 2 * ulp.astype(np.float32) + 1e-4), (site, layer)


def test_complete_shards_merge_into_the_store_and_other_arguments_are_refused_first(
    tmp_path, tiny_llava_checkpoint
):
    """A store's complete shards are merged into it by the unsharded extraction, as one process
    would have written it; shards extracted with other arguments are refused before anything
    is merged (before: merged, then refused)."""
    from superneurons.data.records import Record
    from superneurons.errors import StoreError
    from superneurons.extract import extract
    from superneurons.models.loading import load_model
    from superneurons.store import is_complete, shard_path

    lines = [json.loads(line) for line in _questions(tmp_path).read_text().splitlines()][:9]
    records = [
        Record(id=str(i), image=tmp_path / line["image"], question=line["question"],
               label=line["label"])
        for i, line in enumerate(lines)
    ]  # fmt: skip
    loaded = load_model(str(tiny_llava_checkpoint), "fp32", "cpu")
    options = {"batch_size": 4, "check_inputs": False}
    out = tmp_path / "store"
    for k in range(2):
        extract(loaded, records, shard_path(out, k, 2), shard=(k, 2), max_new_tokens=2, **options)
    with pytest.raises(StoreError) as refused:
        extract(loaded, records, out, max_new_tokens=3, **options)
    assert str(refused.value) == (
        f"{shard_path(out, 0, 2)}: the shards were extracted with a different meta "
        "('max_new_tokens': stored 2, given 3); rerun with their arguments to merge them, or "
        "write to another directory"
    )
    assert not out.exists()
    merged = extract(loaded, records, out, max_new_tokens=2, **options)
    whole = extract(loaded, records, tmp_path / "whole", max_new_tokens=2, **options)
    assert is_complete(out) and merged.records == whole.records and merged.meta == whole.meta
    for site, (n_layers, _) in whole.sites.items():
        for layer in range(n_layers):
            np.testing.assert_allclose(merged.layer(site, layer), whole.layer(site, layer),
                                       atol=2e-3)  # fmt: skip
