"""The tasks of Celery's canvas integration tests (t/integration/tasks.py), written for aqueue.

Same names and values; Celery's tasks write to Redis to show they ran (``redis_echo``,
``redis_count``), these write to a :class:`Recorder` (the embedded worker runs in the test's
process, whatever the broker). ``add_to_all`` returns the list Celery's version replaces
itself with a group to compute (aqueue has no ``self.replace()``).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aqueue import App, ErrorInfo, Task


class ExpectedException(Exception):
    """Celery's sentinel exception for tests."""


@dataclass
class Recorder:
    """What the tasks did: echoed messages by key, counts by key."""

    echoes: defaultdict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter[str] = field(default_factory=Counter)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def echo(self, key: str, message: Any) -> None:
        self.echoes[key].append(message)
        self.changed.set()

    def count(self, key: str) -> None:
        self.counts[key] += 1
        self.changed.set()

    async def until(self, check: Any, timeout: float = 20) -> None:
        """Wait until ``check()`` holds, woken by each record (never a sleep)."""
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


def register(app: App, rec: Recorder) -> Any:
    """Register the tasks on ``app``; returns a namespace of them."""

    @app.task(name="c.identity")
    async def identity(x: Any) -> Any:
        return x

    @app.task(name="c.add")
    async def add(x: Any, y: Any, z: Any = None) -> Any:
        return x + y + z if z else x + y

    @app.task(name="c.tsum")
    async def tsum(nums: list[Any]) -> Any:
        return sum(nums)

    @app.task(name="c.xsum")
    async def xsum(nums: list[Any]) -> Any:
        return sum(sum(n) if isinstance(n, list) else n for n in nums)

    @app.task(name="c.add_to_all")
    async def add_to_all(nums: list[Any], val: Any) -> list[Any]:
        return [n + val for n in nums]

    @app.task(name="c.fail")
    async def fail(*args: Any) -> Any:
        raise ExpectedException("Task expected to fail", *args)

    @app.task(name="c.ids", bind=True)
    async def ids(self: Task[..., Any], i: int) -> Any:
        return self.request.root_id, self.request.parent_id, i

    @app.task(name="c.collect_ids", bind=True)
    async def collect_ids(self: Task[..., Any], res: Any, i: int) -> Any:
        return res, (self.request.root_id, self.request.parent_id, i)

    @app.task(name="c.return_priority", bind=True)
    async def return_priority(self: Task[..., Any], *_args: Any) -> str:
        return f"Priority: {self.request.priority}"

    @app.task(name="c.return_request_eta", bind=True)
    async def return_request_eta(self: Task[..., Any]) -> float | None:
        return self.request.eta

    @app.task(name="c.redis_echo")
    async def redis_echo(message: Any, redis_key: str = "redis-echo") -> Any:
        rec.echo(redis_key, message)
        return message

    @app.task(name="c.redis_count")
    async def redis_count(redis_key: str = "redis-count") -> None:
        rec.count(redis_key)

    @app.task(name="c.errback_old_style")
    async def errback_old_style(request_id: str) -> str:
        rec.count(request_id)
        return request_id

    @app.task(name="c.errback_new_style")
    async def errback_new_style(task_id: str, error: ErrorInfo) -> str:
        rec.count(task_id)
        return task_id

    @app.task(name="c.errback_old_style_with_args")
    async def errback_old_style_with_args(request_id: str, label: str) -> None:
        rec.echo(request_id, label)

    @app.task(name="c.errback_new_style_with_args")
    async def errback_new_style_with_args(task_id: str, error: ErrorInfo, label: str) -> None:
        rec.echo(task_id, label)

    class NS:
        pass

    ns = NS()
    for task in list(locals().values()):
        if isinstance(task, Task):
            setattr(ns, task.name.split(".", 1)[1], task)
    return ns
