"""Results at Celery's level: ids and trees, the result API, and Celery idioms that must
either work with ``await`` or fail loudly naming the async spelling (issue 13)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from typing import Any

import pytest

from aqueue import (
    App,
    AsyncResult,
    AsyncUsageError,
    ConfigurationError,
    GroupResult,
    Task,
    TaskFailed,
    chain,
    chord,
    group,
    result_from_tuple,
    states,
)

from .celery_tasks import Recorder
from .conftest import settle

TIMEOUT = 30


async def test_celery_idioms_fail_loudly(app: App, c: Any) -> None:
    """``result.state == "PENDING"``, ``if result.ready:``, ``if result.ready():`` and a
    property read before any read raise AsyncUsageError naming the async spelling."""
    h = app.AsyncResult(str(uuid.uuid4()))
    with pytest.raises(AsyncUsageError, match=r"await result.state\(\)"):
        h.state == "PENDING"
    with pytest.raises(AsyncUsageError, match=r"await result.ready\(\)"):
        bool(h.ready)
    with pytest.raises(AsyncUsageError, match=r"await result\.ready"):
        if h.ready():  # a coroutine is always true
            pass
    with pytest.raises(AsyncUsageError, match=r"await result.state\(\)"):
        f"{h.state}"
    with pytest.raises(AsyncUsageError, match="nothing was read yet"):
        h.status
    with pytest.raises(AsyncUsageError, match="nothing was read yet"):
        h.result
    assert await h.state() == states.PENDING
    assert h.status == states.PENDING and h.result is None  # what the read saw
    group_result = await group([], app=app).delay()
    with pytest.raises(AsyncUsageError, match=r"await group_result.ready\(\)"):
        bool(group_result.ready)


async def test_a_delay_never_awaited_is_logged_with_its_line(
    app: App, c: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``add.delay(4, 4)`` without ``await`` sends nothing: ERROR with file and line."""
    caplog.set_level(logging.ERROR, logger="aqueue.app")
    c.add.delay(4, 4)  # the Celery idiom, not awaited
    line = _line_of("c.add.delay(4, 4)  # the Celery idiom")
    chain(c.add.s(1, 1), c.add.s(2)).apply_async()
    (first, second) = [r for r in caplog.records if r.name == "aqueue.app"]
    assert first.levelno == logging.ERROR
    assert "c.add.delay(...) was never awaited" in first.getMessage()
    assert f"{__file__}:{line}" in first.getMessage()
    assert "chain.apply_async(...) was never awaited" in second.getMessage()
    broker = await app.connected_broker()
    assert await broker.size("celery") == 0  # nothing was sent


def _line_of(text: str) -> int:
    with open(__file__) as source:
        return next(i for i, line in enumerate(source, 1) if text in line)


async def test_awaiting_calls_are_coroutines(app: App, c: Any) -> None:
    """What delay() returns works with create_task and gather, like a coroutine."""
    async with app.worker(concurrency=20):
        task = asyncio.create_task(c.add.delay(1, 2))
        handles = await asyncio.gather(c.add.delay(2, 2), c.add.apply_async((3, 3)), task)
        assert [await h.wait(TIMEOUT) for h in handles] == [4, 6, 3]


async def test_result_api(app: App, c: Any) -> None:
    """AsyncResult(id, app=app), .name/.args/.kwargs/.date_done/.task_id, parent=."""
    app.conf.update(result_extended=True)
    async with app.worker():
        h = await c.add.apply_async((2,), {"y": 3})
        assert await h.wait(TIMEOUT) == 5
    same = AsyncResult(h.id, app=app)
    assert await same.state() == states.SUCCESS and await same.successful()
    assert same.task_id == h.id and same == h.id and same.name == "c.add"
    assert same.args == (2,) and same.kwargs == {"y": 3}
    assert same.date_done is not None
    assert abs((dt.datetime.now(dt.UTC) - same.date_done).total_seconds()) < TIMEOUT
    assert same.retries == 0 and same.worker and same.attempt == 1
    child = app.AsyncResult(str(uuid.uuid4()), parent=same)
    assert child.parent is same
    with pytest.raises(ConfigurationError, match=r"AsyncResult\(id, app=app\)"):
        AsyncResult(h.id)  # outside a task there is no app to use


