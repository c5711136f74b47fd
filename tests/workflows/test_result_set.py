"""``ResultSet``: Celery's set of results read together, on every broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aqueue import App, AsyncUsageError, ResultSet, Task, TaskFailed, TaskRevoked, group

TIMEOUT = 30


async def test_membership(app: App, c: Any) -> None:
    """add / remove / discard / update / clear, as Celery's ResultSet (t/unit result tests)."""
    a, b, d = (app.AsyncResult(i) for i in ("a", "b", "d"))
    rs: ResultSet[Any] = ResultSet([a, b])
    rs.add(a)  # already a member
    assert rs.results == [a, b] and len(rs) == 2 and a in rs and list(rs) == [a, b]
    rs.update([b, d])
    assert [r.id for r in rs] == ["a", "b", "d"] and rs[2] is d
    rs.remove("b")  # by id, as Celery allows
    with pytest.raises(KeyError):
        rs.remove(b)
    rs.discard(b)  # not a member: nothing happens
    rs.discard(d)
    assert rs.results == [a] and rs == ResultSet([app.AsyncResult("a")])
    rs.clear()
    assert len(rs) == 0 and rs.supports_native_join
    assert await rs.wait() == [] and await rs.ready() and await rs.completed_count() == 0


async def test_reads_and_join(app: App, c: Any) -> None:
    async with app.worker(concurrency=20):
        handles = [await c.add.delay(i, i) for i in range(5)]
        rs = ResultSet(handles)
        assert await rs.join(TIMEOUT) == [0, 2, 4, 6, 8]
        assert await rs.join_native(TIMEOUT) == await rs.get(TIMEOUT)
        assert await rs.completed_count() == 5
        assert await rs.ready() and await rs.successful()
        assert not await rs.failed() and not await rs.waiting()
        rs.add(await c.fail.delay())
        rs.add(await group(c.add.s(1, 1), c.add.s(2, 2)).delay())  # a group is one member
        values = await rs.wait(TIMEOUT, propagate=False)
        assert values[:5] == [0, 2, 4, 6, 8] and values[6] == [2, 4]
        assert isinstance(values[5], TaskFailed) and values[5].exc_type == "ExpectedException"
        with pytest.raises(TaskFailed):
            await rs.wait(TIMEOUT)
        with pytest.raises(TaskFailed):
            await rs.maybe_throw()
        assert await rs.failed() and not await rs.successful()
        assert await rs.completed_count() == 6  # the group counts once, as one member
    with pytest.raises(AsyncUsageError, match=r"await result_set.ready\(\)"):
        if rs.ready:
            pass


async def test_as_completed_yields_in_completion_order(app: App, c: Any) -> None:
    gates = [asyncio.Event() for _ in range(3)]

    @app.task(name="rs.gated")
    async def gated(i: int) -> int:
        await gates[i].wait()
        return i

    async with app.worker(concurrency=20):
        rs = ResultSet([await gated.delay(i) for i in range(3)])
        seen: list[int] = []
        order = [2, 0, 1]
        gates[order[0]].set()
        async for result, value in rs.as_completed(timeout=TIMEOUT):
            assert result.id == rs[value].id
            seen.append(value)
            if len(seen) < 3:
                gates[order[len(seen)]].set()
    assert seen == order


async def test_as_completed_stops_on_timeout_and_on_failure(app: App, c: Any) -> None:
    never = asyncio.Event()

    @app.task(name="rs.stuck")
    async def stuck() -> None:
        await never.wait()

    async with app.worker(concurrency=20):
        rs = ResultSet([await c.add.delay(1, 1), await stuck.delay()])
        got = []
        with pytest.raises(TimeoutError):
            async for _, value in rs.as_completed(timeout=1):
                got.append(value)
        assert got == [2]
        failing = ResultSet([await c.fail.delay()])
        with pytest.raises(TaskFailed):
            async for _ in failing.as_completed(timeout=TIMEOUT):
                pass
        never.set()


async def test_revoke(app: App, c: Any) -> None:
    @app.task(name="rs.noop", bind=True)
    async def noop(self: Task[[], None]) -> None:
        return None

    rs = ResultSet([await noop.apply_async(countdown=60) for _ in range(3)])
    await rs.revoke()
    async with app.worker(concurrency=20):
        with pytest.raises(TaskRevoked):
            await rs.wait(TIMEOUT)
    assert await rs.ready() and await rs.completed_count() == 0
