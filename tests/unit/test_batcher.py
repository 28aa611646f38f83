"""The ingress's adaptive batcher: no wait when idle, batches grow while one is in flight."""
from __future__ import annotations

import asyncio

import pytest

from serve_app.core.batcher import AdaptiveBatcher


def run(coro):
    return asyncio.run(coro)


def test_lone_request_is_sent_at_once():
    seen: list[list[int]] = []

    async def fn(items):
        seen.append(list(items))
        return [i * 2 for i in items]

    async def main():
        b = AdaptiveBatcher(fn, max_batch_size=64, max_in_flight=1)
        return await asyncio.wait_for(b.submit(21), timeout=1)

    assert run(main()) == 42 and seen == [[21]]


def test_requests_arriving_during_a_batch_form_the_next_batch():
    seen: list[list[int]] = []
    gate = None

    async def fn(items):
        seen.append(list(items))
        if len(seen) == 1:
            await gate.wait()
        return [i + 100 for i in items]

    async def main():
        nonlocal gate
        gate = asyncio.Event()
        b = AdaptiveBatcher(fn, max_batch_size=4, max_in_flight=1)
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(b.submit(i)) for i in range(1, 7)]
        for _ in range(1000):                  # until the six have queued behind the running batch
            if b.queued == 6:
                break
            await asyncio.sleep(0)
        assert b.in_flight == 1 and b.queued == 6
        gate.set()
        return await asyncio.gather(first, *rest)

    assert run(main()) == [100 + i for i in range(7)]
    assert seen == [[0], [1, 2, 3, 4], [5, 6]]  # capped at max_batch_size, order kept


def test_max_in_flight_allows_overlap():
    running = 0
    peak = 0

    async def fn(items):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return items

    async def main():
        b = AdaptiveBatcher(fn, max_batch_size=1, max_in_flight=3)
        return await asyncio.gather(*(b.submit(i) for i in range(6)))

    assert run(main()) == list(range(6)) and peak == 3


def test_a_failing_batch_fails_its_waiters_and_the_next_batch_still_runs():
    async def fn(items):
        if 0 in items:
            raise ValueError("stage down")
        return items

    async def main():
        b = AdaptiveBatcher(fn, max_batch_size=64, max_in_flight=1)
        with pytest.raises(ValueError, match="stage down"):
            await b.submit(0)
        return await b.submit(5)

    assert run(main()) == 5


def test_wrong_result_count_is_an_error():
    async def fn(items):
        return []

    async def main():
        await AdaptiveBatcher(fn, max_batch_size=64, max_in_flight=1).submit(1)

    with pytest.raises(RuntimeError, match="0 results for 1"):
        run(main())
