"""``self.replace()``: Celery's canvas integration tests of it, spelled the async way.

Each test names the Celery tests (``t/integration/test_canvas.py``) whose shapes, values,
callbacks and errors it checks, on every broker; the replacing tasks are Celery's
(``celery_tasks.py``). A replaced task's result is its replacement's; what followed it
(the rest of its chain, its chord, its callbacks) follows the replacement.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aqueue import App, AsyncResult, Task, TaskFailed, TaskRevoked, chain, chord, group

from .celery_tasks import Recorder
from .conftest import settle
from .test_celery_chain import expected

TIMEOUT = 30


async def test_task_replaced(app: App, c: Any) -> None:
    """test_task_replaced_with_chain, test_replace_with_chain_that_contains_a_group,
    add_replaced: the task's own result handle gets the replacement's value."""
    async with app.worker(concurrency=20):
        res = await c.add_replaced.delay(42, 1337)
        assert await res.wait(TIMEOUT) == 42 + 1337
        assert await (await c.replace_with_chain.si(42).delay()).wait(TIMEOUT) == 42
        res = await c.replace_with_chain_which_contains_a_group.delay()
        assert await res.wait(TIMEOUT) == [4, 4]  # replaced by a chain ending in a group
        res = await c.add_to_all_replaced.delay([1, 2, 3], 10)
        assert await res.wait(TIMEOUT) == [11, 12, 13]  # replaced by a group: the list
        assert await res.state() == "SUCCESS" and res.name == "c.add_to_all_replaced"
        res = await c.add_to_all_replaced.delay([], 10)
        assert await res.wait(TIMEOUT) == []  # an empty group


async def test_replaced_by_a_chord(app: App, c: Any) -> None:
    """A task replaced by a chord: the chord's body value is the task's, in a chain too."""

    @app.task(name="r.by_chord", bind=True)
    async def by_chord(self: Task[..., Any], n: int) -> Any:
        await self.replace(chord((c.add.s(i, i) for i in range(n)), c.tsum.s()))

    async with app.worker(concurrency=20):
        assert await (await by_chord.delay(4)).wait(TIMEOUT) == 12
        res = await (c.add.s(1, 1) | by_chord.si(3) | c.add.s(100))()
        assert await res.wait(TIMEOUT) == 106


async def test_chain_step_replaced(app: App, c: Any) -> None:
    """test_chain_child_replaced_with_chain_first, _middle, _last, test_complex_chain."""
    async with app.worker(concurrency=20):
        res = await chain(c.replace_with_chain.si(42), c.identity.s())()
        assert await res.wait(TIMEOUT) == 42
        res = await chain(c.identity.s(42), c.replace_with_chain.s(), c.identity.s())()
        assert await res.wait(TIMEOUT) == 42
        assert await res.parent.wait(TIMEOUT) == 42  # the replaced step's own result
        res = await chain(c.identity.s(42), c.replace_with_chain.s())()
        assert await res.wait(TIMEOUT) == 42
        # the replacement's value flows on; a group after it is a chord over it
        res = await (c.add_to_all_replaced.s([1, 2], 1) | c.tsum.s() | c.add.s(100))()
        assert await res.wait(TIMEOUT) == 105


async def test_second_order_replace(app: App, c: Any, rec: Recorder) -> None:
    """test_second_order_replace: a replacement that replaces itself, in order."""
    async with app.worker(concurrency=20):
        await (await c.second_order_replace1.delay()).wait(TIMEOUT)
    assert rec.echoes["redis-echo"] == ["In A", "In B", "In/Out C", "Out B", "Out A"]


async def test_replace_with_empty_chain(app: App, c: Any) -> None:
    """test_replace_chain_with_empty_chain: the task fails, naming the reason."""
    async with app.worker(concurrency=20):
        res = await chain(c.identity.s(1), c.replace_with_empty_chain.s())()
        with pytest.raises(TaskFailed, match="cannot replace a task with an empty chain"):
            await res.wait(TIMEOUT)


async def test_chain_replaced_with_callbacks(app: App, c: Any, rec: Recorder) -> None:
    """test_chain_replaced_with_a_chain_and_a_callback, _and_an_error_callback,
    test_chain_with_cb_replaced_with_chain_with_cb, test_chain_with_eb_replaced_with_chain_with_eb,
    test_task_with_callback_replaced_with_chain."""
    async with app.worker(concurrency=20):
        res = await chain(
            c.identity.s("Hello "), c.replace_with_chain.s(link_msg="inner cb"), c.add.s("world")
        ).delay()
        assert await res.wait(TIMEOUT) == "Hello world"
        with_cb = chain(
            c.identity.s("Hello "), c.replace_with_chain.s(link_msg="inner cb 2"), c.add.s("world")
        )
        with_cb.link(c.redis_echo.s())
        assert await (await with_cb.delay()).wait(TIMEOUT) == "Hello world"
        res = await chain(
            c.identity.s("Hello "),
            c.replace_with_chain_which_raises.s(link_msg="inner eb"),
            c.add.s(" will never be seen :("),
        ).delay()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
        assert info.value.exc_type == "ValueError"  # the replacement's error, not a hang
        with_eb = chain(
            c.identity.s("Hello "),
            c.replace_with_chain_which_raises.s(link_msg="inner eb 2"),
            c.add.s("world"),
        )
        with_eb.link_error(c.redis_echo.si("outer eb"))
        with pytest.raises(TaskFailed):
            await (await with_eb.delay()).wait(TIMEOUT)
        replaced = c.add_replaced_with_chain.si(42, 1337)
        replaced.link(c.redis_count.si("task-cb"))
        assert await (await replaced.delay()).wait(TIMEOUT) == 42 + 1337
    await settle(app)
    echoes = rec.echoes["redis-echo"]
    assert sorted(echoes) == sorted(
        ["inner cb", "inner cb 2", "Hello world", "inner eb", "inner eb 2", "outer eb"]
    )
    assert rec.counts["task-cb"] == 1  # once, after the replacement finished


async def test_group_member_replaced(app: App, c: Any, rec: Recorder) -> None:
    """test_group_child_replaced_with_chain_first, _middle, _last,
    test_group_child_with_callback_replaced_with_chain."""
    child = c.add_replaced_with_chain.si(42, 1337)
    child.link(c.redis_count.si("child-cb"))
    async with app.worker(concurrency=20):
        res = await group(c.replace_with_chain.si(42), c.identity.s(1337))()
        assert await res.wait(TIMEOUT) == [42, 1337]
        res = await group(c.identity.s(42), c.replace_with_chain.s(1337), c.identity.s(31337))()
        assert await res.wait(TIMEOUT) == [42, 1337, 31337]
        res = await group(c.identity.s(42), c.replace_with_chain.s(1337))()
        assert await res.wait(TIMEOUT) == [42, 1337]
        res = await group(child, c.identity.si(31337))()
        assert await res.wait(TIMEOUT) == [42 + 1337, 31337]
    await settle(app)
    assert rec.counts["child-cb"] == 1


async def test_chord_header_member_replaced(app: App, c: Any) -> None:
    """test_chord_header_task_replaced_with_chain, test_chord_header_child_replaced_with_chain
    _first, _middle, _last: the chord waits for the replacement."""
    async with app.worker(concurrency=20):
        res = await chord(c.replace_with_chain.si(42), c.identity.s()).delay()
        assert await res.wait(TIMEOUT) == [42]
        res = await chord((c.replace_with_chain.si(42), c.identity.s(1337)), c.identity.s())()
        assert await res.wait(TIMEOUT) == [42, 1337]
        res = await chord(
            (c.identity.s(42), c.replace_with_chain.s(1337), c.identity.s(31337)), c.identity.s()
        )()
        assert await res.wait(TIMEOUT) == [42, 1337, 31337]
        res = await chord((c.identity.s(42), c.replace_with_chain.s(1337)), c.identity.s())()
        assert await res.wait(TIMEOUT) == [42, 1337]
        # replaced by a group inside a header: its list is the member's value
        res = await chord([c.add_to_all_replaced.s([1, 2], 1), c.add.s(1, 1)], c.identity.s())()
        assert await res.wait(TIMEOUT) == [[2, 3], 2]
        # a member whose replacement fails fails the chord with that error
        res = await chord([c.fail_replaced.si(), c.add.s(1, 1)], c.identity.s())()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
        expected(info)


async def test_chord_body_replaced(app: App, c: Any) -> None:
    """test_chord_body_task_replaced_with_chain, test_chord_body_chain_child_replaced_with_chain
    _first, _middle, _last."""
    async with app.worker(concurrency=20):
        res = await chord(c.identity.s(42), c.replace_with_chain.s()).delay()
        assert await res.wait(TIMEOUT) == [42]
        for body in (
            chain(c.replace_with_chain.s(), c.identity.s()),
            chain(c.identity.s(), c.replace_with_chain.s(), c.identity.s()),
            chain(c.identity.s(), c.replace_with_chain.s()),
        ):
            res = await chord(c.identity.s(42), body).delay()
            assert await res.wait(TIMEOUT) == [42]


async def test_replaced_ids_and_errbacks(app: App, c: Any, rec: Recorder) -> None:
    """The replacement is the replaced task's child, in its workflow; a replaced task whose
    replacement fails has its errbacks called once, with its own id."""

    @app.task(name="r.replaced_by_ids", bind=True)
    async def replaced_by_ids(self: Task[..., Any]) -> Any:
        await self.replace(c.ids.si(7))

    errback = c.errback_new_style.s()
    async with app.worker(concurrency=20):
        res = await chain(c.identity.si(0), replaced_by_ids.si())()
        root_id, parent_id, i = await res.wait(TIMEOUT)
        assert (root_id, parent_id, i) == (res.parent.id, res.id, 7)
        failing = c.fail_replaced.si()
        failing.link_error(errback)
        res = await failing.delay()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
        expected(info)
    await settle(app)
    assert rec.counts[res.id] == 1  # the replaced task's errback, given its id


async def test_def_task_replaced(app: App, c: Any) -> None:
    """A ``def`` task (run in a worker thread) replaces itself the same way."""

    @app.task(name="r.sync_replaced", bind=True)
    def sync_replaced(self: Task[..., Any], x: int) -> int:
        return self.replace(c.add.s(x, 1))

    async with app.worker(concurrency=20):
        res = await (sync_replaced.s(1) | c.add.s(10))()
        assert await res.wait(TIMEOUT) == 12


async def test_replace_outside_a_worker_is_refused(app: App, c: Any) -> None:
    @app.task(name="r.direct", bind=True)
    async def direct(self: Task[..., Any]) -> Any:
        await self.replace(c.add.s(1, 1))

    with pytest.raises(RuntimeError, match="inside a task run by a worker"):
        await direct()


async def test_replaced_result_reads(app: App, c: Any) -> None:
    """A waiter that started before the replacement sees the final value (no hang)."""
    async with app.worker(concurrency=20):
        res = await c.add_replaced_with_chain.delay(1, 2)
        handle: AsyncResult[Any] = app.AsyncResult(res.id)
        assert await handle.wait(TIMEOUT) == 3 and handle.status == "SUCCESS"


async def test_revoking_a_workflow_whose_task_was_replaced(app: App, c: Any, rec: Recorder) -> None:
    """The replacement's tasks run on; the replaced task stays REVOKED, what followed it
    never runs, and nobody waits forever (docs/workflows.md, "Not covered")."""
    started, gate = asyncio.Event(), asyncio.Event()

    @app.task(name="r.gated")
    async def gated(x: int) -> int:
        started.set()
        await gate.wait()
        return x

    @app.task(name="r.replaced_by_gated", bind=True)
    async def replaced_by_gated(self: Task[..., Any], x: int) -> Any:
        await self.replace(gated.s(x))

    async with app.worker(concurrency=20):
        wf = await (c.identity.s(1) | replaced_by_gated.s() | c.redis_count.si("after")).delay()
        await started.wait()  # the task replaced itself; its replacement is running
        await wf.revoke()
        gate.set()
        replaced = wf.parent
        assert replaced is not None
        with pytest.raises(TaskRevoked):
            await replaced.wait(TIMEOUT)
        with pytest.raises(TaskRevoked):
            await wf.wait(TIMEOUT)
    await settle(app)
    assert rec.counts["after"] == 0
