"""The early-exit benchmark's rows, on a tiny model (speed itself is not asserted)."""

from __future__ import annotations

import json
import statistics

import pytest

from models.tiny import QUESTIONS_FOR_BENCH, tiny_llava
from superneurons.bench import rows_table
from superneurons.bench.early_exit import BenchTarget, bench_target


def test_rows_report_medians_speedups_and_flop_ceilings():
    tiny = tiny_llava()
    target = BenchTarget(
        "tiny-llava",
        tiny.model,
        lambda b: tiny.inputs(QUESTIONS_FOR_BENCH[:b]),
        {"min_new_tokens": 2, "max_new_tokens": 2},
        {"k=0": {"resid": [0]}, "k=1": {"mlp": [1]}},
    )
    rows = bench_target(target, [1, 2], repeats=2, warmup=1, log=lambda *_: None)
    assert [(r["batch_size"], r["exit"]) for r in rows] == [
        (1, "k=0"),
        (1, "k=1"),
        (2, "k=0"),
        (2, "k=1"),
    ]
    for row in rows:
        assert row["speedup"] == pytest.approx(row["full_s"] / row["early_s"], rel=1e-2)
        assert row["fraction_of_ceiling"] == pytest.approx(
            row["speedup"] / row["ceiling"], rel=1e-2
        )
        # Fewer layers, no decoding: the early path always does less arithmetic.
        assert row["ceiling"] > 1
    deeper = {r["batch_size"]: r for r in rows if r["exit"] == "k=1"}
    shallow = {r["batch_size"]: r for r in rows if r["exit"] == "k=0"}
    assert all(deeper[b]["ceiling"] < shallow[b]["ceiling"] for b in (1, 2))
    json.dumps(rows)
    assert rows_table(rows).row_count == 4


def test_flop_split_adds_up_and_grows_with_depth_evenly():
    from superneurons.bench.flops import prefill_flop_split

    tiny = tiny_llava()
    split = prefill_flop_split(tiny.model, tiny.inputs(QUESTIONS_FOR_BENCH[:1]))
    assert split["vision"] > 0 and split["lm_head"] > 0
    assert split["vision"] + sum(split["layers"]) + split["lm_head"] <= split["total"]
    # Identical decoder layers over the same tokens cost the same.
    assert len(set(split["layers"])) == 1 and split["layers"][0] > 0
    assert 0 < split["vision_share"] < 1


