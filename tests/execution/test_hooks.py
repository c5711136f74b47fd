"""Signals, middleware, task logging, lifespan, acks_late=False, progress from threads."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest

from aqueue import App, Task, TaskFailed, current_task, states
from aqueue.core.context import Request
from aqueue.core.errors import OptionError
from aqueue.core.logs import get_task_logger
from aqueue.core.message import MessageOut
from aqueue.core.middleware import ExecuteNext, Middleware, PublishNext
from aqueue.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_success,
    worker_ready,
    worker_shutdown,
)


async def test_signals_fire_in_order(app: App) -> None:
    events: list[str] = []

    @app.task(name="h.ok")
    async def ok() -> int:
        return 1

    @app.task(name="h.bad")
    async def bad() -> None:
        raise ValueError("x")

    receivers = {
        task_prerun: lambda sender, **kw: events.append(f"prerun:{sender.name}"),
        task_success: lambda sender, **kw: events.append(f"success:{kw['result']}"),
        task_failure: lambda sender, **kw: events.append(
            f"failure:{type(kw['exception']).__name__}"
        ),
        task_postrun: lambda sender, **kw: events.append(f"postrun:{kw['state']}"),
        worker_ready: lambda sender, **kw: events.append("ready"),
        worker_shutdown: lambda sender, **kw: events.append("shutdown"),
    }
    for sig, fn in receivers.items():
        sig.connect(fn)
    try:
        async with app.worker(concurrency=1):
            await (await ok.delay()).wait(timeout=10)
            with pytest.raises(TaskFailed):
                await (await bad.delay()).wait(timeout=10)
    finally:
        for sig, fn in receivers.items():
            sig.disconnect(fn)
    assert events == [
        "ready",
        "prerun:h.ok",
        "success:1",
        "postrun:SUCCESS",
        "prerun:h.bad",
        "failure:ValueError",
        "postrun:FAILURE",
        "shutdown",
    ]


async def test_middleware_wraps_publish_and_execute(app: App) -> None:
    seen: list[str] = []

    class Trace(Middleware):
        async def publish(self, message: MessageOut, call_next: PublishNext) -> None:
            seen.append("publish")
            await call_next(
                msgspec.structs.replace(message, headers={**message.headers, "trace": "t-1"})
            )

        async def execute(self, request: Request, call_next: ExecuteNext) -> Any:
            seen.append(f"before:{request.headers.get('trace')}")
            value = await call_next()
            seen.append(f"after:{value}")
            return value

    app.add_middleware(Trace())

    @app.task(name="h.traced", bind=True)
    async def traced(self: Task[[], str]) -> str:
        return self.request.headers["trace"]

    async with app.worker():
        assert await (await traced.delay()).wait(timeout=10) == "t-1"
    assert seen == ["publish", "before:t-1", "after:t-1"]


async def test_task_logger_records_carry_context(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    logger = get_task_logger("tests.tasklog")

    @app.task(name="h.logs")
    async def logs(n: int) -> None:
        logger.info("working on n")

    @app.task(name="h.logs_sync")
    def logs_sync() -> None:
        logger.info("sync work")

    with caplog.at_level(logging.INFO, logger="tests.tasklog"):
        async with app.worker():
            h = await logs.delay(1)
            await h.wait(timeout=10)
            hs = await logs_sync.delay()
            await hs.wait(timeout=10)
        logger.info("outside")
    records = [r for r in caplog.records if r.name == "tests.tasklog"]
    assert [(r.task_id, r.task_name, r.attempt, r.queue) for r in records] == [  # type: ignore[attr-defined]
        (h.id, "h.logs", 1, "celery"),
        (hs.id, "h.logs_sync", 1, "celery"),
        ("-", "-", 0, "-"),
    ]
    assert all("1" not in r.getMessage() for r in records[:1])  # arguments are not logged


async def test_lifespan_builds_shared_resources(app: App) -> None:
    order: list[str] = []

    @app.lifespan
    async def resources(a: App) -> Any:
        a.state.pool = {"conn": "ok"}
        order.append("startup")
        yield
        order.append("shutdown")

    @app.task(name="h.uses")
    async def uses() -> str:
        return str(app.state.pool["conn"])

    async with app.worker():
        assert await (await uses.delay()).wait(timeout=10) == "ok"
        assert order == ["startup"]
    assert order == ["startup", "shutdown"]


async def test_acks_early_is_at_most_once(app: App) -> None:
    @app.task(name="h.early", acks_late=False)
    async def early() -> str:
        return "ran"

    async with app.worker():
        assert await (await early.delay()).wait(timeout=10) == "ran"
    assert await app.broker.size("celery") == 0


async def test_update_state_from_a_thread_task(app: App) -> None:
    @app.task(name="h.sync_progress", bind=True)
    def sync_progress(self: Task[[int], int], n: int) -> int:
        for i in range(n):
            self.update_state("PROGRESS", meta={"i": i})
        return n

    async with app.worker():
        h = await sync_progress.delay(3)
        seen = [c async for c in h.events()]
    assert seen[-1].state == states.SUCCESS and seen[-1].info == 3


async def test_current_task(app: App) -> None:
    @app.task(name="h.who")
    async def who() -> str:
        t = current_task()
        assert t is not None
        await asyncio.sleep(0)  # still this task's context after a suspension
        return f"{t.name}:{t.request.id}"

    assert current_task() is None
    async with app.worker():
        h = await who.delay()
        assert await h.wait(timeout=10) == f"h.who:{h.id}"


async def test_internal_headers_are_not_shown_to_tasks(app: App) -> None:
    @app.task(name="h.headers", bind=True)
    async def headers(self: Task[[], dict[str, str]]) -> dict[str, str]:
        return self.request.headers

    class Internal(Middleware):  # aqueue's own headers cannot be given as call options
        async def publish(self, message: MessageOut, call_next: PublishNext) -> None:
            internal = {**message.headers, "x-aqueue-rate-slot": "1.0"}
            await call_next(msgspec.structs.replace(message, headers=internal))

    app.add_middleware(Internal())
    with pytest.raises(OptionError, match="reserved"):
        await headers.apply_async(headers={"x-aqueue-rate-slot": "1.0"})
    async with app.worker():
        h = await headers.apply_async(headers={"trace": "t"})
        assert await h.wait(timeout=10) == {"trace": "t"}
