"""``self.add_to_chord()``: Celery's tests of it, and what aqueue adds, on every broker.

The chord waits for what its members add, and its body gets the added values after the
header's, in the order they were added (Celery's tests sort them: its order is the
backend's). A chord's member count never changes: a member that added tasks joins once
they are done (aqueue/workflows/additions.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aqueue import App, Task, TaskFailed, chain, chord, group

from .test_celery_chain import expected

TIMEOUT = 30


async def test_add_to_chord(app: App, c: Any) -> None:
    """test_add_to_chord, test_add_chord_to_chord."""
    async with app.worker(concurrency=20):
        res = await (group([c.add_to_all_to_chord.s([1, 2, 3], 4)]) | c.identity.s())()
        assert await res.wait(TIMEOUT) == [0, 5, 6, 7]
        res = await (group([c.add_chord_to_chord.s([1, 2, 3], 4)]) | c.identity.s())()
        assert await res.wait(TIMEOUT) == [0, 5 + 6 + 7]


async def test_the_chord_waits_for_what_was_added(app: App, c: Any) -> None:
    """The body does not start before an added task ends, however fast the members are."""
    gate = asyncio.Event()

    @app.task(name="a.slow", bind=True)
    async def slow(self: Task[..., Any], x: int) -> int:
        await gate.wait()
        return x

    @app.task(name="a.adds_slow", bind=True)
    async def adds_slow(self: Task[..., Any], x: int) -> int:
        await self.add_to_chord(slow.s(x * 100))
        return x

    async with app.worker(concurrency=20):
        res = await chord([adds_slow.s(1), c.add.s(1, 1), adds_slow.s(3)], c.identity.s())()
        assert await res.parent.wait(TIMEOUT) == [1, 2, 3]  # every member finished
        assert await res.state() == "PENDING"  # but what they added has not
        gate.set()
        assert await res.wait(TIMEOUT) == [1, 2, 3, 100, 300]


async def test_the_chord_built_again_keeps_what_was_added(app: App, c: Any) -> None:
    """A chord is built again when the step before it is redelivered (same ids): that must
    not make it forget that members added tasks (its meta is marked as a later attempt)."""
    gate = asyncio.Event()

    @app.task(name="a.slow2")
    async def slow2(x: int) -> int:
        await gate.wait()
        return x

    @app.task(name="a.adds_slow2", bind=True)
    async def adds_slow2(self: Task[..., Any], x: int) -> int:
        await self.add_to_chord(slow2.s(x * 100))
        return x

    wf = chord([adds_slow2.s(1), c.add.s(1, 1)], c.identity.s())
    node = wf.freeze()
    async with app.worker(concurrency=20):
        res = await wf.delay()
        assert await res.parent.wait(TIMEOUT) == [1, 2]
        await app.workflows.build(node)  # type: ignore[attr-defined]  # the engine's own
        gate.set()
        assert await res.wait(TIMEOUT) == [1, 2, 100]


async def test_added_tasks_adding_more(app: App, c: Any) -> None:
    """What was added may add more; order: members' additions, then theirs."""

    @app.task(name="a.leaf")
    async def leaf(x: int) -> int:
        return x

    @app.task(name="a.adds_leaf", bind=True)
    async def adds_leaf(self: Task[..., Any], x: int) -> int:
        await self.add_to_chord(leaf.s(x + 1))
        return x

    @app.task(name="a.adds_two", bind=True)
    async def adds_two(self: Task[..., Any], x: int) -> int:
        await asyncio.gather(
            self.add_to_chord(adds_leaf.s(x + 10)), self.add_to_chord(leaf.s(x + 20))
        )
        return x

    async with app.worker(concurrency=20):
        res = await chord([adds_two.s(1), c.add.s(2, 0)], c.identity.s())()
        values = await res.wait(TIMEOUT)
    assert values[:2] == [1, 2] and sorted(values[2:4]) == [11, 21] and values[4:] == [12]


async def test_added_task_failing_fails_the_chord(app: App, c: Any) -> None:
    @app.task(name="a.adds_failing", bind=True)
    async def adds_failing(self: Task[..., Any]) -> int:
        await self.add_to_chord(c.fail.si())
        return 0

    async with app.worker(concurrency=20):
        res = await chord([adds_failing.s(), c.add.s(1, 1)], c.identity.s())()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
    expected(info)


async def test_add_to_chord_from_a_nested_chord_and_a_def_task(app: App, c: Any) -> None:
    """A ``def`` task adds (from its worker thread); a body of a chord inside a chord adds
    to the outer chord."""

    @app.task(name="a.sync_adds", bind=True)
    def sync_adds(self: Task[..., Any], x: int) -> int:
        self.add_to_chord(c.add.s(x, 1))
        return x

    @app.task(name="a.body_adds", bind=True)
    async def body_adds(self: Task[..., Any], values: list[int]) -> int:
        await self.add_to_chord(c.add.s(sum(values), 1000))
        return sum(values)

    async with app.worker(concurrency=20):
        res = await chord([sync_adds.s(5)], c.identity.s())()
        assert await res.wait(TIMEOUT) == [5, 6]
        inner = chord([c.add.s(1, 1), c.add.s(2, 2)], body_adds.s())
        res = await chord([inner, c.add.s(10, 10)], c.identity.s())()
        assert await res.wait(TIMEOUT) == [6, 20, 1006]


async def test_add_to_chord_outside_a_chord_member_is_refused(app: App, c: Any) -> None:
    """Celery's rule: only a chord member may add (not a lone task, not a chain step
    before the last step of a member)."""

    @app.task(name="a.adds", bind=True)
    async def adds(self: Task[..., Any], *args: Any) -> int:
        await self.add_to_chord(c.add.s(1, 1))
        return 0

    @app.task(name="a.adds_lazily", bind=True)
    async def adds_lazily(self: Task[..., Any]) -> int:
        await self.add_to_chord(c.add.s(1, 1), lazy=True)
        return 0

    async with app.worker(concurrency=20):
        with pytest.raises(TaskFailed, match="not a member of a chord"):
            await (await adds.delay()).wait(TIMEOUT)
        res = await chord([chain(adds.s(), c.identity.s())], c.identity.s())()
        with pytest.raises(TaskFailed, match="not a member of a chord"):
            await res.wait(TIMEOUT)
        res = await chord([adds_lazily.s()], c.identity.s())()
        with pytest.raises(TaskFailed, match=r"lazy=True\) is not supported"):
            await res.wait(TIMEOUT)
