"""Checked by `mypy --strict` (see pyproject's [tool.mypy] files), never run.

Each `type: ignore[code]` pins an error that must happen: with warn_unused_ignores, mypy
fails if the error goes away. `assert_type` pins inferred types.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, assert_type

from aqueue import (
    App,
    AsyncResult,
    Chain,
    Chord,
    Group,
    GroupResult,
    ResultSet,
    Signature,
    Task,
    TaskCall,
    chain,
    chord,
    group,
)

app = App("typing", broker="memory://typing")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="custom", queue="hi", ignore_result=False)
async def stamp(at: dt.datetime) -> dt.datetime:
    return at


@app.task(bind=True)
async def fetch(self: Task[[str], str], url: str) -> str:
    assert_type(self.request.attempt, int)
    return url


async def calls() -> None:
    typed_add: Task[[int, int], int] = add
    typed_mul: Task[[int, int], int] = mul
    del typed_add, typed_mul

    h = await add.delay(2, 2)
    assert_type(h, AsyncResult[int])
    assert_type(await h.wait(timeout=10), int)
    assert_type(await h.get(), int)
    assert_type(await (await mul.delay(2, 3)).wait(), int)
    assert_type(await (await stamp.delay(dt.datetime.now())).wait(), dt.datetime)
    assert_type(await (await fetch.delay("https://example.org")).wait(), str)

    bound: TaskCall[[int, int], int] = add.options(countdown=10, queue="hi")
    del bound
    assert_type(await add.options(countdown=10).delay(1, y=2), AsyncResult[int])
    assert_type(await add.apply_async((2, 2), countdown=10, priority=5), AsyncResult[int])
    routed = await add.apply_async((2, 2), queue="q", exchange="tasks", routing_key="feed.x")
    assert_type(routed, AsyncResult[int])
    assert_type(routed.queue, str | None)
    await add.apply_async((2, 2), exchange=5)  # type: ignore[arg-type]
    assert_type(await app.send_task("proj.tasks.add", args=(2, 5)), AsyncResult[Any])
    assert_type(app.AsyncResult("id"), AsyncResult[Any])
    assert_type(add.AsyncResult("id"), AsyncResult[int])
    assert_type(await h.state(), str)
    assert_type(await h.ready(), bool)


async def bulk() -> None:
    assert_type(await add.delay_many([(1, 2), (3, 4)]), list[AsyncResult[int]])
    assert_type(await mul.delay_many((i, i) for i in range(3)), list[AsyncResult[int]])
    assert_type(
        await stamp.apply_many([(dt.datetime.now(),)], queue="hi"), list[AsyncResult[dt.datetime]]
    )
    assert_type(await add.options(priority=5).delay_many([(1, 2)]), list[AsyncResult[int]])
    assert_type(
        await app.send_many([add.s(1, 2), stamp.s(dt.datetime.now())]), list[AsyncResult[Any]]
    )
    assert_type(await (await add.delay_many([(1, 2)]))[0].wait(), int)


@app.task
async def tsum(numbers: list[int]) -> int:
    return sum(numbers)


async def workflows() -> None:
    assert_type(add.s(1, 2), Signature[int])
    assert_type(add.si(1, 2), Signature[int])
    wf = await (add.s(1, 2) | mul.s(3) | stamp.s()).delay()
    assert_type(wf, AsyncResult[dt.datetime])
    assert_type(await (await chain(add.s(1, 2), mul.s(3)).delay()).wait(), int)
    g = await group(add.s(i, i) for i in range(3)).delay()
    assert_type(g, GroupResult[int])
    assert_type(await g.wait(), list[int])
    c = await chord(group(add.s(i, i) for i in range(3)), tsum.s()).delay()
    assert_type(await c.wait(), int)
    assert_type(await (await add.map([1, 2]).delay()).wait(), list[int])


async def canvas_forms() -> None:
    # a chain ending in a group returns the group's results
    ends_in_group = add.s(2, 2) | group(add.s(i) for i in range(4))
    assert_type(ends_in_group, Chain[list[int], GroupResult[int]])
    assert_type(await ends_in_group.delay(), GroupResult[int])
    assert_type(await (await ends_in_group.delay()).wait(), list[int])
    assert_type(await chain(add.s(1, 1), group(mul.s(2), mul.s(3)))(), GroupResult[int])
    # group | task is a chord: the task's result
    upgraded = group(add.s(i, i) for i in range(3)) | tsum.s()
    assert_type(await (await upgraded.apply_async(countdown=2)).wait(), int)
    # chords: typed by their body, a group body gives a GroupResult
    assert_type(chord([add.s(1, 1)], tsum.s()), Chord[int, AsyncResult[int]])
    assert_type(await chord([add.s(1, 1)])(tsum.s()), AsyncResult[int])
    assert_type(await chord([add.s(1, 1)], group(mul.s(2))).delay(), GroupResult[int])
    # the call forms and the signature API on every canvas
    assert_type(await group(add.s(1, 1), add.s(2, 2))(), GroupResult[int])
    assert_type(await (add.s(1, 1) | mul.s(2))(), AsyncResult[int])
    g: Group[int] = group(add.s(1, 1)).set(countdown=2).link(tsum.s()).on_error(add.s(1))
    assert_type(await g.apply_async(countdown=2, queue="hi"), GroupResult[int])
    assert_type(add.s(1, 1).freeze().id, str)
    # results: Celery's spellings
    h = AsyncResult("id", app=app)
    assert_type(h, AsyncResult[Any])
    assert_type(app.AsyncResult("id", parent=h).parent, AsyncResult[Any] | GroupResult[Any] | None)
    assert_type(await h.ready(), bool)
    assert_type(h.status, str)
    assert_type(h.task_id, str)
    res = await group(add.s(1, 1)).delay()
    assert_type(await res.completed_count(), int)
    assert_type(await res.wait(propagate=False), list[int])


@app.task(bind=True)
async def replaced(self: Task[[int], int], x: int) -> int:
    if x > 0:
        await self.replace(add.s(x, 1))  # ends the task: nothing after it is reached
    return self.replace(chain(add.s(1, 1), mul.s(2)))  # Celery's spelling works too


@app.task(bind=True)
async def adds_to_chord(self: Task[[int], int], x: int) -> int:
    added = await self.add_to_chord(add.s(x, 1))
    assert_type(added, AsyncResult[Any] | GroupResult[Any])
    return x


async def canvas_gaps() -> None:
    # ResultSet: typed by its members, like a GroupResult (which is one)
    h1, h2 = await add.delay(1, 1), await add.delay(2, 2)
    rs = ResultSet([h1, h2])
    assert_type(rs, ResultSet[int])
    assert_type(await rs.wait(), list[int])
    assert_type(await rs.join_native(timeout=1), list[int])
    assert_type(await rs.completed_count(), int)
    rs.add(h1)
    rs.update([h2])
    rs.remove(h1.id)
    rs.discard(h2)
    async for result, value in rs.as_completed(timeout=1):
        assert_type(result, AsyncResult[Any] | GroupResult[Any])
    members: ResultSet[int] = await group(add.s(1, 1)).delay()
    del members
    rs.add("id")  # type: ignore[arg-type]
    assert_type(h1.children, list[AsyncResult[Any] | GroupResult[Any]])
    assert_type(group(add.s(1, 1), add.s(2, 2)).skew(start=1, step=0.5), Group[int])


def eager_apply_is_refused() -> None:
    chain(add.s(1, 1)).apply()  # refused at run time (Unsupported); NoReturn to mypy


def task_apply_is_refused() -> None:
    add.apply((1, 1))


async def celery_idioms_that_must_not_type_check() -> None:
    h = await add.delay(2, 2)
    if h.state == "PENDING":  # type: ignore[comparison-overlap]
        pass
    if h.ready:  # type: ignore[truthy-function]
        pass
    await (add.s(1, 1) | group(mul.s(2))).delay(1, "x")  # fine: partial args are not typed
    total: int = await (await (add.s(1, 1) | group(mul.s(2))).delay()).wait()  # type: ignore[assignment]
    del total


async def errors() -> None:
    await add.delay("x", 2)  # type: ignore[arg-type]
    await add.delay(1)  # type: ignore[call-arg]
    await add.delay(1, 2, 3)  # type: ignore[call-arg]
    await add.options(countdown=1).delay(1, "y")  # type: ignore[arg-type]
    await add.apply_async((1, 2), countdwn=1)  # type: ignore[call-arg]
    add.options(queue=1)  # type: ignore[arg-type]
    await fetch.delay(1)  # type: ignore[arg-type]
    text: str = await (await add.delay(1, 2)).wait()  # type: ignore[assignment]
    del text
    label: str = await (await (add.s(1, 2) | mul.s(3)).delay()).wait()  # type: ignore[assignment]
    del label
    names: list[str] = await (await group(add.s(1, 1)).delay()).wait()  # type: ignore[assignment]
    del names
    await add.delay_many([[1, 2]])  # type: ignore[list-item]
    await add.apply_many([(1, 2)], countdwn=1)  # type: ignore[call-arg]
    await add.apply_many([(1, 2)], queue=1)  # type: ignore[arg-type]
    await app.send_many([add.s(1, 1) | mul.s(2)])  # type: ignore[list-item]
    firsts: list[AsyncResult[str]] = await add.delay_many([(1, 2)])  # type: ignore[assignment]
    del firsts


# -- periodic tasks: the decorator keeps the task's types -----------------------------------


@app.periodic(cron="0 7 * * mon", tz="Europe/Berlin")
async def weekly(kind: str) -> int:
    return len(kind)


@app.periodic(every=dt.timedelta(minutes=5))
@app.task(queue="hi")
def every_five() -> str:
    return "ok"


async def periodic_tasks() -> None:
    assert_type(weekly.s("x"), Signature[int])
    assert_type(every_five, Task[[], str])
    assert_type(await (await weekly.delay("x")).wait(), int)
    await weekly.delay(3)  # type: ignore[arg-type]
    async with app.beat() as scheduler:
        assert_type(scheduler.is_leader, bool)


async def _events(app: App) -> None:
    import contextlib

    from aqueue.core.events import Event

    async with contextlib.aclosing(app.events(since=0.0, types="task-*")) as events:
        async for event in events:
            assert_type(event, Event)
            assert_type(event.uuid, str | None)
            assert_type(event.runtime, float | None)
    app.events(types=["task-*", "worker-*"])
    app.events(types=3)  # type: ignore[arg-type]
