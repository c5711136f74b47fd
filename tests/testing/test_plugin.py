"""The pytest plugin (aqueue.testing) on the seed's tasks: celery101's day-4 workflow
(div | mul | add | sub), a failing task, countdown and retries under the virtual clock,
beat, and the plugin's opt-in (pytester)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from aqueue import App
from aqueue.testing import VirtualTime, drain


def celery101(app: App) -> dict[str, Any]:
    """celery101 day 4's tasks, as plain functions (they ran in threads under Celery)."""

    @app.task(name="division-of-two-numbers")
    def div(x: float, y: float) -> float:
        return x / y

    @app.task(name="product-of-two-numbers")
    def mul(x: float, y: float) -> float:
        return x * y

    @app.task(name="sum-of-two-numbers")
    async def add(x: float, y: float) -> float:
        return x + y

    @app.task(name="diff-of-two-numbers")
    async def sub(x: float, y: float) -> float:
        return x - y

    return {"div": div, "mul": mul, "add": add, "sub": sub}


async def test_drain_runs_a_whole_chain(aqueue_app: App) -> None:
    t = celery101(aqueue_app)
    # (4 / 2 * 3 + 6 - 2): celery101's Workflow1
    wf = await (t["div"].s(4, 2) | t["mul"].s(3) | t["add"].s(6) | t["sub"].s(2)).delay()
    assert not await wf.ready()
    assert await drain(aqueue_app) == 4
    assert await wf.wait(timeout=0) == 10


async def test_drain_reraises_the_task_error(aqueue_app: App) -> None:
    t = celery101(aqueue_app)
    h = await t["div"].delay(1, 0)
    with pytest.raises(ZeroDivisionError):
        await drain(aqueue_app)
    assert await h.state() == "FAILURE"
    # propagate=False leaves the error in the result only
    await t["div"].delay(1, 0)
    assert await drain(aqueue_app, propagate=False) == 1


async def test_embedded_worker_fixture(aqueue_app: App, aqueue_worker: Any) -> None:
    t = celery101(aqueue_app)
    assert await (await t["mul"].delay(6, 7)).wait(timeout=5) == 42


async def test_countdown_waits_for_the_virtual_clock(
    aqueue_app: App, aqueue_clock: VirtualTime
) -> None:
    t = celery101(aqueue_app)
    started = time.monotonic()
    h = await t["add"].apply_async((1, 2), countdown=3600)
    assert await drain(aqueue_app) == 0  # not due: stays queued
    assert await h.state() == "PENDING"
    await aqueue_clock.advance(3599)
    assert await drain(aqueue_app) == 0
    await aqueue_clock.advance(1)
    assert await drain(aqueue_app) == 1
    assert await h.wait(timeout=0) == 3
    assert time.monotonic() - started < 10  # an hour passed in the virtual clock only


async def test_retries_with_backoff_under_the_clock(
    aqueue_app: App, aqueue_clock: VirtualTime
) -> None:
    calls: list[int] = []

    @aqueue_app.task(bind=True, max_retries=3)
    async def flaky(self: Any) -> str:
        calls.append(self.request.retries)
        if len(calls) < 3:
            raise self.retry(countdown=600)
        return "ok"

    h = await flaky.delay()
    assert await drain(aqueue_app, clock=aqueue_clock) == 1
    assert calls == [0, 1, 2]
    assert await h.wait(timeout=0) == "ok"


async def test_beat_fires_on_the_virtual_clock(aqueue_app: App, aqueue_clock: VirtualTime) -> None:
    @aqueue_app.task(name="auto_sms_rating")
    async def auto_sms_rating() -> None:
        return None

    aqueue_app.conf.beat_schedule = {
        "auto-sms-rating": {"task": "auto_sms_rating", "schedule": 600.0},
    }
    async with aqueue_app.beat(clock=aqueue_clock):
        await aqueue_clock.advance(1800)
    assert await drain(aqueue_app) == 3


def test_plugin_is_opt_in(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_fixture(aqueue_app):
            pass
        """
    )
    without = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    without.assert_outcomes(errors=1)
    with_it = pytester.runpytest_subprocess(
        "-p", "aqueue.testing", "-p", "no:cacheprovider", "-p", "asyncio"
    )
    with_it.assert_outcomes(passed=1)
