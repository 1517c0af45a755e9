"""``superneurons bench baselines``: the baselines' fit time and peak memory on a store of a real
model's shape, against one streaming read of the same store, side by side in one process.

The store is synthetic (a seeded generator; float16 as extraction writes it) with a planted
signal — a few neurons and one attention head per layer band separate yes from no — so that the
fits have something to find. It is built once and cached. Peak memory is what a fit adds
(:func:`measured`), in units of one float32 (N, widest) slab.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from superneurons.store import ActivationStore, ActivationWriter, is_complete

# The language model's shapes from the published config.json files: layers, widths, heads.
STORE_SHAPES = {
    "llava-1.5-7b": (32, {"resid": 4096, "mlp": 11008, "attn": 4096}, 32),
    # Qwen3-VL-32B's text model: hidden 5120, intermediate 25600, 64 heads of 128 (attn: the
    # heads' outputs before o_proj, 8192 wide); 3,000 samples: 14.9 GB.
    "qwen3-vl-32b": (64, {"resid": 5120, "mlp": 25600, "attn": 8192}, 64),
    "tiny": (4, {"resid": 64, "mlp": 160, "attn": 64}, 4),
}
_CHUNK = 100


def synthetic_store(
    path: Path, shape: str, n: int, seed: int = 0, answers: bool = False
) -> ActivationStore:
    """A seeded synthetic store of ``shape`` with ``n`` balanced samples (built once); with
    ``answers``, model answers right three times in four (seeded too), else none."""
    if is_complete(path):
        return ActivationStore.open(path)
    n_layers, widths, n_heads = STORE_SHAPES[shape]
    sites = {site: (n_layers, width) for site, width in widths.items()}
    meta = {"model": f"synthetic {shape}", "seed": seed, "attn_heads": n_heads}
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2 == 0
    right = np.random.default_rng(seed + 1).random(n) < 0.75
    with ActivationWriter(path, sites, n, "float16", meta) as writer:
        for start in range(writer.n_done, n, _CHUNK):
            rows = labels[start : start + _CHUNK]
            sign = np.where(rows, 1.0, -1.0).astype(np.float32)[:, None]
            chunk = {}
            for site, width in widths.items():
                values = rng.standard_normal((len(rows), n_layers, width), dtype=np.float32)
                values[:, :, :4] += 0.6 * sign[:, :, None]  # four neurons, every layer
                if site == "attn":
                    head = width // n_heads
                    values[:, n_layers // 2, head : 2 * head] += 0.3 * sign
                chunk[site] = values
            records = [
                {
                    "id": f"s{start + i}",
                    "label": "yes" if y else "no",
                    "parsed": ("yes" if y == right[start + i] else "no") if answers else None,
                }
                for i, y in enumerate(rows)
            ]
            writer.append(chunk, records)
        return writer.finish()


def streaming_read(store: ActivationStore) -> float:
    """Seconds to read every slab once, widened to float32 as the estimators read it."""
    started = time.perf_counter()
    for site, (n_layers, _) in store.sites.items():
        for layer in range(n_layers):
            store.layer(site, layer).sum()
    return time.perf_counter() - started


def measured(fit: Callable[[], object]) -> tuple[float, int]:
    """(seconds, peak bytes of memory the call added). On Linux the peak is the process's
    anonymous memory (memory-mapped store pages not counted), sampled every 10 ms on a
    thread, so the seconds carry no tracing overhead; elsewhere what numpy allocated, traced."""
    if not _ANON.is_file():
        return _traced(fit)
    baseline = peak = _anon_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, _anon_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        fit()
        seconds = time.perf_counter() - started
    finally:
        done.set()
        sampler.join()
    return seconds, max(peak, _anon_bytes()) - baseline


_ANON = Path("/proc/self/status")


def _anon_bytes() -> int:
    """The process's resident anonymous memory (RssAnon), in bytes."""
    for line in _ANON.read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise OSError("no RssAnon line in /proc/self/status")


def _traced(fit: Callable[[], object]) -> tuple[float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        fit()
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return seconds, peak


def timing(call: Callable[[], object], read: float, slab: int) -> dict:
    """One call's seconds and peak memory, as multiples of one ``read`` and one ``slab``."""
    seconds, peak = measured(call)
    return {
        "seconds": round(seconds, 6),
        "x_read": round(seconds / read, 2),
        "peak_mb": round(peak / 2**20, 1),
        "peak_slabs": round(peak / slab, 2),
    }


@dataclass(frozen=True)
class _ReadStore:
    """A cached synthetic store, its split, one streaming read's seconds and a slab's bytes."""

    store: ActivationStore
    split: object
    read: float
    slab: int

    def header(self, kind: str, shape: str) -> dict:
        """The fields every result of a store bench starts with."""
        files = self.store.path.glob("*.npy")
        return {
            "format": f"superneurons-bench-{kind}/1",
            "shape": shape,
            "n": self.store.n,
            "store_gb": round(sum(p.stat().st_size for p in files) / 1e9, 2),
            "read_s": round(self.read, 6),
            "slab_mb": round(self.slab / 2**20, 1),
        }


def _read_store(cache: Path, shape: str, n: int, log) -> _ReadStore:
    """The synthetic store (built once), read twice: the second read, page cache warm as for
    every fit after it, is the one fits are measured against."""
    from superneurons.classifiers import Split

    store = synthetic_store(cache / f"{shape}-{n}", shape, n)
    slab = n * max(width for _, width in store.sites.values()) * 4
    streaming_read(store)
    read = streaming_read(store)
    log(f"one streaming read of {store.n} samples: {read:.2f} s")
    return _ReadStore(store, Split.from_store(store), read, slab)


def run_baselines_bench(cache: Path, shape: str, n: int, log=print) -> dict:
    """Time and peak memory of each baseline's fit against one streaming read."""
    from superneurons.classifiers.probes import LinearProbeClassifier, SparseProbeClassifier
    from superneurons.classifiers.savs import SAVClassifier

    bench = _read_store(cache, shape, n, log)
    split, n_heads = bench.split, STORE_SHAPES[shape][2]
    fits: dict[str, Callable[[], object]] = {
        "savs": lambda: SAVClassifier(n_heads=n_heads).fit(split, split.labels),
        "sparse_probe": lambda: SparseProbeClassifier().fit(split, split.labels),
    }
    for site in bench.store.sites:
        fits[f"linear_probe[{site}]"] = lambda site=site: LinearProbeClassifier(sites=[site]).fit(
            split, split.labels
        )
    rows = []
    for name, fit in fits.items():
        rows.append({"fit": name, **timing(fit, bench.read, bench.slab)})
        log(rows[-1])
    return {**bench.header("baselines", shape), "rows": rows}


def run_discover_bench(cache: Path, shape: str, n: int, log=print) -> dict:
    """``SuperNeuronClassifier().fit`` (α = 0, held-out selection: discovery as ``run`` does
    it) against one streaming read of the same store, side by side in one process."""
    from superneurons.classifiers import SuperNeuronClassifier

    bench = _read_store(cache, shape, n, log)
    split = bench.split
    fitted: list = []
    row = timing(
        lambda: fitted.append(SuperNeuronClassifier().fit(split, split.labels)),
        bench.read,
        bench.slab,
    )
    log(row)
    return {
        **bench.header("discover", shape),
        "fit": row,
        "n_sn": len(fitted[0].selected_),
        "exit_layer": fitted[0].exit_layer_,
    }
