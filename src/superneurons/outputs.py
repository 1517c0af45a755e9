"""Output directories and files: never touch what superneurons did not write.

Every command writes into outputs it *claims* first:

- An output directory is taken only if it is absent, empty, or already superneurons' own output
  of the same kind (a run, a store, a classifier, …). Anything else is refused before any work
  starts, and so is an output that equals, contains or lies inside one of the command's inputs.
- A claimed directory holds ``.superneurons/``: ``owner.json`` (its kind), and while a process
  works there ``lock`` (held with ``flock``, naming the holder's process id: a second writer is
  refused at once) and ``tmp/``, where every temporary file of the claim lives. A new claim
  empties ``tmp/``: what is there was left by a process that was killed. A claim that wrote
  nothing leaves no trace (no marker, no folder it created).
- A directory holding nothing but superneurons outputs (a store's generated scenes, say) may be
  claimed as another kind; nothing in it is ever deleted.
- An output file (``evaluate --out``, ``bench … --out``) replaces only a JSON file of
  superneurons' own of the same kind, never a directory or another file, and is checked to be
  writable before the work. One inside a claimed directory (a run's, say) may be a new file
  there, never one of that output's files, and is written under that directory's lock: refused
  while another process works there.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from superneurons import atomic
from superneurons.errors import OutputError

STATE = ".superneurons"
# Every JSON document superneurons writes names its "format": "superneurons-…/N".
FORMAT_PREFIX = "superneurons-"


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_json_format(path: Path, prefix: str) -> bool:
    document = _json(path)
    return isinstance(document, dict) and str(document.get("format", "")).startswith(prefix)


def _earlier_store(path: Path) -> bool:
    document = _json(path / "manifest.json") or _json(path / "progress.json")
    return isinstance(document, dict) and str(document.get("layout", "")).startswith("{site}.npy")


def _earlier_run(path: Path) -> bool:
    results = _json(path / "results.json")
    if isinstance(results, dict) and {"sn", "model_answers", "selected"} <= results.keys():
        return True
    return any(_earlier_store(p) for p in (path / "activations").glob("*") if p.is_dir())


def _earlier_scenes(path: Path) -> bool:
    index = _json(path / "scenes.json")
    info = index.get("info") if isinstance(index, dict) else None
    return isinstance(info, dict) and info.get("generator") == "superneurons.data.scenes"


# Outputs written before claims existed carry no owner file: each kind is recognised by what
# only superneurons writes there (the contents, not just a file name), so earlier runs resume.
_EARLIER: dict[str, Callable[[Path], bool]] = {
    "run": _earlier_run,
    "store": _earlier_store,
    "classifier": lambda p: _is_json_format(p / "classifier.json", "superneurons-classifier/"),
    "scenes": _earlier_scenes,
    "train": lambda p: all((p / f).is_file() for f in ("pool_train.pt", "pool_val.pt")),
}
KINDS = tuple(_EARLIER)
_NAMES = {
    "run": "run",
    "store": "activation store",
    "classifier": "classifier",
    "scenes": "scene dataset",
    "train": "training run",
}
# Temporary names that killed processes of earlier versions left beside their files.
_EARLIER_LEFTOVERS = (
    ".classifier-*",
    ".clf-*",
    ".export-*",
    ".*.json.*.tmp",
    ".*.jsonl.*.tmp",
    ".*.pt.*.tmp",
    "images/.*.png.*.tmp",
)


def owner(path: Path) -> str | None:
    """The kind of superneurons output ``path`` is, or None."""
    marker = _json(path / STATE / "owner.json")
    if isinstance(marker, dict):
        return marker.get("kind") if marker.get("kind") in KINDS else None
    return next((kind for kind, test in _EARLIER.items() if test(path)), None)


def _describe(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_disjoint(output: Path, inputs: Sequence[str | os.PathLike], what: str = "--out") -> None:
    """Refuse an output that is an input, contains one, or lies inside one."""
    out = output.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if out == source:
            relation = "is"
        elif source.is_relative_to(out):
            relation = "contains"
        elif out.is_relative_to(source):
            relation = "lies inside"
        else:
            continue
        raise OutputError(
            f"{what} {output} {relation} the input {given}; write the output elsewhere"
        )


def _only_ours(path: Path) -> bool:
    """Whether every entry under ``path`` is a superneurons output (or an empty folder)."""
    for entry in path.iterdir():
        if entry.name == STATE or (entry.is_dir() and owner(entry) is not None):
            continue
        if not entry.is_dir() or not _only_ours(entry):
            return False
    return True


def check_directory(path: Path, kind: str) -> None:
    """Refuse ``path`` unless it is absent, holds nothing but superneurons outputs, or is
    superneurons' own ``kind`` output."""
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError(
            f"{path} exists and is not a directory; give a directory for the {_NAMES[kind]}"
        )
    found = owner(path)
    if found == kind:
        return
    if found is not None:
        raise OutputError(
            f"{path} holds a superneurons {_NAMES[found]}, not a {_NAMES[kind]}; "
            "choose another output directory"
        )
    if not _only_ours(path):
        raise OutputError(
            f"{path} is not empty ({_describe(path)}) and was not written by superneurons; "
            "choose another output directory or empty it"
        )


