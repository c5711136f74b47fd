"""Prefetch: how many messages a worker holds, and when it claims the next ones."""

from __future__ import annotations

import asyncio
from typing import Any

from aqueue import App, states


async def test_next_message_is_claimed_while_a_result_is_being_stored(app: App) -> None:
    @app.task(name="pf.work")
    async def work(n: int) -> int:
        return n

    first = await work.delay(1)
    second = await work.delay(2)
    backend = await app.result_backend()
    broker = app.broker
    storing, claimed_second, gate = asyncio.Event(), asyncio.Event(), asyncio.Event()
    real_store, real_claim = backend.store, broker.claim

    async def store(task_id: str, record: bytes, **kw: Any) -> bool:
        if task_id == first.id and kw["state"] == states.SUCCESS:
            storing.set()
            await gate.wait()  # the first result's write is held up
        return await real_store(task_id, record, **kw)

    async def claim(*args: Any, **kw: Any) -> Any:
        got = await real_claim(*args, **kw)
        if any(d.id == second.id for d in got):
            claimed_second.set()
        return got

    backend.store = store  # type: ignore[method-assign]
    broker.claim = claim  # type: ignore[method-assign]
    async with app.worker(concurrency=1, prefetch=1):
        async with asyncio.timeout(10):
            await storing.wait()
            # the first task's body is done: it no longer counts against the prefetch
            await claimed_second.wait()
        gate.set()
        assert await first.wait(timeout=10) == 1
        assert await second.wait(timeout=10) == 2
