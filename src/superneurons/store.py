"""On-disk activation store: streamed in chunks, resumable, read back memory-mapped.

Layout of a store directory ``DIR``:

- ``DIR/{site}.npy``: one ``.npy`` per site, shape ``(n_layers, n_samples, width)``. Layer-major,
  so one layer for all samples (what a classifier scores) is one contiguous read. Values are
  float16, or for a model run in bfloat16 the raw bf16 bits as uint16 (lossless; widened to
  float32 on read).
- ``DIR/progress.json``: only while writing: the arguments, ``n_done`` and the committed records.
- ``DIR/manifest.json``: only once complete: meta, sites, dtype and the per-sample records.

Commit protocol: a chunk's rows are written and flushed, then ``progress.json`` is replaced
atomically. Rows at or past ``n_done`` are never trusted: a resumed run writes them again, and as
every row ends up written with the same values, the finished files are byte-identical to those of
an uninterrupted run. A store is complete only once ``manifest.json`` exists, and it is written
last, atomically. Memory is bounded by one chunk: rows go straight to the memory-mapped files.
"""

from __future__ import annotations

import errno
import json
import operator
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from superneurons import atomic
from superneurons.errors import OutputError, StoreError
from superneurons.outputs import Claim

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
LAYOUT = "{site}.npy: (n_layers, n_samples, width), layer-major"
# Storage dtype per declared dtype: numpy has no bfloat16, so its bits are kept as uint16.
STORAGE = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}
_SITE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a site name becomes a file name
_RESUME_FIELDS = ("format_version", "meta", "sites", "dtype", "n_samples")


class IncompleteStoreError(StoreError, RuntimeError):
    """The store exists but its extraction did not finish."""


