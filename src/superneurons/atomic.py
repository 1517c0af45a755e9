"""Atomic writes: readers see the old file (or directory) or the new one, never a torn one.

Temporary files are created with the umask applied (as ``open`` would), in ``tmp_dir`` when
given — a claimed output's own temporary folder (:mod:`superneurons.outputs`), cleaned by the next
run — or else beside the target.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_path(directory: Path, name: str, suffix: str = ".tmp") -> Path:
    """A fresh, unused name in ``directory`` for a temporary copy of ``name``."""
    return directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"


def write_bytes(
    path: str | os.PathLike, data: bytes, tmp_dir: str | os.PathLike | None = None
) -> None:
    """Write ``data`` to ``path`` through a temporary file (fsynced), then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(Path(tmp_dir) if tmp_dir is not None else path.parent, path.name)
    # O_EXCL with mode 0o666: the kernel applies the umask, unlike mkstemp's fixed 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.filename is not None:
            raise
        # A full disk's write error names no file: name the one being written.
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_bytes(obj: Any, ensure_ascii: bool = True, indent: int | None = 1) -> bytes:
    """``obj`` as JSON, indented unless ``indent`` is None (no NaN: an undefined number must be
    null). Unindented JSON is encoded by the json module's C encoder, ≈ 10× faster."""
    text = json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)
    return (text + "\n").encode()


def write_json(
    path: str | os.PathLike,
    obj: Any,
    tmp_dir: str | os.PathLike | None = None,
    ensure_ascii: bool = True,
    indent: int | None = 1,
) -> None:
    """``obj`` as JSON (see :func:`json_bytes`), written atomically."""
    write_bytes(path, json_bytes(obj, ensure_ascii, indent), tmp_dir)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where it is unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextmanager
def directory(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``out_dir`` that replaces it on success.

    The swap is one atomic exchange where the file system supports it, so a kill at any instant
    leaves the old directory or the new one. On error ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(out_dir.parent, out_dir.name, suffix=".dir")
    tmp.mkdir()
    try:
        yield tmp
        if not out_dir.exists():
            os.rename(tmp, out_dir)
        elif exchange(tmp, out_dir):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
        else:  # two renames: a kill between them leaves the old one as .NAME.*.old
            old = temporary_path(out_dir.parent, out_dir.name, suffix=".old")
            os.rename(out_dir, old)
            try:
                os.rename(tmp, out_dir)
            except BaseException:
                os.rename(old, out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
