"""A wait that times out says why: the task's state and, while it is PENDING, the queue it
waits in and how many messages are there (usually: no worker consumes that queue)."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from aqueue import App, group


async def test_a_task_in_a_queue_no_worker_consumes(app: App) -> None:
    @app.task(name="w.add")
    async def add(x: int, y: int) -> int:
        return x + y

    # the routing seed: a task sent to priority.high, a worker on the default queue only
    handle = await add.apply_async((2, 2), queue="priority.high")
    async with app.worker(queues=["celery"]):
        with pytest.raises(TimeoutError) as info:
            await handle.wait(timeout=0.3)
    assert str(info.value) == (
        f"task w.add[{handle.id}] was not ready within 0.3s: it is PENDING; queue "
        "'priority.high' holds 1 message(s): is a worker consuming 'priority.high'? "
        "(aqueue worker -Q priority.high; the worker log names the queues it consumes)"
    )


async def test_a_group_names_its_first_waiting_member(app: App) -> None:
    @app.task(name="w.add")
    async def add(x: int, y: int) -> int:
        return x + y

    result = await group(add.s(1, 1), add.s(2, 2).set(queue="nowhere")).delay()
    async with app.worker(queues=["celery"]):
        await result.results[0].wait(timeout=15)
        with pytest.raises(TimeoutError) as info:
            await result.wait(timeout=0.3)
    text = str(info.value)
    assert text.startswith(f"group {result.id} was not ready within 0.3s: 1 of 2 not ready; ")
    assert "the first: task w.add[" in text
    assert "queue 'nowhere' holds 1 message(s)" in text


async def test_a_running_task_says_where_it_runs() -> None:
    # one broker is enough for the STARTED wording
    app = App("w", broker=f"memory://w-{uuid.uuid4().hex[:8]}", task_track_started=True)
    release = asyncio.Event()

    @app.task(name="w.slow")
    async def slow() -> None:
        await release.wait()

    async with app, app.worker(hostname="busy@host"):
        handle = await slow.delay()
        async for change in handle.events():
            if change.state == "STARTED":
                break
        with pytest.raises(TimeoutError, match=re.escape("it is STARTED on worker busy@host")):
            await handle.wait(timeout=0.2)
        release.set()
        await handle.wait(timeout=15)
