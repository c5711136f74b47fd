"""docs/reliability.md rows 26 and 27: chords fire exactly once, and never hang."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from aqueue import App, TaskFailed
from aqueue.workflows import chain, chord, group

from ..workflows.conftest import Calls, settle

pytestmark = pytest.mark.faults


async def _claim_member(app: App, not_ids: set[str]) -> Any:
    """Take one header message away from the worker, as a worker about to die would."""
    got = await app.broker.claim(["celery"], limit=100, lease_seconds=30, owner="x", timeout=2)
    mine = next(d for d in got if d.id not in not_ids and not d.id.endswith(".deadline"))
    for d in got:
        if d is not mine:
            await d.release(executed=False)
    return mine


class LostAck:
    """A delivery whose ack never reaches the broker: its worker died right after the task."""

    def __init__(self, delivery: Any) -> None:
        self._d = delivery
        self.id, self.queue, self.body = delivery.id, delivery.queue, delivery.body
        self.delivery_count, self.lease = delivery.delivery_count, delivery.lease

    async def ack(self) -> bool:
        return True

    async def release(self, *, executed: bool) -> bool:
        return True

    async def requeue(self, body: bytes, *, eta: float | None) -> bool:
        return True

    async def dead_letter(self, reason: str) -> bool:
        return True


async def test_row26_header_task_executed_twice_fires_body_once(
    app: App, t: Any, calls: Calls
) -> None:
    n = 20
    res = await chord((t.add.s(i, i) for i in range(n)), t.tsum.s()).delay()
    member = await _claim_member(app, set())
    key = ("add", (_arg(member.body), _arg(member.body)))
    # a worker runs the member to the end (result stored, chord joined), then dies unacked
    dead = app.worker(queues=["nothing-here"])
    async with dead:
        await dead.executor.execute(LostAck(member))
    await member.release(executed=True)  # its message comes back, as after the lease expired
    async with app.worker(concurrency=10) as worker:
        assert await res.wait(timeout=20) == sum(2 * i for i in range(n))
        async with asyncio.timeout(10):  # the redelivered member has been handled
            while worker.executor.duplicates < 1:
                await asyncio.sleep(0.01)
    extra = calls.log.count(key) - 1
    fired = calls.log.count(("tsum", n))
    print(
        f"\nrow 26: header redelivered after it finished: re-executed {extra} time(s) "
        f"(recognised as done); body fired {fired} time(s)"
    )
    assert extra == 0 and fired == 1
    assert await res.wait(timeout=1) == sum(2 * i for i in range(n))


def _arg(body: bytes) -> int:
    from aqueue.core.message import decode_message
    from aqueue.core.serialization import decode, format_of

    msg = decode_message(body, 10**6)
    return int(decode(msg.args, list[int], format_of(body))[0])  # the member's x (== y)


async def test_row27_member_lost_for_good_fails_by_deadline(app: App, t: Any, calls: Calls) -> None:
    timeout = 1.5
    sent = time.monotonic()  # the deadline is set when the chord is built, before publishing
    res = await chord((t.add.s(i, 1) for i in range(5)), t.tsum.s(), timeout=timeout).delay()
    lost = await _claim_member(app, set())
    assert await lost.dead_letter("poison") is True  # gone, and nobody stored a result for it
    async with app.worker():
        with pytest.raises(TaskFailed) as info:
            await res.wait(timeout=30)
    waited = time.monotonic() - sent
    print(f"\nrow 27: chord failed {waited:.2f}s after it was applied (timeout {timeout}s)")
    assert info.value.exc_type == "ChordTimeout"
    assert waited >= timeout - 0.2
    assert not any(c[0] == "tsum" for c in calls.log)


# -- rows 26 and 27 in the shapes issue 13 added: nested chords, groups upgraded to chords
# -- inside chains, groups ending a chord member (their tasks join the outer chord)


async def _claim_where(app: App, check: Any) -> Any:
    """Take the first queued header message ``check(x)`` accepts (by its first argument)."""
    got = await app.broker.claim(["celery"], limit=100, lease_seconds=30, owner="x", timeout=2)
    mine = next(d for d in got if not d.id.endswith(".deadline") and check(_arg(d.body)))
    for d in got:
        if d is not mine:
            await d.release(executed=False)
    return mine


async def _run_twice(app: App, member: Any) -> None:
    """Run ``member`` to the end on a worker that dies before acking; it comes back."""
    dead = app.worker(queues=["nothing-here"])
    async with dead:
        await dead.executor.execute(LostAck(member))
    await member.release(executed=True)


async def test_row26_nested_chord_member_executed_twice_fires_each_body_once(
    app: App, t: Any, calls: Calls
) -> None:
    n = 10
    inner = chain(group(t.add.s(i, i) for i in range(1, n + 1)), t.tsum.s())
    res = await chord([inner, t.add.s(100, 100)], t.tsum.s()).delay()
    member = await _claim_where(app, lambda x: x < 100)  # a member of the inner chord
    await _run_twice(app, member)
    async with app.worker(concurrency=10) as worker:
        assert await res.wait(timeout=20) == n * (n + 1) + 200
        async with asyncio.timeout(10):  # the redelivered member has been handled
            while worker.executor.duplicates < 1:
                await asyncio.sleep(0.01)
    x = _arg(member.body)
    print(
        f"\nrow 26 (nested chord): member re-executed {calls.log.count(('add', (x, x))) - 1} "
        f"time(s); inner body fired {calls.log.count(('tsum', n))}, "
        f"outer body {calls.log.count(('tsum', 2))} time(s)"
    )
    assert calls.log.count(("add", (x, x))) == 1
    assert calls.log.count(("tsum", n)) == 1 and calls.log.count(("tsum", 2)) == 1


async def test_row26_step_before_an_upgraded_group_redelivered_fires_the_body_once(
    app: App, t: Any, calls: Calls
) -> None:
    n = 10
    res = await (t.add.s(1, 1) | group(t.add.s(i) for i in range(n)) | t.tsum.s()).delay()
    first = await _claim_where(app, lambda x: x == 1)
    await _run_twice(app, first)  # it published the chord, then its worker died unacked
    async with app.worker(concurrency=10) as worker:
        assert await res.wait(timeout=20) == sum(2 + i for i in range(n))
        async with asyncio.timeout(10):
            while worker.executor.duplicates < 1:
                await asyncio.sleep(0.01)
    assert calls.log.count(("add", (1, 1))) == 1
    assert calls.log.count(("tsum", n)) == 1
    assert sorted(c for c in calls.log if c[0] == "add") == sorted(
        [("add", (1, 1))] + [("add", (2, i)) for i in range(n)]
    )  # every member once


async def test_row27_nested_chord_member_lost_fails_the_outer_chord(
    app: App, t: Any, calls: Calls
) -> None:
    timeout = 1.5
    inner = chord((t.add.s(i, 1) for i in range(3)), t.tsum.s(), timeout=timeout)
    res = await chord([inner, t.add.s(100, 100)], t.tsum.s()).delay()
    lost = await _claim_where(app, lambda x: x < 100)
    assert await lost.dead_letter("poison") is True
    async with app.worker():
        with pytest.raises(TaskFailed) as info:
            await res.wait(timeout=30)  # the outer chord's own deadline is a day away
    assert info.value.exc_type == "ChordTimeout"
    assert not any(c[0] == "tsum" for c in calls.log)


async def test_row27_task_of_a_group_ending_a_member_lost_fails_by_the_deadline(
    app: App, t: Any, calls: Calls
) -> None:
    timeout = 1.5
    member = chain(t.add.s(1, 1), group(t.add.s(10), t.add.s(20)))
    res = await chord([member, t.add.s(100, 100)], t.tsum.s(), timeout=timeout).delay()
    first = await _claim_where(app, lambda x: x == 1)
    runner = app.worker(queues=["nothing-here"])
    async with runner:
        await runner.executor.execute(first)  # publishes the group's tasks, which join the chord
    lost = await _claim_where(app, lambda x: x == 2)
    assert await lost.dead_letter("poison") is True
    async with app.worker():
        with pytest.raises(TaskFailed) as info:
            await res.wait(timeout=30)
    assert info.value.exc_type == "ChordTimeout"
    assert not any(c[0] == "tsum" for c in calls.log)


# -- row 26 with self.replace(): a replaced header member and its replacement, each run to the
# -- end by a worker that died before acking, fire the body once and run the replacement once


def _task_of(body: bytes) -> str:
    from aqueue.core.message import decode_message

    return decode_message(body, 10**6).task


async def _claim_task(app: App, name: str) -> Any:
    """Take the first queued message of task ``name`` away from the workers."""
    got = await app.broker.claim(
        [app.conf.task_default_queue], limit=100, lease_seconds=30, owner="x", timeout=2
    )
    mine = next(d for d in got if not d.id.endswith(".deadline") and _task_of(d.body) == name)
    for d in got:
        if d is not mine:
            await d.release(executed=False)
    return mine


def _replacing(app: App, t: Any, calls: Calls) -> Any:
    @app.task(name="w.add_replaced", bind=True)
    async def add_replaced(self: Any, x: int, y: int) -> int:
        calls.log.append(("add_replaced", (x, y)))
        await self.replace(t.add.s(x, y))
        raise AssertionError("replace() returned")

    return add_replaced


async def test_row26_replacement_of_a_header_member_executed_twice_fires_body_once(
    app: App, t: Any, calls: Calls
) -> None:
    add_replaced = _replacing(app, t, calls)
    n = 10
    res = await chord(
        [add_replaced.s(1000, 1000), *(t.add.s(i, i) for i in range(n))], t.tsum.s()
    ).delay()
    replaced = await _claim_task(app, "w.add_replaced")
    runner = app.worker(queues=["nothing-here"])
    async with runner:
        await runner.executor.execute(replaced)  # replaced: its replacement is queued
    replacement = await _claim_where(app, lambda x: x == 1000)
    await _run_twice(app, replacement)  # the replacement ran to the end; its worker died
    async with app.worker(concurrency=10) as worker:
        assert await res.wait(timeout=20) == 2000 + sum(2 * i for i in range(n))
        async with asyncio.timeout(10):  # the redelivered replacement has been handled
            while worker.executor.duplicates < 1:
                await asyncio.sleep(0.01)
    assert await add_replaced.AsyncResult(replaced.id).wait(timeout=1) == 2000
    ran, fired = calls.log.count(("add", (1000, 1000))), calls.log.count(("tsum", n + 1))
    print(f"\nrow 26 (replaced member): replacement ran {ran} time(s); body fired {fired}")
    assert ran == 1 and fired == 1


async def test_row26_replaced_header_member_redelivered_replaces_once(
    app: App, t: Any, calls: Calls
) -> None:
    add_replaced = _replacing(app, t, calls)
    n = 10
    res = await chord(
        [add_replaced.s(1000, 1000), *(t.add.s(i, i) for i in range(n))], t.tsum.s()
    ).delay()
    replaced = await _claim_task(app, "w.add_replaced")
    await _run_twice(app, replaced)  # it replaced itself, then its worker died unacked
    async with app.worker(concurrency=10):
        assert await res.wait(timeout=20) == 2000 + sum(2 * i for i in range(n))
    await settle(app)  # whatever is still queued has run
    replacing = calls.log.count(("add_replaced", (1000, 1000)))
    ran, fired = calls.log.count(("add", (1000, 1000))), calls.log.count(("tsum", n + 1))
    print(
        f"\nrow 26 (member redelivered after replacing itself): it ran {replacing} times, "
        f"its replacement {ran} time(s); body fired {fired}"
    )
    assert replacing == 2  # it had no result: run again (attempt 2), as any task would be
    assert ran == 1 and fired == 1  # the same replacement (derived ids): once


async def test_row26_member_that_added_to_its_chord_redelivered_adds_once(
    app: App, t: Any, calls: Calls
) -> None:
    """self.add_to_chord(): a member that added a task, run to the end by a worker that
    died unacked, comes back: recognised as done, it joins again (idempotent) once what it
    added is done; the added task runs once, the body once."""

    @app.task(name="w.adds", bind=True)
    async def adds(self: Any, x: int) -> int:
        calls.log.append(("adds", x))
        await self.add_to_chord(t.add.s(x, x))
        return x

    res = await chord([adds.s(500), *(t.add.s(i, i) for i in range(3))], t.tsum.s()).delay()
    member = await _claim_task(app, "w.adds")
    await _run_twice(app, member)
    async with app.worker(concurrency=10):
        assert await res.wait(timeout=20) == 500 + 6 + 1000
    await settle(app)
    assert calls.log.count(("adds", 500)) == 1
    assert calls.log.count(("add", (500, 500))) == 1 and calls.log.count(("tsum", 5)) == 1
