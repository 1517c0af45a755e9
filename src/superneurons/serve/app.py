"""The HTTP application: OpenAI Chat Completions, vLLM's ``/classify``, models, health, metrics.

Request handlers parse and check on the event loop's worker threads; the model runs in a process
of its own (:mod:`superneurons.serve.worker`), fed by the batcher's one thread. Bad input is a
4xx in OpenAI's error shape, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from superneurons.errors import SuperneuronsError
from superneurons.serve.batcher import Batcher, QueueFull
from superneurons.serve.protocol import (
    Limits,
    RequestError,
    chat_chunks,
    chat_completion,
    check_model,
    classify_reply,
    error_body,
    parse_chat,
    parse_classify,
)
from superneurons.serve.worker import EngineProcess, ModelProcessGone, NoRoomForPixels


@dataclass(frozen=True)
class Settings:
    """How the server batches and what it accepts (``superneurons serve``'s options)."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    request_timeout_s: float = 60.0
    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 4096 * 4096
    max_request_pixels: int = 2**27
    allow_files: Path | None = None


class Metrics:
    """The Prometheus metrics of one server (its own registry)."""

    def __init__(self, cache_counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "superneurons_requests", "Requests by endpoint", ["endpoint"], registry=r
        )
        self.errors = Counter(
            "superneurons_errors", "Refused or failed requests by kind", ["kind"], registry=r
        )
        self.batch_size = Histogram(
            "superneurons_batch_size", "Questions per forward", registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )  # fmt: skip
        self.queue_depth = Gauge(
            "superneurons_queue_depth", "Questions waiting or running", registry=r
        )
        self.latency = Histogram(
            "superneurons_request_latency_seconds", "Time from request to reply", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        gauges = (
            ("image_hits", "Images answered from the image-feature cache"),
            ("image_misses", "Images computed for the image-feature cache"),
            ("prefix_hits", "Prompts that ran only their question (prefix cache)"),
            ("prefix_misses", "Prompts that ran whole (prefix cache)"),
        )
        for name, what in gauges:
            kind, count = name.split("_")
            Gauge(f"superneurons_{kind}_cache_{count}", what, registry=r).set_function(
                lambda name=name: cache_counts().get(name, 0)
            )
        self.fallbacks = Counter(
            "superneurons_fallbacks", "Answers by the full model (cascade)", registry=r
        )


def _refusal(error: RequestError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _json_body(request: Request, limit: int) -> object:
    """The request's JSON body: 415 unless it says JSON, 413 past ``limit`` bytes, 400 unless it
    parses."""
    kind = request.headers.get("content-type", "")
    if kind.split(";")[0].strip().lower() != "application/json":
        raise RequestError(
            415, f"the content type must be application/json, got {kind or 'none'!r}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared):,} bytes, over the limit of {limit:,}")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise RequestError(413, f"the body is over the limit of {limit:,} bytes")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(400, f"the body is not valid JSON ({error})") from None
    except RecursionError:
        raise RequestError(400, "the body is not valid JSON (nested too deeply)") from None


def create_app(engine: EngineProcess, settings: Settings = Settings()) -> FastAPI:
    """The application serving ``engine``'s classifiers (each a ``model`` name of the API)."""
    metrics = Metrics(engine.cache_counts)
    batcher = Batcher(
        engine.answer,
        settings.max_batch_size,
        settings.max_wait_ms / 1000,
        settings.max_queue,
        metrics.batch_size.observe,
    )
    limits = Limits(
        settings.max_pixels, settings.allow_files, settings.max_request_pixels, settings.max_queue
    )
    models = engine.models
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        app.state.ready = True
        yield
        app.state.ready = False
        await batcher.stop()  # after uvicorn has let the in-flight requests finish

    app = FastAPI(title="superneurons", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ready = False
    app.state.metrics = metrics

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        kind = error.code if error.status >= 500 else error.kind
        metrics.errors.labels(kind).inc()
        return _refusal(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        metrics.errors.labels("invalid_request_error").inc()
        return JSONResponse(
            error_body(str(error.detail), "invalid_request_error"), status_code=error.status_code
        )

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        metrics.errors.labels("internal_error").inc()
        return JSONResponse(error_body(f"internal error: {error}", "internal_error"), 500)

    async def answer(questions: list) -> list:
        """Each question through the batcher, bounded by the queue and the request timeout."""
        metrics.queue_depth.inc(len(questions))
        try:
            waiting = batcher.submit(questions)
            return await asyncio.wait_for(waiting, settings.request_timeout_s)
        except QueueFull:
            raise RequestError(
                503, "the server is at capacity: retry shortly", None, "queue_full", "server_error"
            ) from None
        except TimeoutError:
            raise RequestError(
                504, f"no answer within {settings.request_timeout_s:g} s", None, "timeout",
                "server_error",
            ) from None  # fmt: skip
        except SuperneuronsError as error:  # a question the model cannot take (too long)
            raise RequestError(400, str(error)) from None
        except NoRoomForPixels as error:
            raise RequestError(
                503, f"{error}: retry shortly", None, "shared_memory_full", "server_error"
            ) from None
        except ModelProcessGone as error:
            raise RequestError(
                503, f"{error}: restart the server", None, "model_process_exited", "server_error"
            ) from None
        finally:
            metrics.queue_depth.dec(len(questions))

    def finished(since: float, answers: list) -> None:
        metrics.latency.observe(time.perf_counter() - since)
        metrics.fallbacks.inc(sum(a.fallback for a in answers))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        since = time.perf_counter()
        metrics.requests.labels("chat").inc()
        body = await _json_body(request, settings.max_body_bytes)
        question, options = await run_in_threadpool(parse_chat, body, models, limits)
        (reply,) = await answer([question])
        finished(since, [reply])
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not options.stream:
            return JSONResponse(chat_completion(reply, question.model, options, ident, created))
        chunks = chat_chunks(reply, question.model, options, ident, created)

        async def events() -> AsyncIterator[str]:
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/classify")
    async def classify(request: Request) -> Response:
        since = time.perf_counter()
        metrics.requests.labels("classify").inc()
        body = await _json_body(request, settings.max_body_bytes)
        questions = await run_in_threadpool(parse_classify, body, models, limits)
        replies = await answer(questions)
        finished(since, replies)
        ident = f"classify-{uuid.uuid4().hex}"
        return JSONResponse(classify_reply(replies, questions[0].model, ident, int(time.time())))

    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": started, "owned_by": "superneurons"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        metrics.requests.labels("models").inc()
        return {"object": "list", "data": [model_card(name) for name in models]}

    @app.get("/v1/models/{name:path}")
    async def retrieve_model(name: str) -> dict:
        metrics.requests.labels("models").inc()
        return model_card(check_model({"model": name}, models))

    @app.get("/health")
    async def health() -> Response:
        if not app.state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        if not engine.alive:
            return JSONResponse({"status": "the model process exited"}, status_code=503)
        return JSONResponse({"status": "ok", "models": models})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Server(uvicorn.Server):
    """uvicorn's server, except that a shutdown on SIGTERM or SIGINT, once the requests in
    flight are answered, exits 0: uvicorn itself re-raises the signal afterwards."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        self._captured_signals.clear()
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # nothing to re-raise


def serve_app(app: FastAPI, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then finish the requests in flight and return."""
    _Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
