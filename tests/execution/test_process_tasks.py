"""offload="process" tasks and aqueue.offload() on a real worker (docs/reliability.md rows 7, 8)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from aqueue import App, TaskFailed

from . import process_tasks as pt

pytestmark = pytest.mark.slow


@pytest.fixture
async def papp(broker_url: str) -> AsyncIterator[App]:
    pt.app.conf.update(broker_url=broker_url, worker_process_pool_size=2)
    async with pt.app:
        yield pt.app
    await pt.app.close()


async def test_process_task_runs_in_another_process(papp: App) -> None:
    async with papp.worker():
        assert await (await pt.crunch.delay(1000)).wait(timeout=30) == pt._digest(1000)
        assert await (await pt.where.delay()).wait(timeout=30) != os.getpid()
        assert await (await pt.mixed.delay(10)).wait(timeout=30) == pt._digest(10)


async def test_crashing_process_fails_only_its_task(papp: App) -> None:
    async with papp.worker(concurrency=4):
        healthy = [await pt.crunch.delay(i) for i in range(20)]
        crashing = [await pt.die.delay() for _ in range(3)]
        results = await asyncio.gather(*(h.wait(timeout=60) for h in healthy))
        for h in crashing:
            with pytest.raises(TaskFailed) as info:
                await h.wait(timeout=60)
            assert info.value.exc_type == "WorkerLostError"
    assert results == [pt._digest(i) for i in range(20)]


async def test_hard_limit_kills_the_process_and_reuses_the_slot(papp: App) -> None:
    async with papp.worker(concurrency=1):
        with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
            await (await pt.spin.delay()).wait(timeout=30)
        assert await (await pt.crunch.delay(1)).wait(timeout=30) == pt._digest(1)


def test_async_task_cannot_be_offloaded_to_a_process() -> None:
    app = App("x", broker="memory://no-async-process")
    with pytest.raises(TypeError, match="offload"):

        @app.task(offload="process")
        async def nope() -> None: ...
