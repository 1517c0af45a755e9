"""The model in a process of its own: the HTTP process parses, batches and replies; the engine
answers batches in a child process, over a pipe.

Two interpreters, two GILs: the model's Python (the modules' calls, the tokenizer) no longer takes
turns with the event loop's (HTTP parsing, JSON, image decoding); docs/serve.md, "Batching and
the engine". A batch's decoded pixels go through a shared-memory block the server reuses (32
images of 640x480 pickled through the pipe took 120-150 ms), its texts through the pipe, and the
answers and the caches' counters come back. The child ignores SIGINT and SIGTERM (the server
drains first, then closes the pipe, and the child exits at its end); it exits too when the
server dies.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from PIL import Image

from superneurons.errors import SuperneuronsError
from superneurons.serve.protocol import Answer, Question


@dataclass(frozen=True)
class _Pixels:
    """Where one image's pixels lie in the batch's shared-memory block."""

    offset: int
    size: tuple[int, int]


def _pack(
    questions: Sequence[Question], block: SharedMemory | None
) -> tuple[SharedMemory, list[Question]]:
    """The questions' images copied into ``block`` (replaced by a larger new block when they do
    not fit; reused, its pages are mapped once), and the questions with each image replaced by
    where it lies there."""
    images = [q.image if q.image.mode == "RGB" else q.image.convert("RGB") for q in questions]
    # As RGBX, Pillow's own layout of RGB: copied a row at a time, 4x faster than packed RGB.
    sizes = [4 * image.width * image.height for image in images]
    if block is None or block.size < sum(sizes):
        larger = _new_block(-(-sum(sizes) // 2**20) * 2**20)  # the old one stays if this fails
        if block is not None:
            block.close()
            block.unlink()
        block = larger
    packed, offset = [], 0
    for question, image, size in zip(questions, images, sizes, strict=True):
        block.buf[offset : offset + size] = image.tobytes("raw", "RGBX")
        packed.append(replace(question, image=_Pixels(offset, image.size)))
        offset += size
    return block, packed


def _new_block(size: int) -> SharedMemory:
    """A shared-memory block of ``size`` bytes, its pages allocated now: a full /dev/shm is then
    an OSError here, not a SIGBUS on the first write past its end."""
    block = SharedMemory(create=True, size=size)
    try:
        fd = os.open(f"/dev/shm/{block.name.lstrip('/')}", os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except FileNotFoundError:
        pass  # no /dev/shm on this system: the mapping stands as it is
    except BaseException:
        block.close()
        block.unlink()
        raise
    return block


def _unpack(block: SharedMemory, packed: Sequence[Question]) -> list[Question]:
    """The questions with their images read back (copied) from ``block``."""
    questions = []
    for question in packed:
        pixels, (width, height) = question.image, question.image.size
        data = block.buf[pixels.offset : pixels.offset + 4 * width * height]
        image = Image.frombytes("RGB", (width, height), data, "raw", "RGBX")
        data.release()
        questions.append(replace(question, image=image))
    return questions


class NoRoomForPixels(RuntimeError):
    """Shared memory cannot hold a batch's pixels (a full /dev/shm); the block in use stays."""


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
    block = None  # the server's current block of pixels
    while True:
        try:
            name, packed = conn.recv()
        except (EOFError, OSError):
            return
        if block is None or block.name != name:
            if block is not None:
                block.close()
            block = SharedMemory(name=name)
        try:
            reply = ("ok", engine.answer(_unpack(block, packed)))
        except Exception as error:
            if not isinstance(error, SuperneuronsError):
                traceback.print_exc(file=sys.stderr)
            reply = ("error", _portable(error))
        conn.send((*reply, engine.cache_counts()))


class EngineProcess:
    """:meth:`Engine.from_dirs` run in a child process (``engine_kwargs`` are its arguments),
    answering batches as :meth:`Engine.answer` would. ``answer`` is called from one thread at a
    time (the batcher's model thread). Construction waits until the model is loaded; a refused
    classifier or model raises its error here. A batch not answered within ``batch_timeout_s``
    is taken for a hung model (a deadlocked device, say): the process is killed, and this and
    every later batch raise :class:`ModelProcessGone`."""

    def __init__(self, batch_timeout_s: float = 300.0, **engine_kwargs: Any) -> None:
        self.batch_timeout_s = batch_timeout_s
        self._stopped = ""  # why the model process was stopped, once it was
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
        self._block: SharedMemory | None = None

    @property
    def alive(self) -> bool:
        # The sentinel, not is_alive(): uvloop may reap the child first, and waitpid then fails.
        return not multiprocessing.connection.wait([self._process.sentinel], 0)

    def _gone(self, when: str = "") -> ModelProcessGone:
        if self._stopped:
            return ModelProcessGone(self._stopped)
        code = self._process.exitcode
        status = f" (exit status {code})" if code is not None else ""
        return ModelProcessGone(f"the model process exited{when}{status}")

    def answer(self, questions: Sequence[Question]) -> list[Answer]:
        """One answer per question, from the model's process."""
        try:
            self._block, packed = _pack(questions, self._block)
        except OSError as error:
            raise NoRoomForPixels(
                f"no room in shared memory for the batch's pixels ({error.strerror})"
            ) from None
        try:
            self._conn.send((self._block.name, packed))
            if not self._conn.poll(self.batch_timeout_s):  # True at the child's exit too
                self._process.kill()
                self._process.join()
                self._stopped = (
                    f"the model process answered no batch within {self.batch_timeout_s:g} s "
                    "(--batch-timeout) and was stopped"
                )
                raise self._gone()
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
        if self._block is not None:
            self._block.close()
            self._block.unlink()
            self._block = None
