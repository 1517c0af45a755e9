"""Dynamic batching: requests that arrive together share one forward.

The first request of a batch waits at most ``max_wait_s`` for others, up to ``max_batch_size``;
the batch then runs on the one model thread while the next batch gathers. A full queue refuses
at once (:class:`QueueFull`) rather than letting latency grow without bound. A request's
questions are queued as one unit: all of them or none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


class Batcher(Generic[Item, Result]):
    """Runs ``work(items) -> results`` (one result per item, in order; a result that is an
    exception fails its item alone) on batches of submitted items, on a single thread.
    ``observe(batch_size)`` is told the size of each batch the work runs on (a failed batch's
    items retried one at a time are batches of 1)."""

    def __init__(
        self,
        work: Callable[[list[Item]], Sequence[Result]],
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        observe: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.work, self.observe = work, observe
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._gathering: asyncio.Future | None = None  # the next batch, gathering
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="superneurons-model")
        self.pending = 0  # submitted and not answered yet

    def start(self) -> None:
        """Start gathering batches (in the running event loop)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Answer what was submitted, then stop."""
        while self.pending:
            await asyncio.sleep(0.01)
        for task in (self._task, self._gathering):
            if task is not None:
                task.cancel()
        self._model_thread.shutdown(wait=True)

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """The items' results, once their batches have run. The items are queued together or
        not at all (QueueFull when the queue lacks room for all of them); when one fails, or
        the caller stops waiting, those of the others still queued are dropped unrun."""
        if self.pending + len(items) > self.max_queue:
            raise QueueFull
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self.pending += len(items)
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # nothing for a done one; a queued one is skipped when gathered
            self.pending -= len(items)

    async def _gather(self) -> list[tuple[Item, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]  # not timed out

    async def _run(self) -> None:
        # The next batch gathers while the model runs this one, and is topped up from the queue
        # when the model is free: the model thread never waits for a batch that is ready.
        self._gathering = gathering = asyncio.ensure_future(self._gather())
        while True:
            batch = await gathering
            while len(batch) < self.max_batch_size and not self._queue.empty():
                item, future = self._queue.get_nowait()
                if not future.done():
                    batch.append((item, future))
            self._gathering = gathering = asyncio.ensure_future(self._gather())
            if batch:
                await self._answer(batch)

    async def _answer(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        batch = [(item, future) for item, future in batch if not future.done()]  # dropped since
        if not batch:
            return
        self.observe(len(batch))
        items = [item for item, _ in batch]
        try:
            results = await loop.run_in_executor(self._model_thread, self.work, items)
        except Exception as error:  # one bad item must not fail the others: each alone
            if len(batch) == 1:
                _settle(batch[0][1], error)
                return
            for item, future in batch:
                if future.done():  # its request has failed meanwhile, or stopped waiting
                    continue
                self.observe(1)
                try:
                    (result,) = await loop.run_in_executor(self._model_thread, self.work, [item])
                except Exception as error:
                    result = error
                _settle(future, result)
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)


def _settle(future: asyncio.Future, outcome: object) -> None:
    """Resolve ``future`` with ``outcome`` (an exception fails it) unless it is done already
    (its request timed out or failed)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
