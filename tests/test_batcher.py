"""The server's batcher: a request's questions are queued together or not at all, and dropped
unrun once the request has failed."""

from __future__ import annotations

import asyncio

import pytest

from superneurons.serve.batcher import Batcher, QueueFull


def _batcher(ran: list, **settings) -> Batcher:
    def work(items: list) -> list:
        ran.extend(items)
        if "bad" in items:
            raise ValueError("a bad item")
        return [f"answer {item}" for item in items]

    return Batcher(work, **{"max_batch_size": 2, "max_wait_s": 0.01, "max_queue": 64, **settings})


def _run(batcher: Batcher, body) -> object:
    async def main():
        batcher.start()
        try:
            return await body()
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_answers_come_back_in_order_across_batches():
    ran: list = []
    batcher = _batcher(ran)
    assert _run(batcher, lambda: batcher.submit(list(range(5)))) == [
        f"answer {i}" for i in range(5)
    ]
    assert sorted(ran) == list(range(5)) and batcher.pending == 0


def test_a_request_larger_than_the_queues_room_queues_nothing():
    ran: list = []
    batcher = _batcher(ran, max_queue=5)

    async def body():
        with pytest.raises(QueueFull):
            await batcher.submit(list(range(8)))
        await asyncio.sleep(0.05)  # time for any queued item to have run

    _run(batcher, body)
    assert ran == [] and batcher.pending == 0


def test_once_one_question_fails_the_rest_of_its_request_is_dropped_unrun():
    ran: list = []
    batcher = _batcher(ran)
    items = ["bad", *range(20)]

    async def body():
        with pytest.raises(ValueError, match="a bad item"):
            await batcher.submit(items)
        await asyncio.sleep(0.05)

    _run(batcher, body)
    # The bad batch, retried one item at a time, and at most the next batch already gathered.
    assert "bad" in ran and len([i for i in ran if i != "bad"]) <= 2 * 2
    assert batcher.pending == 0


def test_a_failed_batch_is_retried_one_at_a_time_only_while_its_requests_wait():
    ran: list = []
    batcher = _batcher(ran, max_batch_size=3, max_wait_s=0.05)

    async def body():
        with pytest.raises(ValueError, match="a bad item"):
            await batcher.submit(["bad", 1, 2])  # one batch: it fails, then each alone
        await asyncio.sleep(0.05)

    _run(batcher, body)
    # Retried alone, the bad item fails its request; its other items are not all run again.
    assert ran[:4] == ["bad", 1, 2, "bad"] and len(ran) < 6, ran
