"""Tasks sent from inside a task are its children (Celery's ``trail``), on every broker.

``result.children`` lists them once a read saw the task finished; ``collect()`` follows
them depth first. A task that sends nothing stores nothing extra.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from aqueue import App, AsyncResult, AsyncUsageError, GroupResult, Task, chain, group

TIMEOUT = 30


async def test_every_way_of_sending_records_a_child(app: App, c: Any) -> None:
    @app.task(name="t.sender", bind=True)
    async def sender(self: Task[[], int]) -> int:
        await c.add.delay(1, 1)
        await c.add.apply_async((2, 2), countdown=0)
        await app.send_task("c.add", args=(3, 3))
        await c.add.delay_many([(4, 4), (5, 5)])
        await app.send_many([c.add.s(6, 6)])
        await c.add.s(7, 7).delay()
        await chain(c.add.s(8, 8), c.add.s(1)).delay()
        await group(c.add.s(9, 9), c.add.s(10, 10)).delay()
        return 0

    async with app.worker(concurrency=20):
        res = await sender.delay()
        assert await res.wait(TIMEOUT) == 0
        children = res.children
        assert [type(ch) for ch in children] == [AsyncResult] * 7 + [AsyncResult, GroupResult]
        values = [await ch.wait(TIMEOUT) for ch in children]
    assert values == [2, 4, 6, 8, 10, 12, 14, 17, [18, 20]]
    chained = children[7]
    assert isinstance(chained, AsyncResult) and chained.parent is not None  # its spine too
    assert await chained.parent.wait(TIMEOUT) == 16


async def test_collect_follows_children_depth_first(app: App, c: Any) -> None:
    """Celery's collect(): a task, what it sent, what that sent, with each value."""

    @app.task(name="t.leaf")
    async def leaf(x: int) -> int:
        return x

    @app.task(name="t.middle", bind=True)
    async def middle(self: Task[[int], int], x: int) -> int:
        await leaf.delay(x + 1)
        return x

    @app.task(name="t.top", bind=True)
    async def top(self: Task[[], int]) -> int:
        await middle.delay(10)
        await leaf.delay(20)
        return 0

    async with app.worker(concurrency=20):
        res = await top.delay()
        collected = [(r.id, v) async for r, v in res.collect(timeout=TIMEOUT)]
    assert [v for _, v in collected] == [0, 10, 11, 20]
    assert collected[0][0] == res.id


async def test_children_before_a_read_and_of_a_task_that_sent_nothing(app: App, c: Any) -> None:
    h = app.AsyncResult(str(uuid.uuid4()))
    with pytest.raises(AsyncUsageError, match=r"await result\.wait"):
        h.children
    async with app.worker(concurrency=20):
        res = await c.add.delay(1, 1)
        assert await res.wait(TIMEOUT) == 2
    assert res.children == []
    backend = await app.result_backend()
    raw = await backend.get(res.id)
    assert raw is not None and b"children" not in raw  # nothing stored for it


async def test_trail_false_records_nothing(app: App, c: Any) -> None:
    """Celery's ``trail=False``: the task's record does not list what it sent."""

    @app.task(name="t.quiet", trail=False)
    async def quiet() -> int:
        await c.add.delay(1, 1)
        return 0

    async with app.worker(concurrency=20):
        res = await quiet.delay()
        assert await res.wait(TIMEOUT) == 0
    assert res.children == []
