"""``superneurons bench serve``: the real server under a bounded asynchronous load, beside the
offline predictor at the same batch size and the full model served the same way.

The server is a separate ``superneurons serve`` process on 127.0.0.1; the load generator is an
``aiohttp`` client in this process, at most ``concurrency`` requests in flight, each question of
the embedded default's held-out scenes sent as a base64 PNG. aiohttp, not the openai client (which
the tests drive the server with): on the cores the server shares, the openai client's own CPU was
about nine times aiohttp's per request (1.7 against 0.18 ms), and the benchmark measures the
server. The offline predictor runs in this process while no server runs, so the two never share
the cores.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from superneurons.bench import device_description
from superneurons.bench.clock import synchronize
from superneurons.errors import ConfigError
from superneurons.image_cache import ImageFeatureCache

FULL = "full-model"
PHASES = ("decode", "prompt", "preprocess", "forward", "postprocess")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _png_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _noise(n: int, questions: list[str]) -> list[tuple[str, str]]:
    """``n`` questions about images of seeded noise, each its own image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    return [
        (_png_url(Image.fromarray(p)), questions[i % len(questions)]) for i, p in enumerate(pixels)
    ]


class ServerProcess:
    """``superneurons serve`` with ``args`` on a free port of 127.0.0.1, ready once ``/health``
    says so (the benchmark's server, and the tests')."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "superneurons", "serve", "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read().decode()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if time.time() > deadline:
                self.process.kill()
                raise RuntimeError("the server never became ready")
            time.sleep(0.2)

    def batch_sizes(self) -> tuple[float, float]:
        """(questions, forwards) so far, from ``/metrics``."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as reply:
            text = reply.read().decode()
        total = float(re.search(r"superneurons_batch_size_sum ([0-9.e+]+)", text).group(1))
        count = float(re.search(r"superneurons_batch_size_count ([0-9.e+]+)", text).group(1))
        return total, count

    def stop(self) -> int:
        """SIGTERM, then the exit status once the server has drained (killed after 60 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode


def _load(server: ServerProcess, model: str, asks: list[tuple[str, str]], n: int, concurrency: int):
    """``n`` requests (cycling through ``asks``), at most ``concurrency`` in flight, and the load
    generator's own CPU time per request (it shares the server's cores)."""
    import aiohttp

    latencies: list[float] = []
    errors: list[int] = []

    async def drive() -> float:
        gate = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(i: int) -> None:
                url, question = asks[i % len(asks)]
                body = {"model": model, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": question},
                ]}]}  # fmt: skip
                async with gate:
                    started = time.perf_counter()
                    async with session.post(server.url + "/v1/chat/completions", json=body) as r:
                        reply = await r.json()
                    if r.status != 200 or not reply["choices"][0]["message"]["content"]:
                        errors.append(r.status)
                        return
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return time.perf_counter() - started

    before, cpu = server.batch_sizes(), time.process_time()
    wall = asyncio.run(drive())
    cpu, after = time.process_time() - cpu, server.batch_sizes()
    forwards = after[1] - before[1]
    p50, p90, p99 = (
        float(np.percentile(latencies, q)) if latencies else None for q in (50, 90, 99)
    )
    return {
        "model": model,
        "concurrency": concurrency,
        "requests": n,
        "seconds": round(wall, 4),
        "throughput": round(len(latencies) / wall, 3),
        "p50_ms": None if p50 is None else round(1000 * p50, 2),
        "p90_ms": None if p90 is None else round(1000 * p90, 2),
        "p99_ms": None if p99 is None else round(1000 * p99, 2),
        "mean_batch_size": round((after[0] - before[0]) / forwards, 2) if forwards else None,
        "errors": len(errors),
        "client_cpu_ms_per_request": round(1000 * cpu / n, 3),
    }


def request_phases(predictor, png: bytes, question: str, repeats: int = 30) -> dict:
    """Where one batch-1 request's time goes in the model thread's path, median ms per phase:
    decoding the PNG, the chat prompt, the processor, the early-exit forward, the classifier."""
    from superneurons.capture import prepare_inputs
    from superneurons.classifiers import LayerActivations, Split
    from superneurons.data.images import open_rgb
    from superneurons.early_exit import early_exit_activations

    loaded, classifier = predictor.loaded, predictor.classifier
    times: dict[str, list[float]] = {}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        marks = [time.perf_counter()]
        image = open_rgb(png)
        marks.append(time.perf_counter())
        prompt = predictor.prompter.chat(loaded.processor, question)
        marks.append(time.perf_counter())
        inputs = prepare_inputs(loaded.processor, [image], [prompt])
        marks.append(time.perf_counter())
        values = early_exit_activations(loaded.model, inputs, predictor.needed)
        synchronize(loaded.device)
        marks.append(time.perf_counter())
        arrays = {key: v.float().cpu().numpy() for key, v in values.items()}
        split = Split(LayerActivations(arrays, predictor.sites), [question])
        classifier.predict(split), classifier.decision_function(split)
        marks.append(time.perf_counter())
        for phase, start, end in zip(PHASES, marks, marks[1:], strict=False):
            times.setdefault(phase, []).append(end - start)
    medians = {phase: float(np.median(t[1:])) * 1000 for phase, t in times.items()}
    total = sum(medians.values())
    return {
        "ms": {phase: round(ms, 3) for phase, ms in medians.items()},
        "shares": {phase: round(ms / total, 4) for phase, ms in medians.items()},
        "total_ms": round(total, 3),
    }


def bench_serve(
    classifier: Path,
    n_requests: int = 64,
    concurrencies: tuple[int, ...] = (1, 8, 32),
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    seed: int = 11,
    n_questions: int = 64,
    per_image: int = 6,
    device: str = "cpu",
) -> dict:
    """Throughput and latency of the server at each concurrency (image cache off), of the full
    model served the same way at the highest, of the offline predictor batched at
    ``max_batch_size``, and of ``per_image`` questions per image with and without the cache."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise ConfigError(
            "bench serve drives the server with aiohttp: pip install aiohttp "
            "(or the dev extras: pip install -e '.[dev]')"
        ) from None
    from superneurons.bench import scene_set
    from superneurons.predictor import SuperNeuronPredictor

    images, records = scene_set(max(n_questions, 2 * n_requests // per_image), seed)
    questions = [r.question for r in records]
    asks = [(_png_url(image), q) for image, q in zip(images, questions, strict=True)]

    # Six questions of each image, one image after another (POPE asks six per image); the
    # images distinct by content (scene questions share their scene's image).
    images_once = list(dict.fromkeys(url for url, _ in asks))
    n_images = max(1, min(n_requests // per_image, len(images_once)))
    grouped = [(images_once[i], questions[(i + j) % len(questions)])
               for i in range(n_images) for j in range(per_image)]  # fmt: skip
    image_of = {url: image for (url, _), image in zip(asks, images, strict=True)}

    order = [i % len(images) for i in range(n_requests)]

    def offline_at(predictor: SuperNeuronPredictor, batch_size: int) -> dict:
        """The offline predictor over the same requests in batches of ``batch_size``."""
        predictor.batch_size = batch_size
        predictor.predict(images[:batch_size], questions[:batch_size])  # warm up
        started = time.perf_counter()
        predictor.predict([images[i] for i in order], [questions[i] for i in order])
        seconds = time.perf_counter() - started
        return {
            "batch_size": batch_size,
            "requests": n_requests,
            "seconds": round(seconds, 4),
            "throughput": round(n_requests / seconds, 3),
        }

    predictor = SuperNeuronPredictor.from_pretrained(
        classifier, device=device, batch_size=max_batch_size
    )
    offline = offline_at(predictor, max_batch_size)
    buffer = io.BytesIO()
    images[0].save(buffer, format="PNG")
    phases = request_phases(predictor, buffer.getvalue(), questions[0])
    # The same six-per-image questions offline, without and with the cache: the model's share.
    in_process = {}
    for name, cache in (("without_cache", None), ("with_cache", ImageFeatureCache(2**28))):
        predictor.image_cache = cache
        started = time.perf_counter()
        predictor.predict([image_of[url] for url, _ in grouped], [q for _, q in grouped])
        in_process[name] = round(len(grouped) / (time.perf_counter() - started), 3)
    del predictor
    gc.collect()  # its memory freed now, not by a collection during a timed load

    def start(cache_mb: float) -> ServerProcess:
        return ServerProcess([
            "--classifier", f"sn={classifier}", "--full-model", FULL, "--device", device,
            "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
            "--max-queue", str(max(1024, 4 * n_requests)), "--image-cache-mb", str(cache_mb),
        ])  # fmt: skip

    busiest = max(concurrencies)
    server = start(0)  # no image cache: every request pays its own vision tower
    warm = _noise(24 * max_batch_size, questions)  # every server is warmed alike
    try:
        _load(server, "sn", warm, len(warm), busiest)
        served = [_load(server, "sn", asks, n_requests, c) for c in concurrencies]
        full = [_load(server, FULL, asks, n_requests, busiest)]
    finally:
        server.stop()
    # The six-per-image workload on two fresh servers, the image cache off and on, each warmed
    # alike on images of noise (which leave the workload's images uncached).
    six = {}
    for name, cache_mb in (("without_cache", 0), ("with_cache", 256)):
        server = start(cache_mb)
        try:
            _load(server, "sn", warm, len(warm), busiest)
            six[name] = _load(server, "sn", grouped, len(grouped), busiest)
        finally:
            server.stop()
    uncached, cached = six["without_cache"], six["with_cache"]
    top = served[-1]
    # Offline again, now at the batch size the server formed at the highest concurrency: a
    # closed loop of c requests keeps about c/2 in the model while the rest travel.
    predictor = SuperNeuronPredictor.from_pretrained(classifier, device=device)
    same_batch = offline_at(predictor, max(1, round(top["mean_batch_size"] or 1)))
    del predictor
    return {
        "format": "superneurons-bench-serve/1",
        "classifier": str(classifier),
        **device_description(device),
        "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "served": served,
        "full_model_served": full,
        "offline": offline,
        "offline_at_served_batch_size": same_batch,
        "batch_1_request_phases": phases,
        "six_per_image": {
            "questions_per_image": per_image,
            "without_cache": uncached,
            "with_cache": cached,
            "offline_throughput": in_process,
        },
        "ratios": {
            "image_cache": round(cached["throughput"] / uncached["throughput"], 3),
            "image_cache_offline": round(in_process["with_cache"] / in_process["without_cache"], 3),
            "served_vs_offline": round(top["throughput"] / offline["throughput"], 3),
            "served_vs_offline_same_batch": round(top["throughput"] / same_batch["throughput"], 3),
            "served_vs_full_model_served": round(top["throughput"] / full[0]["throughput"], 3),
        },
        "targets": {
            "served_vs_offline": 0.8,
            "served_vs_offline_same_batch": 0.8,
            "served_vs_full_model_served": 3.0,
            "image_cache": 1.3,
        },
    }