def _bench(args: list, out, kind: str) -> dict:
    """``superneurons ARGS --out OUT``'s result, once it exited 0 with a ``kind`` bench JSON."""
    from command import superneurons

    done = superneurons(*args, "--out", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["format"] == f"superneurons-bench-{kind}/1"
    return result


def test_the_baselines_bench_reports_every_fit_against_one_read(tmp_path):
    from command import superneurons

    args = ["bench", "baselines", "--shape", "tiny", "--n", "200", "--cache", tmp_path / "cache"]
    result = _bench(args, tmp_path / "b.json", "baselines")
    assert result["n"] == 200
    fits = [row["fit"] for row in result["rows"]]
    assert fits == [
        "savs",
        "sparse_probe",
        *(f"linear_probe[{s}]" for s in ("resid", "mlp", "attn")),
    ]
    for row in result["rows"]:
        ratio = row["seconds"] / result["read_s"]
        assert row["x_read"] == pytest.approx(ratio, rel=0.05, abs=0.01)
        assert isinstance(row["peak_mb"], float)  # its measure is tested below
    # The synthetic store is built once: a second run reuses it byte for byte.
    store = tmp_path / "cache" / "tiny-200" / "mlp.npy"
    stamp = store.stat().st_mtime_ns
    again = superneurons(*args, "--out", tmp_path / "b2.json")
    assert again.returncode == 0, again.stderr
    assert store.stat().st_mtime_ns == stamp


def test_the_analyze_bench_times_every_analysis_of_a_cached_synthetic_run(tmp_path):
    from command import superneurons
    from superneurons.analysis import ANALYSES

    args = ["bench", "analyze", "--shape", "tiny", "--n", "300", "--n-val", "100"]
    args += ["--cache", tmp_path / "cache"]
    result = _bench(args, tmp_path / "a.json", "analyze")
    assert result["n"] == 300
    assert [row["analysis"] for row in result["rows"]] == list(ANALYSES)
    total = sum(row["seconds"] for row in result["rows"])
    assert result["total_s"] == pytest.approx(total, rel=1e-3)
    assert result["x_read"] == pytest.approx(total / result["read_s"], rel=0.05, abs=0.01)
    # The synthetic run is a run: report takes it, and a second bench reuses it untouched.
    folder = tmp_path / "cache" / "run-tiny-300-100"
    stamp = (folder / "results.json").stat().st_mtime_ns
    assert superneurons("report", folder).returncode == 0
    again = superneurons(*args, "--out", tmp_path / "a2.json")
    assert again.returncode == 0, again.stderr
    assert (folder / "results.json").stat().st_mtime_ns == stamp


def test_the_discover_bench_times_the_fit_against_one_read(tmp_path):
    from command import superneurons

    args = ["bench", "discover", "--shape", "tiny", "--n", "200", "--cache", tmp_path / "cache"]
    result = _bench(args, tmp_path / "d.json", "discover")
    assert result["n"] == 200
    fit = result["fit"]
    assert fit["x_read"] == pytest.approx(fit["seconds"] / result["read_s"], rel=0.05, abs=0.01)
    assert result["n_sn"] >= 1 and 0 <= result["exit_layer"] < 4
    refused = superneurons("bench", "discover", "--shape", "qwen3-vl-4b", "--out", tmp_path / "x")
    assert refused.returncode == 2 and "qwen3-vl-4b" in refused.stderr


def test_peak_memory_is_measured_without_tracing():
    """The sampler sees a 64 MiB array the call holds for a while (RssAnon, not tracemalloc)."""
    import time

    import numpy as np

    from superneurons.bench.baselines import measured

    def hold() -> None:
        block = np.ones(64 * 2**20, np.uint8)
        time.sleep(0.1)
        del block

    seconds, peak = measured(hold)
    assert seconds >= 0.1 and peak >= 60 * 2**20


def test_the_extract_bench_splits_extraction_into_phases_beside_plain_generate(tmp_path):
    from command import superneurons

    args = ["bench", "extract", "--n", "8", "--batch-size", "4", "--max-new-tokens", "4"]
    done = superneurons(*args, "--repeats", "3", "--out", tmp_path / "e.json")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["format"] == "superneurons-bench-extract/1" and result["n"] == 8
    assert result["device"] == "cpu" and result["torch"].startswith("2.")
    assert set(result["phases_s"]) == {"decode", "preprocess", "model", "store"}
    assert all(seconds > 0 for seconds in result["phases_s"].values())
    assert sum(result["phase_shares"].values()) == pytest.approx(1.0, abs=1e-3)
    ratio = result["generate_s"] / result["extract_s"]
    assert result["extract_vs_generate"] == pytest.approx(ratio, rel=0.01)
    assert result["extract_samples_per_s"] == pytest.approx(8 / result["extract_s"], rel=0.01)
    rounds = result["rounds_s"]
    assert result["repeats"] == 3 and all(len(values) == 3 for values in rounds.values())
    assert result["generate_s"] == pytest.approx(statistics.median(rounds["generate"]), abs=1e-4)
    assert result["extract_s"] == pytest.approx(statistics.median(rounds["0"]), abs=1e-4)


def test_the_serve_bench_drives_a_real_server_beside_offline_and_the_full_model(tmp_path, tiny_run):
    from command import superneurons

    out, _ = tiny_run
    args = ["bench", "serve", "--classifier", out / "classifier", "--requests", "12",
            "--concurrency", "1,6", "--max-batch-size", "6", "--max-wait-ms", "50"]  # fmt: skip
    done = superneurons(*args, "--out", tmp_path / "s.json")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["format"] == "superneurons-bench-serve/1"
    served, (full,) = result["served"], result["full_model_served"]
    assert [row["concurrency"] for row in served] == [1, 6] and full["concurrency"] == 6
    for row in [*served, full]:
        assert row["errors"] == 0 and row["requests"] == 12
        assert row["throughput"] == pytest.approx(12 / row["seconds"], rel=0.01)
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert served[0]["mean_batch_size"] == 1.0  # one request in flight: batches of one
    assert served[1]["mean_batch_size"] > 1.0  # six in flight, 50 ms to gather: shared forwards
    phases = result["batch_1_request_phases"]
    assert set(phases["ms"]) == {"decode", "prompt", "preprocess", "forward", "postprocess"}
    assert sum(phases["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    six = result["six_per_image"]
    assert six["questions_per_image"] == 6
    assert six["with_cache"]["errors"] == six["without_cache"]["errors"] == 0
    assert result["ratios"]["image_cache"] == pytest.approx(
        six["with_cache"]["throughput"] / six["without_cache"]["throughput"], rel=0.01
    )
    offline, same = result["offline"], result["offline_at_served_batch_size"]
    assert result["ratios"]["served_vs_offline"] == pytest.approx(
        served[-1]["throughput"] / offline["throughput"], rel=0.01
    )
    assert offline["batch_size"] == 6 and same["batch_size"] == round(served[-1]["mean_batch_size"])
    assert result["ratios"]["served_vs_offline_same_batch"] == pytest.approx(
        served[-1]["throughput"] / same["throughput"], rel=0.01
    )
    assert all(row["client_cpu_ms_per_request"] > 0 for row in [*served, full])


def test_the_image_reuse_bench_shares_one_images_work_across_its_questions(tmp_path):
    args = ["bench", "image-reuse", "--shape", "llava-1.5-7b", "--exit-layer", "0",
            "--questions", "3", "--repeats", "1"]  # fmt: skip
    result = _bench(args, tmp_path / "r.json", "image-reuse")
    assert result["questions_per_image"] == 3 and result["exit_layer"] == 0
    rows = {row["variant"]: row for row in result["rows"]}
    assert list(rows) == ["plain", "image cache", "prefix cache", "both caches"]
    # The first question of a round misses, the other two hit.
    assert rows["plain"]["hits_misses_per_round"] == {}
    assert rows["image cache"]["hits_misses_per_round"] == {"image_cache": [2, 1]}
    assert rows["prefix cache"]["hits_misses_per_round"] == {"prefix_cache": [2, 1]}
    # With both, the prefix cache's misses alone reach the image cache: one image, computed once.
    assert rows["both caches"]["hits_misses_per_round"] == {
        "image_cache": [0, 1],
        "prefix_cache": [2, 1],
    }
    for row in rows.values():
        assert row["speedup_over_plain"] > 0 and row["seconds_per_question"] > 0
        # bf16 values of the same early exit: equal up to bf16 rounding of values this large.
        assert row["max_abs_diff_from_plain"] <= 1e-2 * row["plain_max_abs_value"]
    assert rows["plain"]["speedup_over_plain"] == 1.0
    assert result["device"] == "cpu" and result["device_name"] == "cpu"  # --device auto here


@pytest.mark.parametrize("bench", ["early-exit", "extract", "image-reuse", "serve"])
def test_every_device_bench_refuses_a_device_this_machine_lacks_before_any_work(tmp_path, bench):
    from command import superneurons

    done = superneurons("bench", bench, "--device", "cuda:99", "--out", tmp_path / "r.json")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "--device" in done.stderr and "'cuda:99' is not available" in done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


def test_timing_waits_for_the_device_and_returns_the_result():
    import time

    import torch

    from superneurons.bench.clock import timed

    result, seconds = timed(lambda: time.sleep(0.05) or "done", torch.device("cpu"))
    assert result == "done" and 0.05 <= seconds < 1