def is_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a finished store (its manifest is written last)."""
    return (Path(path) / MANIFEST).is_file()


class ActivationWriter:
    """Writes a store chunk by chunk; continues a partial store written with the same arguments.

    ``n_done`` is the resume point: the caller skips that many samples and appends the rest.
    On a store that is already complete ``n_done == n_samples`` and ``finish`` just reopens it.
    As a context manager, exit closes the files but does not finish the store.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sites: dict[str, tuple[int, int]],
        n_samples: int,
        dtype: str = "float16",
        meta: dict | None = None,
    ) -> None:
        if dtype not in STORAGE:
            raise ValueError(f"dtype must be one of {sorted(STORAGE)}, got {dtype!r}")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        self.path = Path(path)
        self.sites = _check_sites(sites)
        self.n_samples = int(n_samples)
        self.dtype = dtype
        self.meta: dict = _jsonable(meta or {}, "meta")
        self.records: list[dict] = []
        self._arrays: dict[str, np.memmap] = {}
        self._closed = False

        self._claim = Claim(self.path, "store")
        try:
            self._open()
        except BaseException:
            self._claim.release()
            raise

    def _open(self) -> None:
        for name in (MANIFEST, PROGRESS):  # what earlier versions left when killed mid-write
            (self.path / f".{name}.tmp").unlink(missing_ok=True)
        if is_complete(self.path):
            state = _read_json(self.path / MANIFEST)
            self._check_resumable(state)
            self.records = state["records"]
        elif (self.path / PROGRESS).is_file():
            state = _read_json(self.path / PROGRESS)
            self._check_resumable(state)
            self.records = state["records"]
            self._arrays = {site: self._open_existing(site) for site in self.sites}
            _reserve(self.path, [self._file(site) for site in self.sites])
        else:
            needed = sum(
                int(np.prod(self._shape(site))) * STORAGE[self.dtype].itemsize
                for site in self.sites
            )
            _check_space(self.path, needed)
            # Files first, progress second: files without progress are simply created again.
            try:
                self._arrays = {
                    site: np.lib.format.open_memmap(
                        self._file(site),
                        mode="w+",
                        dtype=STORAGE[self.dtype],
                        shape=self._shape(site),
                    )
                    for site in self.sites
                }
                _reserve(self.path, [self._file(site) for site in self.sites])
            except BaseException:
                self._arrays = {}
                for site in self.sites:  # created just now, nothing committed: not left behind
                    self._file(site).unlink(missing_ok=True)
                raise
            self._commit(self.records)

    @property
    def n_done(self) -> int:
        """Samples already committed: where a resumed run continues."""
        return len(self.records)

    def append(self, activations: dict[str, Any], records: list[dict]) -> None:
        """Write one chunk: ``activations[site]`` is ``(B, n_layers, width)``, B = len(records).

        Everything is validated and converted before any byte is written; the chunk counts as
        done only once its rows are flushed and the progress file is replaced.
        """
        if self._closed:
            raise RuntimeError("the writer is closed")
        records = _jsonable(list(records), "records")
        if not all(isinstance(r, dict) for r in records):
            raise TypeError("records must be dicts")
        b = len(records)
        if b == 0:
            raise ValueError("append needs at least one sample")
        if self.n_done + b > self.n_samples:
            raise ValueError(
                f"{b} more samples exceed n_samples={self.n_samples} "
                f"({self.n_done} already written)"
            )
        missing, extra = self.sites.keys() - activations.keys(), activations.keys() - self.sites
        if missing or extra:
            raise ValueError(
                f"activations must have exactly the sites {sorted(self.sites)}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        chunk = {site: self._convert(site, activations[site], b) for site in self.sites}

        start = self.n_done
        for site, rows in chunk.items():
            array = self._arrays[site]
            array[:, start : start + b] = rows.transpose(1, 0, 2)
            array.flush()
        self._commit(self.records + records)
        self.records = self.records + records

    def finish(self) -> ActivationStore:
        """Mark the store complete (manifest written atomically) and open it for reading."""
        if self.n_done != self.n_samples:
            raise RuntimeError(
                f"cannot finish: {self.n_done}/{self.n_samples} samples written to {self.path}"
            )
        for array in self._arrays.values():
            array.flush()
        document = {**self._header(), "records": self.records}
        atomic.write_json(self.path / MANIFEST, document, self._claim.tmp, ensure_ascii=False)
        (self.path / PROGRESS).unlink(missing_ok=True)
        self.close()
        return ActivationStore.open(self.path)

    def close(self) -> None:
        """Flush and release the files; committed samples stay resumable."""
        for array in self._arrays.values():
            array.flush()
        self._arrays = {}
        if not self._closed:
            self._claim.release()
        self._closed = True

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _file(self, site: str) -> Path:
        return self.path / f"{site}.npy"

    def _shape(self, site: str) -> tuple[int, int, int]:
        n_layers, width = self.sites[site]
        return (n_layers, self.n_samples, width)

    def _header(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "layout": LAYOUT,
            "meta": self.meta,
            "sites": {site: list(shape) for site, shape in self.sites.items()},
            "dtype": self.dtype,
            "storage_dtype": STORAGE[self.dtype].name,
            "n_samples": self.n_samples,
        }

    def _commit(self, records: list[dict]) -> None:
        document = {**self._header(), "n_done": len(records), "records": records}
        # Rewritten whole at every commit, so unindented (the C encoder: a quarter of the cost).
        atomic.write_json(
            self.path / PROGRESS, document, self._claim.tmp, ensure_ascii=False, indent=None
        )

    def _check_resumable(self, stored: dict) -> None:
        given = self._header()
        for key in _RESUME_FIELDS:
            if stored.get(key) != given[key]:
                raise StoreError(
                    f"{self.path} holds a store written with a different {key} "
                    f"({_difference(stored.get(key), given[key])}); "
                    "rerun with the original arguments to resume, or write to another directory"
                )

    def _open_existing(self, site: str) -> np.memmap:
        file = self._file(site)
        if not file.is_file():
            raise StoreError(
                f"partial store {self.path} lacks {file.name}; delete the directory and start again"
            )
        array = _load_npy(file, "r+")
        if array.shape != self._shape(site) or array.dtype != STORAGE[self.dtype]:
            raise StoreError(
                f"{file} holds {array.dtype} {array.shape}, "
                f"expected {STORAGE[self.dtype]} {self._shape(site)}"
            )
        return array

    def _convert(self, site: str, x: Any, batch: int) -> np.ndarray:
        rows = _to_storage(x, self.dtype, site)
        expected = (batch, *self.sites[site])
        if rows.shape != expected:
            raise ValueError(
                f"site {site!r}: expected shape {expected} (batch, n_layers, width), "
                f"got {tuple(rows.shape)}"
            )
        return rows


@dataclass
class ActivationStore:
    """A finished store, read through read-only memory maps; ``open`` it, don't construct it."""

    path: Path
    manifest: dict
    _arrays: dict[str, np.memmap] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> ActivationStore:
        """Open a complete store; refuse a missing or unfinished one with a clear error."""
        path = Path(path)
        if not is_complete(path):
            if (path / PROGRESS).is_file():
                progress = _read_json(path / PROGRESS)
                done = f"{progress.get('n_done', '?')}/{progress.get('n_samples', '?')} samples"
                raise IncompleteStoreError(
                    f"{path}: extraction did not finish: {done}; rerun the same command to resume"
                )
            raise StoreError(f"no activation store at {path} (no {MANIFEST})")
        manifest = _read_json(path / MANIFEST)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format {manifest.get('format_version')!r} is not supported "
                f"(expected {FORMAT_VERSION})"
            )
        missing = [key for key in ("meta", "sites", "dtype", "records") if key not in manifest]
        if missing:
            raise StoreError(f"{path / MANIFEST}: not a valid manifest (no {', '.join(missing)})")
        if manifest["dtype"] not in STORAGE:
            raise StoreError(f"{path / MANIFEST}: unknown dtype {manifest['dtype']!r}")
        store = cls(path, manifest)
        for site in store.sites:  # fail now, not halfway through an analysis
            store.array(site)
        return store

    @property
    def meta(self) -> dict:
        return self.manifest["meta"]

    @property
    def records(self) -> list[dict]:
        return self.manifest["records"]

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def dtype(self) -> str:
        """The model's dtype as declared: "float16" or "bfloat16"."""
        return self.manifest["dtype"]

    @property
    def sites(self) -> dict[str, tuple[int, int]]:
        """site -> (n_layers, width)."""
        return {site: (shape[0], shape[1]) for site, shape in self.manifest["sites"].items()}

    @property
    def labels(self) -> list:
        return self.field("label")

    @property
    def ids(self) -> list:
        return self.field("id")

    def field(self, name: str) -> list:
        """One record field for every sample, in store order."""
        missing = [i for i, record in enumerate(self.records) if name not in record]
        if missing:
            raise KeyError(
                f"record field {name!r} is missing in {len(missing)} of {self.n} samples "
                f"(first: sample {missing[0]})"
            )
        return [record[name] for record in self.records]

    def array(self, site: str) -> np.memmap:
        """The raw read-only memory map ``(n_layers, n, width)`` in its storage dtype."""
        if site not in self._arrays:
            shape = self._site_shape(site)
            array = _load_npy(self.path / f"{site}.npy", "r")
            expected = (shape[0], self.n, shape[1])
            storage = STORAGE[self.dtype]
            if array.shape != expected or array.dtype != storage:
                raise StoreError(
                    f"{self.path / f'{site}.npy'} holds {array.dtype} {array.shape}, "
                    f"expected {storage} {expected}"
                )
            self._arrays[site] = array
        return self._arrays[site]

    def layer(self, site: str, layer: int, rows: Any = None) -> np.ndarray:
        """float32 ``(n, width)``, or ``(len(rows), width)``: one layer of a site.

        ``rows`` is anything numpy indexes a first axis with (slice, indices, boolean mask).
        """
        raw = self.array(site)[self._layer_index(site, layer)]
        return self._float32(raw if rows is None else raw[rows])

    def bits(self, site: str, layer: int, rows: Any = None) -> tuple[np.ndarray, str]:
        """(int16 ``(n, width)``, the store's dtype): one layer's 16-bit floats as their raw
        bits, not widened (a view of the file when ``rows`` is None), for comparisons made on
        the bits (:class:`~superneurons.classifiers.counting.Slab`)."""
        raw = self.array(site)[self._layer_index(site, layer)]
        if rows is not None:
            rows = np.asarray(rows)
            raw = np.take(raw, np.flatnonzero(rows) if rows.dtype == bool else rows, axis=0)
        return raw.view(np.int16), self.dtype

    def column(self, site: str, layer: int, index: int, rows: Any = None) -> np.ndarray:
        """float32 ``(n,)`` (or ``(len(rows),)``): one scalar of one layer for every sample."""
        width = self._site_shape(site)[1]
        index = operator.index(index)
        if not 0 <= index < width:
            raise IndexError(f"site {site!r} has width {width}; index {index} is out of range")
        raw = self.array(site)[self._layer_index(site, layer), :, index]
        return self._float32(raw if rows is None else raw[rows])

    def columns(self, site: str, layer: int, indices: Any, rows: Any = None) -> np.ndarray:
        """float32 ``(n, len(indices))`` (or ``(len(rows), …)``): some scalars of one layer,
        read without widening the rest of the slab."""
        raw = self.array(site)[self._layer_index(site, layer)]
        indices = np.asarray(indices, dtype=np.intp)
        if rows is None:
            return self._float32(raw[:, indices])
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.intp)
        if indices.size * 8 > raw.shape[1]:  # many columns: whole rows, then the columns
            return self._float32(raw[rows][:, indices])
        return self._float32(raw[np.ix_(rows, indices)])

    def _site_shape(self, site: str) -> tuple[int, int]:
        if site not in self.manifest["sites"]:
            known = sorted(self.manifest["sites"])
            raise KeyError(f"unknown site {site!r}; this store has {known}")
        return self.sites[site]

    def _layer_index(self, site: str, layer: int) -> int:
        n_layers = self._site_shape(site)[0]
        layer = operator.index(layer)
        if not 0 <= layer < n_layers:
            raise IndexError(f"site {site!r} has layers 0..{n_layers - 1}; got {layer}")
        return layer

    def _float32(self, raw: np.ndarray) -> np.ndarray:
        return widen(raw, self.dtype)


def widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values of 16-bit floats held as a ``dtype`` ("float16" or "bfloat16") store holds
    them, or as their int16 bits: a plain in-memory array (np.array, not astype: never a memmap
    subclass)."""
    raw = raw.view(STORAGE[dtype])
    if dtype == "bfloat16":
        bits = np.array(raw, dtype=np.uint32)
        bits <<= 16  # bf16 is the upper half of a float32
        return bits.view(np.float32)
    return np.array(raw, dtype=np.float32)


# -- conversion -----------------------------------------------------------------------------------


def _to_storage(x: Any, dtype: str, site: str) -> np.ndarray:
    """Activations (numpy or torch) in the storage dtype of a ``dtype`` store."""
    if _is_tensor(x):
        import torch  # already imported by the caller, see _is_tensor

        t = x.detach().cpu()
        if not t.is_floating_point():
            raise TypeError(f"site {site!r}: expected floating-point activations, got {t.dtype}")
        if dtype == "bfloat16":
            if t.dtype != torch.bfloat16:
                raise TypeError(
                    f"site {site!r}: a bfloat16 store takes bfloat16 tensors, got {t.dtype}; "
                    "declare the store's dtype as the model's"
                )
            return t.contiguous().view(torch.int16).numpy().view(np.uint16)
        x = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()  # numpy lacks bf16
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"site {site!r}: expected floating-point activations, got {x.dtype}")
    if dtype == "bfloat16":
        return _round_to_bfloat16(x)
    return _to_float16(x, site)


def _is_tensor(x: Any) -> bool:
    # A tensor can only exist if its caller imported torch: readers never pay for importing it.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_float16(x: np.ndarray, site: str) -> np.ndarray:
    """Cast to float16, refusing values it cannot hold: overflow to inf would corrupt silently."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = x.astype(np.float16)
    if not np.isfinite(out).all():
        if np.isnan(x).any():
            raise StoreError(f"site {site!r}: activations contain NaN")
        peak = float(np.abs(x.astype(np.float64)).max())
        raise StoreError(
            f"site {site!r}: values outside the float16 range (max |value| = {peak:.6g}, "
            f"float16 max = {float(np.finfo(np.float16).max):g}); store as dtype='bfloat16'"
        )
    return out


