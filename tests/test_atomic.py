"""Atomic writes: the old or the new, never a torn file or a missing directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from superneurons import atomic


def test_a_directory_is_swapped_in_whole_and_kept_on_error(tmp_path):
    out = tmp_path / "model"
    with atomic.directory(out) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic.directory(out) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed while writing")
    assert (out / "weights").read_text() == "v1"
    with atomic.directory(out) as tmp:
        (tmp / "weights").write_text("v2")
    assert (out / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporaries left


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_json_has_no_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "a.json", {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_for_space_names_the_file_and_leaves_no_temporary(tmp_path):
    # A real failing write: past the process's file-size limit, write() fails (EFBIG) with no
    # file name, as on a full disk (ENOSPC).
    script = f"""
import resource, signal
from pathlib import Path
from superneurons import atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    atomic.write_bytes(Path({str(tmp_path)!r}) / "out.json", b"x" * 5000)
except OSError as error:
    print(error.filename)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == str(tmp_path / "out.json"), done.stderr
    assert list(tmp_path.iterdir()) == []
