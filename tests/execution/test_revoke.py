"""Revoking: queued tasks never run (even revoked with no worker online); terminate stops one."""

from __future__ import annotations

import asyncio

import pytest

from aqueue import App, TaskRevoked, states
from aqueue.signals import task_revoked


async def test_revoked_while_queued_never_runs(app: App) -> None:
    ran: list[int] = []

    @app.task(name="rv.work")
    async def work(n: int) -> int:
        ran.append(n)
        return n

    doomed = await work.delay(1)
    await doomed.revoke()  # no worker is online
    kept = await work.delay(2)
    async with app.worker():
        assert await kept.wait(timeout=10) == 2
        with pytest.raises(TaskRevoked):
            await doomed.wait(timeout=10)
    assert ran == [2]
    assert await doomed.state() == states.REVOKED
    assert await app.broker.size("celery") == 0  # acked, not left behind


async def test_terminate_cancels_a_running_coroutine(app: App) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    seen: list[tuple[str, bool]] = []

    @app.task(name="rv.forever")
    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    signalled = asyncio.Event()

    def on_revoked(sender: object, *, task_id: str, terminated: bool, expired: bool) -> None:
        seen.append((task_id, terminated))
        signalled.set()

    task_revoked.connect(on_revoked)
    try:
        async with app.worker():
            h = await forever.delay()
            async with asyncio.timeout(10):
                await started.wait()
            await app.control.revoke(h.id, terminate=True)
            async with asyncio.timeout(10):
                await cancelled.wait()
            with pytest.raises(TaskRevoked):
                await h.wait(timeout=10)
            async with asyncio.timeout(10):  # the signal fires after the ack, after the cancel
                await signalled.wait()
    finally:
        task_revoked.disconnect(on_revoked)
    assert seen == [(h.id, True)]
    assert await app.broker.size("celery") == 0


async def test_revoke_without_terminate_lets_a_running_task_finish(app: App) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    @app.task(name="rv.busy")
    async def busy() -> str:
        started.set()
        await release.wait()
        finished.append(True)
        return "done"

    async with app.worker():
        h = await busy.delay()
        async with asyncio.timeout(10):
            await started.wait()
        await app.control.revoke([h.id])
        release.set()
        with pytest.raises(TaskRevoked):  # the revocation is final: the late result is refused
            await h.wait(timeout=10)
        marker = await busy.delay()
        release.set()
        await marker.wait(timeout=10)
    assert finished == [True, True]
