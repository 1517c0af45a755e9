"""`run` under torchrun: two ranks (gloo, CPU) give a single process's results; a killed rank
resumes when the launch is rerun; bad options are reported once."""

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

from command import superneurons
from superneurons.store import PROGRESS, ActivationStore, shard_path

# A small run of the embedded default: 6 batches of 4 per rank and set.
RUN = [
    "run", "--n-probe", "48", "--n-val", "48", "--baselines", "none", "--exit-layers", "none",
    "--batch-size", "4", "--max-new-tokens", "4", "--device", "cpu",
]  # fmt: skip
PARTS = ("probe", "val")


def _launch(out: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "superneurons", *RUN, "--out", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The same run in one process, without a launcher."""
    out = tmp_path_factory.mktemp("single") / "run"
    done = superneurons(*RUN, "--out", out)
    assert done.returncode == 0, done.stderr
    return out


def _assert_same_run(launched: Path, single: Path) -> None:
    """The same records in the same order, labels and answers; activations equal within float16
    rounding (batches are made of other samples: other padding, other summation order); the same
    super neurons and scores."""
    for part in PARTS:
        a, b = (
            ActivationStore.open(launched / "activations" / part),
            ActivationStore.open(single / "activations" / part),
        )
        assert a.records == b.records and a.meta == b.meta and a.sites == b.sites
        for site, (n_layers, _) in a.sites.items():
            for layer in range(n_layers):
                x = a.layer(site, layer).astype(np.float32)
                y = b.layer(site, layer).astype(np.float32)
                ulp = np.spacing(np.maximum(np.abs(x), np.abs(y)).astype(np.float16))
                assert np.all(np.abs(x - y) <= 2 * ulp.astype(np.float32) + 1e-4), (site, layer)
    ours = json.loads((launched / "results.json").read_text())
    theirs = json.loads((single / "results.json").read_text())
    for key in ("selected", "estimators", "per_family", "agreement_rate", "sn_layers"):
        assert ours[key] == theirs[key], key


def test_two_ranks_under_torchrun_give_the_single_process_results(tmp_path, single):
    out = tmp_path / "launched"
    code, stdout, stderr = _finish(_launch(out))
    assert code == 0, stderr
    for part in PARTS:
        for rank in range(2):  # each rank extracted its own shard
            shard = ActivationStore.open(shard_path(out / "activations" / part, rank, 2))
            assert shard.meta["shard"] == [rank, 2] and shard.n == 24
    _assert_same_run(out, single)
    assert stdout.count("super neurons (t =") == 1  # rank 0 reports, rank 1 says nothing
    assert "Traceback" not in stderr


def test_accelerate_launch_gives_the_single_process_results_too(tmp_path, single):
    out = tmp_path / "accelerate"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
        "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "superneurons", *RUN, "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert shard_path(out / "activations" / "probe", 1, 2).is_dir()  # two ranks ran
    _assert_same_run(out, single)


def _pid_of_rank_one(out: Path, deadline: float) -> int:
    """Rank 1's process id, from its probing shard's lock, once it has committed a batch."""
    shard = shard_path(out / "activations" / "probe", 1, 2)
    while True:
        assert time.time() < deadline, "rank 1 never committed a batch"
        try:
            committed = json.loads((shard / PROGRESS).read_text())["n_done"]
            pid = int((shard / ".superneurons" / "lock").read_text().split()[0])
        except (OSError, ValueError, KeyError, IndexError):
            committed = 0
        if committed > 0:
            return pid
        time.sleep(0.005)


def test_a_killed_rank_leaves_its_shard_resumable_and_the_rerun_completes_it(tmp_path, single):
    out = tmp_path / "launched"
    process = _launch(out)
    os.kill(_pid_of_rank_one(out, time.time() + 120), signal.SIGKILL)
    code, _, _ = _finish(process)
    assert code != 0  # torchrun reports the dead rank and stops the other
    shard = shard_path(out / "activations" / "probe", 1, 2)
    done = json.loads((shard / PROGRESS).read_text())["n_done"]
    assert 0 < done < 24 and not (out / "results.json").exists()

    code, _, stderr = _finish(_launch(out))
    assert code == 0, stderr
    _assert_same_run(out, single)


def test_a_bad_option_under_torchrun_is_one_error_line_from_rank_0(tmp_path):
    out = tmp_path / "launched"
    code, _, stderr = _finish(_launch(out, "--shard", "0/2"))
    assert code != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--shard" in errors[0] and "launcher" in errors[0], stderr
    # torchrun prints a traceback of its own agent when a rank fails; none comes from ours.
    assert "/superneurons/" not in stderr and not out.exists()


def test_an_output_rank_0_refuses_stops_every_rank_with_its_one_error(tmp_path):
    out = tmp_path / "launched"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, stderr = _finish(_launch(out))
    assert code != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not written by superneurons" in errors[0], stderr
    assert "/superneurons/" not in stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
