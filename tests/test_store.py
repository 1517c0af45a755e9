import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from superneurons.errors import StoreError
from superneurons.store import (
    ActivationStore,
    ActivationWriter,
    IncompleteStoreError,
    is_complete,
)

SITES = {"resid": (3, 8), "mlp": (3, 16), "attn": (3, 8)}
N = 10
CHUNK = 3
META = {
    "model_id": "tiny/llava",
    "revision": "abc123",
    "architecture": "llava",
    "template": "plain",
}


def _data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: rng.normal(size=(N, *shape)).astype(np.float32) for s, shape in SITES.items()}


def _records() -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "label": "yes" if i % 2 else "no",
            "answer": "Yes." if i % 3 else "No, there is none. – ü",
            "parsed": "yes" if i % 3 else "no",
            "family": "exists",
            "extra": {"scene": np.int64(i)},  # numpy scalars are stored as plain numbers
        }
        for i in range(N)
    ]


def _write(path, data, start=0, stop=N, dtype="float16", meta=META, finish=True):
    records = _records()
    writer = ActivationWriter(path, SITES, N, dtype=dtype, meta=meta)
    for i in range(start, stop, CHUNK):
        j = min(i + CHUNK, stop)
        writer.append({s: a[i:j] for s, a in data.items()}, records[i:j])
    return writer.finish() if finish else writer


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def test_round_trip_float16(tmp_path):
    data = _data()
    store = _write(tmp_path / "s", data)
    assert is_complete(tmp_path / "s")
    assert sorted(_files(tmp_path / "s")) == ["attn.npy", "manifest.json", "mlp.npy", "resid.npy"]

    store = ActivationStore.open(tmp_path / "s")
    assert store.n == N and store.sites == SITES and store.dtype == "float16"
    assert store.meta == META
    assert store.ids == [f"q{i}" for i in range(N)]
    assert store.labels == [r["label"] for r in _records()]
    assert store.field("answer")[0] == "No, there is none. – ü"
    assert store.records[4]["extra"] == {"scene": 4}
    with pytest.raises(KeyError, match="'nope'"):
        store.field("nope")

    expected = data["mlp"].astype(np.float16).astype(np.float32)
    raw = store.array("mlp")
    assert raw.shape == (3, N, 16) and raw.dtype == np.float16 and not raw.flags.writeable
    for layer in range(3):
        out = store.layer("mlp", layer)
        assert out.dtype == np.float32 and type(out) is np.ndarray
        np.testing.assert_array_equal(out, expected[:, layer])
    np.testing.assert_array_equal(store.layer("mlp", 1, rows=[7, 2]), expected[[7, 2], 1])
    np.testing.assert_array_equal(store.column("mlp", 2, 5), expected[:, 2, 5])
    mask = np.arange(N) % 2 == 0
    np.testing.assert_array_equal(store.column("mlp", 0, 3, rows=mask), expected[mask, 0, 3])
    with pytest.raises(IndexError, match=r"layers 0\.\.2"):
        store.layer("mlp", 3)
    with pytest.raises(KeyError, match="unknown site"):
        store.layer("heads", 0)


def test_float16_store_accepts_tensors(tmp_path):
    data = {s: torch.randn(N, *shape, dtype=torch.float16) for s, shape in SITES.items()}
    store = _write(tmp_path, data)
    for site in SITES:
        np.testing.assert_array_equal(
            np.asarray(store.array(site)), data[site].numpy().swapaxes(0, 1)
        )


def test_round_trip_bfloat16_is_bit_exact(tmp_path):
    gen = torch.Generator().manual_seed(0)
    data = {
        s: (torch.randn(N, *shape, generator=gen) * 1e3).bfloat16() for s, shape in SITES.items()
    }
    data["resid"][0, 0, 0] = 1e38  # beyond float16, fine in bfloat16
    store = _write(tmp_path, data, dtype="bfloat16")
    assert store.dtype == "bfloat16"
    for site in SITES:
        raw = store.array(site)
        assert raw.dtype == np.uint16
        bits = data[site].view(torch.int16).numpy().view(np.uint16).swapaxes(0, 1)
        np.testing.assert_array_equal(np.asarray(raw), bits)
        for layer in range(3):
            np.testing.assert_array_equal(store.layer(site, layer), data[site][:, layer].float())