def _round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """bf16 bits (uint16) of float values, rounded to nearest-even like ``tensor.to(bfloat16)``."""
    with np.errstate(over="ignore"):
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit, then truncating, rounds half to even.
    out = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    out[nan] = 0x7FC0  # rounding could carry a NaN's payload into inf
    return out


# -- files ----------------------------------------------------------------------------------------


def _check_sites(sites: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    if not sites:
        raise ValueError("a store needs at least one site")
    checked = {}
    for site, shape in sites.items():
        if not isinstance(site, str) or not _SITE_NAME.fullmatch(site):
            raise ValueError(f"site names must match {_SITE_NAME.pattern}, got {site!r}")
        dims = tuple(int(d) for d in shape)
        if len(dims) != 2 or min(dims) < 1:
            raise ValueError(f"site {site!r}: shape must be (n_layers, width) >= 1, got {shape}")
        checked[site] = dims
    return checked


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays are common in records (labels, parsed answers); store them plainly.
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _difference(old: Any, new: Any) -> str:
    """What differs between a stored header field and the one given, in words."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in old | new if old.get(k, ...) != new.get(k, ...))
        return "; ".join(
            f"{k!r}: stored {old.get(k, '<absent>')!r}, given {new.get(k, '<absent>')!r}"
            for k in keys
        )
    return f"stored {old!r}, given {new!r}"


def _jsonable(obj: Any, what: str) -> Any:
    """``obj`` as it will read back from JSON, so memory and disk agree byte for byte."""
    try:
        return json.loads(json.dumps(obj, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON-serialisable: {err}") from err


def _check_space(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path).free
    if needed > free:
        raise OutputError(
            f"{path}: the store needs {needed:,} bytes and the disk has {free:,} free; "
            "free some space or write the store elsewhere"
        )


def _reserve(path: Path, files: list[Path]) -> None:
    """Allocate every block of ``files`` now: a memory-mapped write to a full disk is a SIGBUS,
    not an error, so the space is claimed before any sample is written."""
    for file in files:
        with open(file, "r+b") as f:
            info = os.fstat(f.fileno())
            try:
                os.posix_fallocate(f.fileno(), 0, info.st_size)
            except OSError as error:
                if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    return  # no reservation on this file system: the store stays sparse
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                missing = max(0, info.st_size - info.st_blocks * 512)
                free = shutil.disk_usage(path).free
                raise OutputError(
                    f"{path}: the store needs {missing:,} more bytes for {file.name} and the disk "
                    f"has {free:,} free; free some space and rerun (the store resumes)"
                ) from None


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise StoreError(f"{path}: not a valid store file ({error})") from None
    if not isinstance(document, dict):
        raise StoreError(f"{path}: not a valid store file (a JSON object was expected)")
    return document


def _load_npy(file: Path, mode: str) -> np.memmap:
    try:
        return np.load(file, mmap_mode=mode)
    except FileNotFoundError:
        raise StoreError(f"{file}: missing from the store") from None
    except (ValueError, OSError) as error:
        raise StoreError(f"{file}: not a readable array ({error})") from None


# -- shards: one extraction split over processes or machines -------------------------------------


def shard_records(records: list, index: int, count: int) -> list:
    """Shard ``index`` of ``count``: samples ``index, index + count, …`` (``merge_shards``
    interleaves them back)."""
    return records[index::count]


def shard_path(path: str | os.PathLike, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` of the store ``path`` is written."""
    path = Path(path)
    return path.with_name(f"{path.name}.shard-{index}-of-{count}")


def complete_shards(path: str | os.PathLike) -> list[Path]:
    """The shard stores of ``path`` when all n of them are complete, else []."""
    path = Path(path)
    shards = sorted(path.parent.glob(f"{path.name}.shard-*-of-*"))
    counts = {p.name.rsplit("-of-", 1)[1] for p in shards}
    if len(counts) != 1 or len(shards) != int(counts.pop()):
        return []
    return shards if all(is_complete(p) for p in shards) else []


def merge_shards(
    shards: list[str | os.PathLike],
    out: str | os.PathLike,
    chunk: int = 256,
    expect: tuple[dict[str, tuple[int, int]], str, dict] | None = None,
):
    """Interleave complete shard stores back into one store in the original sample order.

    Shard ``k`` of ``n`` holds samples ``k, k + n, k + 2n, …`` (see ``extract(shard=...)``); every
    shard must have the same sites, dtype and meta apart from ``meta["shard"]``, and with
    ``expect=(sites, dtype, meta)`` those of the store to be made: refused before anything is
    written otherwise. Memory stays bounded by ``chunk`` samples. Returns the merged
    :class:`ActivationStore`.
    """
    stores = [ActivationStore.open(path) for path in shards]
    n_shards = len(stores)
    metas = [{k: v for k, v in s.meta.items() if k != "shard"} for s in stores]
    for path, store, meta in zip(shards, stores, metas, strict=True):
        if meta != metas[0] or store.sites != stores[0].sites or store.dtype != stores[0].dtype:
            raise StoreError(f"{path}: not a shard of the same extraction as {shards[0]}")
        if store.meta.get("shard", [None, n_shards])[1] != n_shards:
            raise StoreError(f"{path}: shard {store.meta.get('shard')} is not one of {n_shards}")
    if expect is not None:
        sites, dtype, meta = expect
        stored = {"sites": stores[0].sites, "dtype": stores[0].dtype, "meta": metas[0]}
        given = {"sites": _check_sites(sites), "dtype": dtype, "meta": _jsonable(meta, "meta")}
        for key, value in given.items():
            if stored[key] != value:
                raise StoreError(
                    f"{shards[0]}: the shards were extracted with a different {key} "
                    f"({_difference(stored[key], value)}); rerun with their arguments to merge "
                    "them, or write to another directory"
                )
    order = sorted(range(n_shards), key=lambda i: stores[i].meta.get("shard", [i])[0])
    stores = [stores[i] for i in order]
    total = sum(s.n for s in stores)
    writer = ActivationWriter(out, stores[0].sites, total, stores[0].dtype, metas[0])
    with writer:
        for start in range(writer.n_done, total, chunk):
            # Original sample j lives in shard j % n at row j // n.
            index = np.arange(start, min(total, start + chunk))
            shard_of, row_of = index % n_shards, index // n_shards
            activations = {}
            for site, (n_layers, width) in stores[0].sites.items():
                values = np.empty((len(index), n_layers, width), dtype=np.float32)
                for k, store in enumerate(stores):
                    mine = shard_of == k
                    if mine.any():
                        rows = slice(int(row_of[mine][0]), int(row_of[mine][-1]) + 1)
                        for layer in range(n_layers):
                            values[mine, layer] = store.layer(site, layer, rows)
                activations[site] = values
            writer.append(
                activations, [stores[k].records[r] for k, r in zip(shard_of, row_of, strict=True)]
            )
        return writer.finish()
