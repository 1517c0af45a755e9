"""The model in a process of its own: the HTTP process parses, batches and replies; the engine
answers batches in a child process, over a pipe.

Two interpreters, two GILs: the model's Python (the modules' calls, the tokenizer) no longer takes
turns with the event loop's (HTTP parsing, JSON, image decoding), which on the embedded default
held the server well below the offline predictor (docs/serve.md, "One process or two"). A batch
crosses the pipe as the questions' decoded images and texts, and comes back as the answers and
the caches' counters. The child ignores SIGINT and SIGTERM (the server drains first, then closes
the pipe, and the child exits at its end); it exits too when the server dies.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import pickle
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from superneurons.errors import SuperneuronsError
from superneurons.serve.protocol import Answer, Question


class ModelProcessGone(RuntimeError):
    """The model's process exited; the server cannot answer until it is restarted."""


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _child(conn: Any, engine_kwargs: dict) -> None:
    """The model process: build the engine, say whether it is ready, then answer each batch
    received until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us by closing the pipe
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from superneurons.serve.engine import Engine

    try:
        engine = Engine.from_dirs(**engine_kwargs)
    except BaseException as error:
        if not isinstance(error, SuperneuronsError):
            traceback.print_exc(file=sys.stderr)
        conn.send(("error", _portable(error)))
        return
    loaded = engine.loaded
    conn.send(("ready", (engine.models, loaded.model_id, str(loaded.device))))
    while True:
        try:
            questions = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", engine.answer(questions))
        except Exception as error:
            if not isinstance(error, SuperneuronsError):
                traceback.print_exc(file=sys.stderr)
            reply = ("error", _portable(error))
        conn.send((*reply, engine.cache_counts()))


class EngineProcess:
    """:meth:`Engine.from_dirs` run in a child process (``engine_kwargs`` are its arguments),
    answering batches as :meth:`Engine.answer` would. ``answer`` is called from one thread at a
    time (the batcher's model thread). Construction waits until the model is loaded; a refused
    classifier or model raises its error here."""

    def __init__(self, **engine_kwargs: Any) -> None:
        context = multiprocessing.get_context("spawn")  # no copy of the server's threads
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_child, args=(child, engine_kwargs), name="superneurons-model", daemon=True
        )
        self._process.start()
        child.close()
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            self._process.join()
            raise self._gone(" while loading") from None
        if kind == "error":
            self._process.join()
            raise payload
        self.models, self.model_id, self.device = payload
        self.counts: dict[str, int] = {}

    @property
    def alive(self) -> bool:
        # The sentinel, not is_alive(): uvloop may reap the child first, and waitpid then fails.
        return not multiprocessing.connection.wait([self._process.sentinel], 0)

    def _gone(self, when: str = "") -> ModelProcessGone:
        code = self._process.exitcode
        status = f" (exit status {code})" if code is not None else ""
        return ModelProcessGone(f"the model process exited{when}{status}")

    def answer(self, questions: Sequence[Question]) -> list[Answer]:
        """One answer per question, from the model's process."""
        try:
            self._conn.send(list(questions))
            kind, payload, self.counts = self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None
        if kind == "error":
            raise payload
        return payload

    def cache_counts(self) -> dict[str, int]:
        """The caches' hits and misses as of the last batch answered."""
        return dict(self.counts)

    def close(self, timeout: float = 60.0) -> None:
        """Close the pipe; the child exits once it has answered what it holds."""
        self._conn.close()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