async def test_celery_basic_and_fail_idioms(app: App, c: Any) -> None:
    """test_tasks.py test_basic_task and test_fail, spelled the async way."""
    async with app.worker(concurrency=20):
        results = [(i + i, await c.add.delay(i, i)) for i in range(10)]
        results += [(3 * i, await c.add.delay(i, i, z=i)) for i in range(10)]
        for expected, result in results:
            assert await result.wait(TIMEOUT) == expected
            assert result.status == "SUCCESS"
            assert await result.ready() is True and await result.successful() is True
        failed = await c.fail.delay()
        with pytest.raises(TaskFailed, match="Task expected to fail"):
            await failed.wait(TIMEOUT)
    assert failed.status == "FAILURE"
    assert await failed.ready() and await failed.failed() and not await failed.successful()


async def test_errback_with_one_argument(app: App, c: Any, rec: Recorder) -> None:
    """The seed's ``error_handler(uuid)``: one argument, and AsyncResult(uuid) in a task."""

    @app.task(name="c.error_handler")
    async def error_handler(uuid: str) -> str:
        result = AsyncResult(uuid)  # inside a task: that task's app
        exc = await result.wait(propagate=False)
        rec.echo("handled", (uuid, type(exc).__name__, "ExpectedException" in result.traceback))
        return uuid

    async with app.worker(concurrency=20):
        h = await c.fail.apply_async(("x",), link_error=error_handler.s())
        with pytest.raises(TaskFailed):
            await h.wait(TIMEOUT)
    await settle(app)
    assert rec.echoes["handled"] == [(h.id, "TaskFailed", True)]


async def test_errbacks_with_stored_arguments(app: App, c: Any, rec: Recorder) -> None:
    """test_link_error.test_mutable_errback_with_stored_arguments and
    test_link_error_using_signature."""
    errbacks = [
        c.errback_old_style_with_args.s("stored"),
        c.errback_old_style_with_args.s(label="stored"),
        c.errback_new_style_with_args.s("stored"),
    ]
    failing = []
    async with app.worker(concurrency=20):
        for errback in errbacks:
            sig = c.fail.s()
            sig.link_error(errback)
            failing.append(sig.freeze().id)
            with pytest.raises(TaskFailed):
                await (await sig.delay()).wait(TIMEOUT)
        by_name = app.signature("c.fail", args=("test",))
        by_name.link_error(app.signature("c.identity"))
        error = await (await by_name.delay()).wait(TIMEOUT, propagate=False)
        assert isinstance(error, TaskFailed) and error.exc_type == "ExpectedException"
    await settle(app)
    assert {key: rec.echoes[key] for key in failing} == {key: ["stored"] for key in failing}


async def test_ids_of_a_lone_task_and_of_tasks_sent_from_tasks(app: App, c: Any) -> None:
    """test_tasks.py test_apply_single_task_ids and
    test_apply_nested_parent_child_relationship, through a worker."""

    @app.task(name="c.grandchild", bind=True)
    async def grandchild(self: Task[[], dict[str, Any]]) -> dict[str, Any]:
        r = self.request
        return {"task_id": r.id, "parent_id": r.parent_id, "root_id": r.root_id}

    @app.task(name="c.child", bind=True)
    async def child(self: Task[[], dict[str, Any]]) -> dict[str, Any]:
        below = await (await grandchild.delay()).wait(TIMEOUT)
        r = self.request
        return {"task_id": r.id, "parent_id": r.parent_id, "root_id": r.root_id, "below": below}

    @app.task(name="c.parent", bind=True)
    async def parent(self: Task[[], dict[str, Any]]) -> dict[str, Any]:
        below = await (await child.delay()).wait(TIMEOUT)
        r = self.request
        return {"task_id": r.id, "parent_id": r.parent_id, "root_id": r.root_id, "below": below}

    async with app.worker(concurrency=20):
        lone = await (await grandchild.delay()).wait(TIMEOUT)
        top = await (await parent.delay()).wait(TIMEOUT)
    assert lone["parent_id"] is None and lone["root_id"] == lone["task_id"]
    middle, bottom = top["below"], top["below"]["below"]
    assert top["parent_id"] is None and top["root_id"] == top["task_id"]
    assert middle["parent_id"] == top["task_id"] and middle["root_id"] == top["task_id"]
    assert bottom["parent_id"] == middle["task_id"] and bottom["root_id"] == top["task_id"]


async def test_a_workflow_applied_inside_a_task_is_its_child(app: App, c: Any) -> None:
    """Canvases applied from a task get its id as parent and its root as root."""

    @app.task(name="c.starter", bind=True)
    async def starter(self: Task[[], Any]) -> Any:
        wf = c.ids.si(1) | group(c.ids.si(2), c.ids.si(3))
        return self.request.id, await (await wf.delay()).parent.wait(TIMEOUT)

    async with app.worker(concurrency=20):
        starter_id, (root_id, parent_id, _) = await (await starter.delay()).wait(TIMEOUT)
    assert (root_id, parent_id) == (starter_id, starter_id)


