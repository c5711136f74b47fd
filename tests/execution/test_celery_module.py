"""A Celery task module runs on aqueue with only its imports changed (issue 5)."""

from __future__ import annotations

import asyncio

import pytest

from aqueue import ArgumentError, TaskFailed, TaskRevoked, states

from . import celery_module as m


async def test_celery_module_runs_unchanged() -> None:
    app = m.app
    async with app:
        stale = await m.stale.delay()  # expires 1 ms after sending, before any worker runs
    await asyncio.sleep(0.01)  # the clock must pass the expiry; nothing to wait for here
    async with app, app.worker(concurrency=10):
        assert await (await m.add.delay(4, 4)).wait(timeout=10) == 8
        assert await (await m.add.apply_async((2, 3), countdown=0.05)).wait(timeout=10) == 5
        fetched = await m.fetch.delay("example.org")
        assert await fetched.get(timeout=10) == "<html>example.org</html>"
        assert await (await m.flaky.delay("k")).wait(timeout=10) == 2
        job = await m.long_job.delay(100)
        seen = [c.state async for c in job.events()]
        assert seen[-1] == states.SUCCESS and job.result == "stopped early"
        assert "PROGRESS" in seen
        looked = await m.lookup.delay("missing")
        with pytest.raises(TaskFailed, match="KeyError"):
            await app.AsyncResult(looked.id).wait(timeout=10)  # stored although ignored
        with pytest.raises(TaskRevoked):
            await app.AsyncResult(stale.id).wait(timeout=10)
    assert m.attempts["example.org"] == 3


async def test_typing_checks_arity_when_sending() -> None:
    with pytest.raises(ArgumentError, match="missing a required argument"):
        await m.add.delay(1)  # type: ignore[call-arg]
