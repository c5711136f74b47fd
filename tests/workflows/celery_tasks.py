"""The tasks of Celery's canvas integration tests (t/integration/tasks.py), written for aqueue.

Same names and values; Celery's tasks write to Redis to show they ran (``redis_echo``,
``redis_count``), these write to a :class:`Recorder` (the embedded worker runs in the test's
process, whatever the broker). ``add_to_all`` returns the list Celery's version replaces
itself with a group to compute; ``add_to_all_replaced`` is Celery's version.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aqueue import App, ErrorInfo, Task, chain, group


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

    @app.task(name="c.raise_error")
    async def raise_error(*args: Any) -> Any:
        raise ValueError("deliberate error")

    # -- self.replace() (t/integration/tasks.py) ---------------------------------------

    @app.task(name="c.add_replaced", bind=True)
    async def add_replaced(self: Task[..., Any], x: Any, y: Any) -> Any:
        await self.replace(add.s(x, y))

    @app.task(name="c.add_replaced_with_chain", bind=True)
    async def add_replaced_with_chain(self: Task[..., Any], x: Any, y: Any) -> Any:
        await self.replace(chain(add.s(x, y), identity.s()))

    @app.task(name="c.replace_with_chain", bind=True)
    async def replace_with_chain(self: Task[..., Any], *args: Any, link_msg: Any = None) -> Any:
        c = chain(identity.s(*args), identity.s())
        c.link(redis_echo.si(link_msg) if link_msg is not None else redis_echo.s())
        await self.replace(c)

    @app.task(name="c.replace_with_chain_which_raises", bind=True)
    async def replace_with_chain_which_raises(
        self: Task[..., Any], *args: Any, link_msg: Any = None
    ) -> Any:
        c = chain(identity.s(*args), raise_error.s())
        c.link_error(redis_echo.si(link_msg) if link_msg is not None else redis_echo.s())
        await self.replace(c)

    @app.task(name="c.replace_with_empty_chain", bind=True)
    async def replace_with_empty_chain(self: Task[..., Any], *_: Any) -> Any:
        await self.replace(chain())

    @app.task(name="c.replace_with_chain_which_contains_a_group", bind=True)
    async def replace_with_chain_which_contains_a_group(self: Task[..., Any]) -> Any:
        await self.replace(chain(add.s(1, 2), group(add.s(1), add.s(1))))

    @app.task(name="c.add_to_all_replaced", bind=True)
    async def add_to_all_replaced(self: Task[..., Any], nums: list[Any], val: Any) -> Any:
        await self.replace(group(*(add.s(num, val) for num in nums)))

    @app.task(name="c.fail_replaced", bind=True)
    async def fail_replaced(self: Task[..., Any], *args: Any) -> Any:
        await self.replace(fail.si(*args))

    @app.task(name="c.second_order_replace1", bind=True)
    async def second_order_replace1(self: Task[..., Any], state: bool = False) -> Any:
        if not state:
            rec.echo("redis-echo", "In A")
            await self.replace(chain(second_order_replace2.s(), second_order_replace1.si(True)))
        rec.echo("redis-echo", "Out A")

    @app.task(name="c.second_order_replace2", bind=True)
    async def second_order_replace2(self: Task[..., Any], state: bool = False) -> Any:
        if not state:
            rec.echo("redis-echo", "In B")
            await self.replace(chain(redis_echo.s("In/Out C"), second_order_replace2.si(True)))
        rec.echo("redis-echo", "Out B")

    # -- self.add_to_chord() -------------------------------------------------------------

    @app.task(name="c.add_to_all_to_chord", bind=True)
    async def add_to_all_to_chord(self: Task[..., Any], nums: list[Any], val: Any = 0) -> int:
        for num in nums:
            await self.add_to_chord(add.s(num, val))
        return 0

    @app.task(name="c.add_chord_to_chord", bind=True)
    async def add_chord_to_chord(self: Task[..., Any], nums: list[Any], val: Any = 0) -> int:
        await self.add_to_chord(group(add.s(num, val) for num in nums) | tsum.s())
        return 0

    class NS:
        pass

    ns = NS()
    for task in list(locals().values()):
        if isinstance(task, Task):
            setattr(ns, task.name.split(".", 1)[1], task)
    return ns