async def test_result_tree_walks_and_round_trips_through_json(app: App, c: Any) -> None:
    """parent/children through a chain, a group and a chord; as_tuple() through JSON (a web
    session) and back restores the whole parent spine, in Celery's tuple format."""
    wf = (
        c.add.s(1, 1)
        | group(c.add.s(1), c.add.s(2) | c.add.s(10))
        | c.xsum.s()
        | chord([c.add.s(1), c.add.s(2)], c.tsum.s())
    )
    async with app.worker(concurrency=20):
        res = await wf.delay()
        assert await res.wait(TIMEOUT) == 2 * (3 + 14) + 3
        spine = _spine(res)
        assert [type(node).__name__ for node in spine] == [
            "AsyncResult",  # the chord's body
            "GroupResult",  # its header
            "AsyncResult",  # xsum
            "GroupResult",  # the group (upgraded to a chord with xsum)
            "AsyncResult",  # the first add
        ]
        assert spine[-1].children == [spine[-2]] and spine[2].children == [spine[1]]
        rebuilt = result_from_tuple(app, json.loads(json.dumps(res.as_tuple())))
        assert [n.id for n in _spine(rebuilt)] == [n.id for n in spine]
        assert [type(n) for n in _spine(rebuilt)] == [type(n) for n in spine]
        group_ids = [[getattr(r, "id", None) for r in g.results] for g in spine[1::2][:2]]
        assert [[r.id for r in g.results] for g in _spine(rebuilt)[1::2][:2]] == group_ids
        assert await rebuilt.wait(TIMEOUT) == 37
        assert await _spine(rebuilt)[3].wait(TIMEOUT) == [3, 14]
        pairs = [pair async for pair in spine[-1].collect(timeout=TIMEOUT)]
        assert [value for _, value in pairs][:2] == [2, 3]  # the first add, the group's first
    # a tuple written by Celery's as_tuple() reads the same way
    celery_tuple = [[res.id, [[spine[1].id, None], [[[spine[1].results[0].id, None], None]]]], None]
    from_celery = result_from_tuple(celery_tuple, app=app)
    assert isinstance(from_celery.parent, GroupResult)
    assert from_celery.parent.results[0].id == spine[1].results[0].id


def _spine(result: Any) -> list[Any]:
    out = []
    while result is not None:
        out.append(result)
        result = result.parent
    return out


async def test_group_result_api(app: App, c: Any) -> None:
    """GroupResult: completed_count, ready, successful, failed, results, wait(propagate=
    False) with each member's error in place, save/restore keeping nesting and parents."""
    wf = c.add.s(1, 1) | group(c.add.s(1), c.fail.s(), chain(c.add.s(3), group(c.add.s(4))))
    async with app.worker(concurrency=20):
        res = await wf.delay()
        values = await res.wait(TIMEOUT, propagate=False)
        with pytest.raises(TaskFailed):
            await res.wait(TIMEOUT)
    assert values[0] == 3 and isinstance(values[1], TaskFailed) and values[2] == [9]
    assert values[1].exc_type == "ExpectedException"
    assert await res.completed_count() == 2 and await res.ready() and await res.failed()
    assert not await res.successful() and not await res.waiting()
    assert len(res.results) == 3 and isinstance(res.results[2], GroupResult)
    await res.save()
    again = await app.GroupResult.restore(res.id)
    assert again.as_tuple() == res.as_tuple()
    assert isinstance(again.parent, AsyncResult) and again.parent.id == res.parent.id
    restored_values = await again.wait(TIMEOUT, propagate=False)
    assert restored_values[0] == 3 and restored_values[2] == [9]


async def test_seed_chord_parent_save_restore(app: App, c: Any) -> None:
    """The canvas seed: chord(group)(callback), task.parent.save(), GroupResult.restore and
    app.AsyncResult(id, parent=...), from another process's point of view."""
    callback = c.tsum.s()
    group_tasks = group([c.add.s(5, 5), c.add.s(20, -10), c.add.s(2, 8)])
    async with app.worker(concurrency=20):
        task = await chord(group_tasks)(callback)
        await task.parent.save()
        assert [r.id for r in task.parent.children] == [r.id for r in task.parent.results]
        parent = await app.GroupResult.restore(task.parent.id)
        again = app.AsyncResult(task.id, parent=parent)
        assert await again.wait(TIMEOUT) == 30
        assert await again.parent.wait(TIMEOUT) == [10, 10, 10]
