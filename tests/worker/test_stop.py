"""Stopping a worker hands back everything it claimed (docs/architecture.md, "Shutdown")."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from aqueue import App, Worker
from aqueue.backends.memory import MemoryBackend
from aqueue.brokers.memory import MemoryBroker
from aqueue.core.protocols import Delivery


class StopWhenClaimed(MemoryBroker):
    """A broker whose claim asks the worker to stop just as the claim returns messages."""

    worker: Worker | None = None

    async def claim(self, queues: Sequence[str], **options: Any) -> list[Delivery]:
        got = await super().claim(queues, **options)
        if got and self.worker is not None:
            # the stop runs before the worker sees this claim's result: the claim has
            # finished when its consumer is cancelled
            self.worker.request_stop()
            self.worker = None
        return got


async def test_a_claim_that_finished_as_the_worker_stopped_is_handed_back() -> None:
    name = f"memory://stop-{uuid.uuid4().hex[:8]}"
    broker = StopWhenClaimed(name)
    app = App("stop", broker=broker, backend=MemoryBackend(name), lease_seconds=60.0)

    @app.task(name="s.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        handle = await add.delay(1, 2)
        worker = app.worker()
        broker.worker = worker
        await worker.run()
        # handed back at once, not held until its 60 s lease expires
        again = await broker.claim(["celery"], limit=10, lease_seconds=5, owner="t", timeout=1)
        assert [d.id for d in again] == [handle.id]
        assert again[0].delivery_count == 1  # not counted as a delivery: it never started


async def test_prefetched_messages_are_handed_back_when_a_slot_frees_during_stop() -> None:
    name = f"memory://stop-{uuid.uuid4().hex[:8]}"
    app = App("stop", broker=MemoryBroker(name), backend=MemoryBackend(name), lease_seconds=60.0)
    worker = app.worker(concurrency=1, prefetch=2)

    @app.task(name="s.first")
    async def first() -> None:
        worker.request_stop()  # its slot frees as the worker begins to stop

    @app.task(name="s.second")
    async def second() -> None:
        raise AssertionError("a stopping worker must not start it")

    async with app:
        await first.delay()
        waiting = await second.delay()
        await worker.run()
        # the prefetched message that got the freed slot is handed back, not kept leased
        again = await app.broker.claim(["celery"], limit=10, lease_seconds=5, owner="t", timeout=1)
        assert [d.id for d in again] == [waiting.id]
