"""Adaptive micro-batching for the ingress (no ray import).

Serve's @serve.batch forms a batch from what arrives within a fixed wait after the first item, whether or
not the previous batch is still running: at low load every request waits the full timeout, at high load
batches stay as small as the window. This batcher sends a request at once when fewer than
`max_in_flight` batches are running, and otherwise queues it; when a batch finishes, everything queued
(up to `max_batch_size`) goes as the next batch. A lone request never waits, and under load the batch
grows to what arrived during one pass through the graph - which is what amortises the per-hop cost.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class AdaptiveBatcher(Generic[T, R]):
    def __init__(self, fn: Callable[[list[T]], Awaitable[list[R]]], *, max_batch_size: int,
                 max_in_flight: int):  # no defaults here: the app's are in serve_app/config.py (AppArgs)
        if max_batch_size < 1 or max_in_flight < 1:
            raise ValueError("max_batch_size and max_in_flight must be >= 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_in_flight = max_in_flight
        self._queue: list[tuple[T, asyncio.Future]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def submit(self, item: T) -> R:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        self._dispatch()
        return await fut

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            batch = self._queue[: self.max_batch_size]
            del self._queue[: len(batch)]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        try:
            results = await self.fn([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)
        except BaseException as e:  # noqa: BLE001 - every waiter must hear about the failure
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
            if not isinstance(e, Exception):
                raise
        finally:
            self._in_flight -= 1
            self._dispatch()
