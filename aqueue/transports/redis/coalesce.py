"""Group commit: many calls made close together become one batched call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Group calls made close together into one batched call (group commit).

    ``submit`` queues an item and returns a future. A single flusher task sends everything
    queued so far in one ``flush(items)`` call; items arriving while a flush is in flight
    go in the next one, so batches grow with load and a lone call pays one loop tick.
    An item is flushed even if its caller was cancelled meanwhile (an ack still happens).
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]], max_batch: int) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Nothing is queued or being flushed."""
        return self._task is None and not self._pending

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future resolves to its result or raises the batch's error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = loop.create_task(self._run())
        return future

    async def drain(self) -> None:
        """Wait until everything submitted so far has been flushed."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None