def _lock(path: Path):
    """An open lock file on which this process holds ``flock``; refused at once if held."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # never through a planted symbolic link
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except FileNotFoundError:
            continue  # its folder was removed by a claim finishing just now
        except OSError as error:
            raise OutputError(f"{path}: cannot open the lock file ({error.strerror})") from None
        file = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = file.read(32).decode(errors="replace").strip() or "unknown"
            file.close()
            raise OutputError(
                f"{path.parent.parent} is in use by process {holder}; wait for it to finish"
            ) from None
        except OSError as error:
            file.close()
            raise OutputError(f"{path}: cannot lock ({error.strerror})") from None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            file.truncate(0)
            file.write(f"{os.getpid()}\n".encode())
            file.flush()
            return file
        file.close()  # its holder removed it between our open and our lock: lock the new one


# Claims this process holds: claiming one of them again shares it.
_HELD: dict[Path, Claim] = {}


class Claim:
    """Own ``path`` as a ``kind`` output until ``release`` (or the end of a ``with`` block):
    checked, locked against other processes, its temporary folder emptied.

    Claiming a directory this process already holds (as the same kind) shares that claim, so a
    command can claim its output up front and the functions it calls claim it again.
    """

    def __init__(
        self, path: str | os.PathLike, kind: str, inputs: Sequence[str | os.PathLike] = ()
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown output kind {kind!r}; known: {KINDS}")
        self.path, self.kind = Path(path), kind
        check_disjoint(self.path, inputs)
        self._key = self.path.resolve()
        self._released = False
        self._first = _HELD.get(self._key)
        if self._first is not None:
            if self._first.kind != kind:
                raise OutputError(f"{path} is already claimed as a {self._first.kind}, not {kind}")
            self._first._users += 1
            return
        check_directory(self.path, kind)
        self._users = 1
        # What this claim creates is removed again if it writes nothing; what was there stays.
        self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self._existing = set(self.path.rglob("*")) if self.path.is_dir() else set()
        (self.path / STATE).mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.path / STATE / "lock")
        try:
            check_directory(self.path, kind)  # again under the lock: another writer was faster?
            marker = self.path / STATE / "owner.json"
            if not marker.is_file():
                atomic.write_json(marker, {"format": "superneurons-output/1", "kind": kind})
            shutil.rmtree(self.tmp, ignore_errors=True)  # left by a killed process
            self.tmp.mkdir()
            for pattern in _EARLIER_LEFTOVERS:
                for leftover in self.path.glob(pattern):
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)
        except BaseException:
            self._finish()
            raise
        _HELD[self._key] = self

    @property
    def tmp(self) -> Path:
        """Where this output's temporary files go (same file system: renames are atomic)."""
        return self.path / STATE / "tmp"

    def release(self) -> None:
        """Give the output up; the last release of a shared claim unlocks it."""
        if self._released:
            return
        self._released = True
        first = self._first or self
        first._users -= 1
        if first._users == 0:
            _HELD.pop(first._key, None)
            first._finish()

    def _finish(self) -> None:
        """Clean up while still holding the lock, then unlock; a claim that wrote nothing
        leaves no trace (no marker, no folder it created)."""
        state = self.path / STATE
        shutil.rmtree(self.tmp, ignore_errors=True)
        new = [
            p
            for p in self.path.rglob("*")
            if STATE not in p.relative_to(self.path).parts and p not in self._existing
        ]
        unused = all(p.is_dir() and not p.is_symlink() for p in new) and not any(
            p.is_file() or p.is_symlink() for p in self._existing
        )
        if unused:
            (state / "owner.json").unlink(missing_ok=True)
            for folder in sorted(new, reverse=True):  # folders it created, deepest first
                _rmdir(folder)
        # Unlinked while still held, so nobody locks a file that is about to disappear.
        (state / "lock").unlink(missing_ok=True)
        self._lock.close()
        if unused:
            _rmdir(state)
            for folder in self._created:
                if not _rmdir(folder):
                    break

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _rmdir(folder: Path) -> bool:
    """Remove an empty folder; False (and nothing removed) when something is in it."""
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def _claimed_folder(path: Path) -> Path | None:
    """The nearest folder above ``path`` that is a claimed output, if any."""
    return next((f for f in path.resolve().parents if (f / STATE / "owner.json").is_file()), None)


