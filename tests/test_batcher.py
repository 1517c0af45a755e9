"""The server's batcher: a request's questions are queued together or not at all, and dropped
unrun once the request has failed."""

from __future__ import annotations

import asyncio

import pytest

from superneurons.serve.batcher import Batcher, QueueFull


def _batcher(ran: list, sizes: list | None = None, **settings) -> Batcher:
    def work(items: list) -> list:
        ran.extend(items)
        if "bad" in items:
            raise ValueError("a bad item")
        return [ValueError(f"refused {item}") if item == "refused" else f"answer {item}"
                for item in items]  # fmt: skip

    observe = sizes.append if sizes is not None else lambda n: None
    return Batcher(work, **{"max_batch_size": 2, "max_wait_s": 0.01, "max_queue": 64,
                            "observe": observe, **settings})  # fmt: skip


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


def test_an_exception_in_place_of_a_result_fails_its_item_alone_and_the_batch_runs_once():
    ran, sizes = [], []
    batcher = _batcher(ran, sizes, max_batch_size=3, max_wait_s=0.05)

    async def body():
        return await asyncio.gather(
            batcher.submit(["refused"]), batcher.submit([1]), batcher.submit([2]),
            return_exceptions=True,
        )  # fmt: skip

    refused, one, two = _run(batcher, body)
    assert isinstance(refused, ValueError) and str(refused) == "refused refused"
    assert (one, two) == (["answer 1"], ["answer 2"])
    assert ran == ["refused", 1, 2] and sizes == [3]


def test_retries_one_at_a_time_are_observed_as_batches_of_one():
    ran, sizes = [], []
    batcher = _batcher(ran, sizes, max_batch_size=3, max_wait_s=0.05)

    async def body():
        return await asyncio.gather(
            batcher.submit(["bad"]), batcher.submit([1]), batcher.submit([2]),
            return_exceptions=True,
        )  # fmt: skip

    bad, one, two = _run(batcher, body)
    assert isinstance(bad, ValueError) and (one, two) == (["answer 1"], ["answer 2"])
    assert ran == ["bad", 1, 2, "bad", 1, 2] and sizes == [3, 1, 1, 1]
