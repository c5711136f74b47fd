"""The canvas tests' apps (every broker) and tasks.

Workflows run on memory, SQLite, Redis, and RabbitMQ with its results in Redis (a shared
store: chords need one; ``amqp://``'s own ``rpc://`` results refuse canvases).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aqueue import App
from aqueue.core.message import ErrorInfo

from ..conftest import app_with_shared_results
from . import celery_tasks
from .celery_tasks import Recorder

WORKFLOW_BROKERS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq+redis", marks=[pytest.mark.rabbitmq, pytest.mark.redis]),
]


@pytest.fixture(params=WORKFLOW_BROKERS)
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    """An app on each broker; on RabbitMQ its results live in Redis."""
    async with app_with_shared_results(request, request.param, tmp_path) as the_app:
        yield the_app


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def c(app: App, rec: Recorder) -> Any:
    """Celery's integration-test tasks (``celery_tasks.py``)."""
    return celery_tasks.register(app, rec)


async def settle(app: App) -> None:
    """Run what is still queued (callbacks, errbacks) until nothing is left to claim.

    Call it after the test's worker stopped (a stopping worker finishes what it runs, and
    a task publishes what follows it before its message is acked).
    """
    await app.worker(burst=True, concurrency=20).run()


@dataclass
class Calls:
    log: list[tuple[str, Any]] = field(default_factory=list)
    errback_ran: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def t(app: App, calls: Calls) -> Any:
    @app.task(name="w.add")
    async def add(x: int, y: int) -> int:
        calls.log.append(("add", (x, y)))
        return x + y

    @app.task(name="w.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="w.div")
    async def div(x: int, y: int) -> int:
        return x // y

    @app.task(name="w.sub")
    async def sub(x: int, y: int) -> int:
        return x - y

    @app.task(name="w.tsum")
    async def tsum(numbers: list[int]) -> int:
        calls.log.append(("tsum", len(numbers)))
        return sum(numbers)

    @app.task(name="w.flat")
    async def flat(lists: list[list[int]]) -> list[int]:
        return [x for xs in lists for x in xs]

    @app.task(name="w.fail")
    async def fail(x: int) -> int:
        raise ValueError(f"bad {x}")

    @app.task(name="w.on_err")
    async def on_err(task_id: str, error: ErrorInfo) -> str:
        calls.log.append(("errback", (task_id, error.type, error.message)))
        calls.errback_ran.set()
        return task_id

    @app.task(name="w.record")
    async def record(value: Any) -> Any:
        calls.log.append(("record", value))
        return value

    @app.task(name="w.kw")
    async def kw(x: int, *, scale: int = 1) -> int:
        return x * scale

    class NS:
        pass

    ns = NS()
    for task in (add, mul, div, sub, tsum, flat, fail, on_err, record, kw):
        setattr(ns, task.name.split(".")[1], task)
    return ns