@contextmanager
def _folder_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the lock of the claimed output ``path`` lies in while writing it (shared when this
    process holds it already); refused at once while another process holds it."""
    folder = _claimed_folder(path)
    if folder is None or folder in _HELD:
        yield
        return
    lock_path = folder / STATE / "lock"
    try:
        lock = _lock(lock_path)
    except OutputError as error:
        raise OutputError(f"{what} {path}: {error}") from None
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while held, as a claim's is: it leaves no trace
        lock.close()


def _family(document_format: str) -> str:
    """A format's name without its version: "superneurons-results/2" -> "superneurons-results"."""
    return document_format.split("/", 1)[0]


def _check_writable(path: Path, what: str) -> None:
    """Refuse now an output file that could not be written after the work: a temporary file is
    made (and removed) in the nearest folder that exists on its way."""
    folder = next(p for p in path.absolute().parents if p.exists())
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".superneurons-probe-")
    except OSError as error:
        raise OutputError(f"{what} {path}: cannot write in {folder} ({error.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_folder(path: Path) -> None:
    """Refuse a folder an output writes into that exists as something else."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, where superneurons writes a folder; move it away")


def check_output_file(
    path: Path,
    inputs: Sequence[str | os.PathLike] = (),
    what: str = "--out",
    document_format: str | None = None,
) -> None:
    """Refuse an output file that is a directory or an input; one that exists and is not a JSON
    document superneurons wrote (of ``document_format``'s kind, when given); a file of a claimed
    output (a run's results, a classifier); one inside an output another process is working
    in; or one that cannot be written."""
    check_disjoint(path, inputs, what)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name such as {path}/x.json")
    folder = _claimed_folder(path)
    if path.exists():
        if not _is_json_format(path, FORMAT_PREFIX):
            raise OutputError(
                f"{what} {path} exists and is not a JSON file written by superneurons; "
                "choose another name or remove it"
            )
        if folder is not None:
            raise OutputError(
                f"{what} {path} is part of the superneurons {_NAMES.get(owner(folder), 'output')} "
                f"{folder} and is not replaced; choose a new file name"
            )
        found = str(_json(path).get("format"))
        if document_format is not None and _family(found) != _family(document_format):
            raise OutputError(
                f"{what} {path} holds a {found} document, not a {_family(document_format)} one; "
                "choose another name"
            )
    _check_writable(path, what)
    with _folder_lock(path, what):
        pass


def write_output_json(path: str | os.PathLike, document: dict, inputs=(), what="--out") -> None:
    """Write ``document`` (which names its ``format``) to an output file, atomically, under the
    lock of the claimed output it lies in, if any."""
    path = Path(path)
    check_output_file(path, inputs, what, document.get("format"))
    with _folder_lock(path, what):
        atomic.write_json(path, document)