def test_bfloat16_store_rounds_float_arrays_like_torch(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.normal(size=(N, 3, 8)).astype(np.float32)
    # exact ties between two bf16 values, both parities, plus specials
    values[0, 0, :6] = np.array(
        [0x3F808000, 0x3F818000, 0xBF808000, 0x7F7FFFFF, 0, 1], np.uint32
    ).view(np.float32)
    values[0, 0, 6:] = [np.inf, np.nan]
    data = {"resid": values}
    writer = ActivationWriter(tmp_path, {"resid": (3, 8)}, N, dtype="bfloat16")
    writer.append(data, [{"id": i} for i in range(N)])
    store = writer.finish()
    expected = torch.from_numpy(values).bfloat16().view(torch.int16).numpy().view(np.uint16)
    got = np.asarray(store.array("resid")).swapaxes(0, 1)
    not_nan = ~np.isnan(values)
    np.testing.assert_array_equal(got[not_nan], expected[not_nan])
    assert np.isnan(store.layer("resid", 0)[0, 7])

    other = ActivationWriter(tmp_path / "t", {"resid": (3, 8)}, N, dtype="bfloat16")
    with pytest.raises(TypeError, match=r"'resid'.*bfloat16 tensors, got torch.float32"):
        other.append({"resid": torch.zeros(N, 3, 8)}, [{}] * N)


def test_resume_after_kill_and_torn_chunk_is_byte_identical(tmp_path):
    data = _data()
    _write(tmp_path / "ref", data)

    writer = _write(tmp_path / "run", data, stop=2 * CHUNK, finish=False)
    del writer  # killed: no finish, no close
    # A crash in the middle of chunk 3: some of its rows reached the file, progress did not.
    torn = np.load(tmp_path / "run" / "mlp.npy", mmap_mode="r+")
    torn[:, 2 * CHUNK : 2 * CHUNK + 2] = np.float16(-7.5)
    torn.flush()
    del torn
    assert not is_complete(tmp_path / "run")

    writer = ActivationWriter(tmp_path / "run", SITES, N, meta=dict(META))
    assert writer.n_done == 2 * CHUNK
    with writer:
        for i in range(writer.n_done, N, 4):  # chunking need not match the first run
            writer.append({s: a[i : i + 4] for s, a in data.items()}, _records()[i : i + 4])
        writer.finish()
    assert _files(tmp_path / "run") == _files(tmp_path / "ref")


def test_open_incomplete_store_reports_progress(tmp_path):
    with _write(tmp_path, _data(), stop=2 * CHUNK, finish=False):
        pass
    with pytest.raises(IncompleteStoreError, match="did not finish: 6/10 samples; rerun the same"):
        ActivationStore.open(tmp_path)
    with pytest.raises(StoreError, match="no activation store"):
        ActivationStore.open(tmp_path / "missing")
    writer = ActivationWriter(tmp_path, SITES, N, meta=META)
    with pytest.raises(RuntimeError, match="cannot finish: 6/10"):
        writer.finish()


def test_resume_with_different_arguments_is_refused(tmp_path):
    _write(tmp_path, _data(), stop=CHUNK, finish=False).close()
    with pytest.raises(
        ValueError, match=r"different meta \('revision': stored 'abc123', given 'v2'"
    ):
        ActivationWriter(tmp_path, SITES, N, meta={**META, "revision": "v2"})
    with pytest.raises(ValueError, match="different n_samples"):
        ActivationWriter(tmp_path, SITES, N + 1, meta=META)
    with pytest.raises(ValueError, match="different sites"):
        ActivationWriter(tmp_path, {**SITES, "mlp": (3, 17)}, N, meta=META)
    with pytest.raises(ValueError, match="different dtype"):
        ActivationWriter(tmp_path, SITES, N, dtype="bfloat16", meta=META)
    assert ActivationWriter(tmp_path, SITES, N, meta=META).n_done == CHUNK


def test_rerun_on_complete_store_changes_nothing(tmp_path):
    _write(tmp_path, _data())
    before = _files(tmp_path)
    writer = ActivationWriter(tmp_path, SITES, N, meta=META)
    assert writer.n_done == N
    assert writer.finish().n == N
    assert _files(tmp_path) == before


def test_float16_overflow_is_refused_and_nothing_is_committed(tmp_path):
    data = _data()
    data["attn"][1, 2, 3] = -1.5e5
    writer = ActivationWriter(tmp_path, SITES, N, meta=META)
    with pytest.raises(ValueError, match=r"site 'attn'.*float16 range \(max \|value\| = 150000"):
        writer.append({s: a[:CHUNK] for s, a in data.items()}, _records()[:CHUNK])
    data["attn"][1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="site 'attn': activations contain NaN"):
        writer.append({s: a[:CHUNK] for s, a in data.items()}, _records()[:CHUNK])
    assert writer.n_done == 0
    assert ActivationWriter(tmp_path, SITES, N, meta=META).n_done == 0


def test_append_validates_shapes_and_counts(tmp_path):
    data = _data()
    writer = ActivationWriter(tmp_path, SITES, N, meta=META)
    chunk = {s: a[:2] for s, a in data.items()}
    with pytest.raises(
        ValueError, match=r"site 'mlp': expected shape \(2, 3, 16\).*got \(2, 3, 8\)"
    ):
        writer.append({**chunk, "mlp": data["resid"][:2]}, _records()[:2])
    with pytest.raises(ValueError, match=r"missing \['attn'\], unexpected \['heads'\]"):
        writer.append(
            {"resid": chunk["resid"], "mlp": chunk["mlp"], "heads": chunk["attn"]}, [{}] * 2
        )
    with pytest.raises(ValueError, match=r"expected shape \(3, 3, 8\)"):
        writer.append(chunk, _records()[:3])
    with pytest.raises(ValueError, match="exceed n_samples=10"):
        writer.append({s: np.zeros((11, *shape)) for s, shape in SITES.items()}, [{}] * 11)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        writer.append(chunk, [{"id": object()}, {}])
    assert writer.n_done == 0


SCRIPT = """
import json, os, sys
import numpy as np
from superneurons import store

spec = json.load(open(sys.argv[1]))
data = np.load(sys.argv[2])
sites = {s: tuple(v) for s, v in spec["sites"].items()}
writer = store.ActivationWriter(sys.argv[3], sites, spec["n"], meta=spec["meta"])
c, records = spec["chunk"], spec["records"]
for i in range(writer.n_done, 2 * c, c):
    writer.append({s: data[s][i : i + c] for s in sites}, records[i : i + c])
# Die while committing chunk 3: its (garbage) rows are flushed, its progress never lands.
os.replace = lambda *args: os._exit(1)
writer.append({s: -data[s][2 * c : 3 * c] - 1 for s in sites}, records[2 * c : 3 * c])
"""


def test_killed_process_resumes_to_identical_store(tmp_path):
    data = _data(seed=3)
    _write(tmp_path / "ref", data)
    spec = {"sites": SITES, "n": N, "meta": META, "chunk": CHUNK, "records": _records()}
    (tmp_path / "spec.json").write_text(json.dumps(spec, default=int))
    np.savez(tmp_path / "data.npz", **data)
    (tmp_path / "script.py").write_text(SCRIPT)
    args = [sys.executable, tmp_path / "script.py", tmp_path / "spec.json", tmp_path / "data.npz"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*args, tmp_path / "run"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 1, proc.stderr.decode()

    torn = np.load(tmp_path / "run" / "resid.npy")[:, 2 * CHUNK]
    np.testing.assert_array_equal(torn, (-data["resid"][2 * CHUNK] - 1).astype(np.float16))
    with pytest.raises(IncompleteStoreError, match="6/10"):
        ActivationStore.open(tmp_path / "run")

    writer = ActivationWriter(tmp_path / "run", SITES, N, meta=META)
    assert writer.n_done == 2 * CHUNK
    writer.append({s: a[writer.n_done :] for s, a in data.items()}, _records()[writer.n_done :])
    writer.finish()
    assert _files(tmp_path / "run") == _files(tmp_path / "ref")


def test_merge_shards_restores_the_original_order_exactly(tmp_path):
    from superneurons.store import merge_shards

    rng = np.random.default_rng(3)
    sites = {"resid": (2, 5), "mlp": (2, 7)}
    full = {site: rng.normal(size=(10, *shape)).astype(np.float16) for site, shape in sites.items()}
    records = [{"id": f"s{j}", "label": "yes" if j % 2 else "no"} for j in range(10)]
    shards = []
    for k in range(3):
        path = tmp_path / f"shard{k}"
        rows = list(range(k, 10, 3))
        writer = ActivationWriter(path, sites, len(rows), meta={"model": "m", "shard": [k, 3]})
        writer.append({s: a[rows] for s, a in full.items()}, [records[j] for j in rows])
        writer.finish()
        shards.append(path)
    merged = merge_shards(shards[::-1], tmp_path / "merged", chunk=4)
    assert merged.records == records
    assert merged.meta == {"model": "m"}
    for site in sites:
        for layer in range(2):
            np.testing.assert_array_equal(merged.layer(site, layer), full[site][:, layer])


def test_merge_refuses_shards_of_different_extractions(tmp_path):
    from superneurons.store import merge_shards

    paths = []
    for k, model in enumerate(["a", "b"]):
        writer = ActivationWriter(
            tmp_path / str(k), {"resid": (1, 2)}, 1, meta={"model": model, "shard": [k, 2]}
        )
        writer.append({"resid": np.zeros((1, 1, 2))}, [{"id": str(k)}])
        writer.finish()
        paths.append(tmp_path / str(k))
    with pytest.raises(ValueError, match="not a shard of the same extraction"):
        merge_shards(paths, tmp_path / "merged")
