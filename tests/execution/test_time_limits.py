"""Soft and hard time limits for coroutine and thread tasks (docs/reliability.md row 7)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid

import pytest

from aqueue import App, TaskFailed
from aqueue.core.errors import SoftTimeLimitExceeded


async def test_hard_limit_cancels_a_hung_coroutine_and_frees_the_slot(app: App) -> None:
    never = asyncio.Event()

    @app.task(name="l.hang", time_limit=0.3)
    async def hang() -> None:
        await never.wait()

    @app.task(name="l.quick")
    async def quick() -> str:
        return "slot reused"

    async with app.worker(concurrency=1):
        t0 = time.monotonic()
        with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
            await (await hang.delay()).wait(timeout=10)
        assert time.monotonic() - t0 < 5
        assert await (await quick.delay()).wait(timeout=10) == "slot reused"


async def test_soft_limit_is_raised_inside_the_coroutine(app: App) -> None:
    cleaned: list[str] = []

    @app.task(name="l.soft", soft_time_limit=0.2, time_limit=5)
    async def soft() -> str:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            cleaned.append("cleanup")
            await asyncio.sleep(0.01)  # still usable after the soft limit
            return "cleaned up"
        return "slept"

    async with app.worker():
        assert await (await soft.delay()).wait(timeout=10) == "cleaned up"
    assert cleaned == ["cleanup"]


async def test_soft_limit_uncaught_fails_the_task(app: App) -> None:
    @app.task(name="l.soft_uncaught", soft_time_limit=0.2)
    async def soft_uncaught() -> None:
        await asyncio.sleep(30)

    async with app.worker():
        with pytest.raises(TaskFailed, match="SoftTimeLimitExceeded"):
            await (await soft_uncaught.delay()).wait(timeout=10)


async def test_per_call_time_limit(app: App) -> None:
    @app.task(name="l.sleepy")
    async def sleepy(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async with app.worker():
        with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
            await (await sleepy.apply_async((30,), time_limit=0.2)).wait(timeout=10)
        assert await (await sleepy.delay(0.01)).wait(timeout=10) == 0.01


async def test_worker_default_time_limit(app: App) -> None:
    app.conf.update(task_time_limit=0.2)

    @app.task(name="l.default_limited")
    async def default_limited() -> None:
        await asyncio.sleep(30)

    async with app.worker():
        with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
            await (await default_limited.delay()).wait(timeout=10)


async def test_thread_task_soft_limit_interrupts_python_code(app: App) -> None:
    @app.task(name="l.spin", soft_time_limit=0.2, time_limit=10)
    def spin() -> str:
        try:
            while True:
                sum(range(1000))
        except SoftTimeLimitExceeded:
            return "interrupted"

    async with app.worker():
        assert await (await spin.delay()).wait(timeout=10) == "interrupted"


async def test_thread_task_hard_limit_fails_and_frees_the_slot(app: App) -> None:
    stop = threading.Event()

    @app.task(name="l.stuck", time_limit=0.2)
    def stuck() -> None:
        stop.wait(30)  # a blocking C call: cannot be interrupted, only abandoned

    @app.task(name="l.after")
    async def after() -> str:
        return "next"

    try:
        async with app.worker(concurrency=1):
            with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
                await (await stuck.delay()).wait(timeout=10)
            assert await (await after.delay()).wait(timeout=10) == "next"
    finally:
        stop.set()


async def test_thread_task_past_its_hard_limit_logs_no_asyncio_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the abandoned thread ends later with TimeLimitExceeded (raised into it at the hard
    # limit): its future's exception must be consumed, or asyncio reports "Future exception
    # was never retrieved" when the future is collected
    app = App("tl", broker=f"memory://tl{uuid.uuid4().hex[:8]}")
    ended = threading.Event()

    @app.task(name="l.spinning", time_limit=0.2)
    def spinning() -> None:
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # Python code: the raise reaches it
                sum(range(100))
        finally:
            ended.set()

    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    try:
        async with app, app.worker(concurrency=1):
            with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
                await (await spinning.delay()).wait(timeout=10)
            assert await asyncio.to_thread(ended.wait, 10)
            await asyncio.sleep(0)  # let the future's completion callbacks run
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert reported == []
    assert "never retrieved" not in caplog.text
