"""Calling tasks end to end through each broker with an embedded worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import msgspec
import pytest

from aqueue import App, ArgumentError, MessageTooLarge, TaskFailed, TaskRevoked, states
from aqueue.core.errors import ConfigurationError
from aqueue.core.protocols import Outgoing

from .tasks import Point, Recorder, register


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def t(app: App, rec: Recorder) -> Any:
    return register(app, rec)


async def test_async_and_sync_tasks(app: App, t: Any) -> None:
    async with app.worker(concurrency=10):
        h1 = await t.add.delay(2, 2)
        h2 = await t.mul.delay(3, 4)
        assert await h1.wait(timeout=10) == 4
        assert await h2.wait(timeout=10) == 12
        assert await h1.state() == states.SUCCESS
        assert await h1.ready() and await h1.successful() and not await h1.failed()
        assert h1.result == 4 and h1.info == 4


async def test_typed_arguments_and_results(app: App, t: Any) -> None:
    at = dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
    async with app.worker():
        when = await (await t.when.delay(Point(3, 0), at)).wait(timeout=10)
        point = await (await t.point.delay(5)).wait(timeout=10)
    assert when == dt.datetime(2024, 1, 4, 12, tzinfo=dt.UTC)
    assert point == Point(5, 10)


async def test_json_serializer(app: App, t: Any) -> None:
    app.conf.update(task_serializer="json")
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    async with app.worker():
        assert await (await t.add.delay(91, 123)).wait(timeout=10) == 214
        assert await (await t.when.delay(Point(1, 1), at)).wait(timeout=10) == at + dt.timedelta(1)


async def test_failure_carries_remote_error(app: App, t: Any) -> None:
    async with app.worker():
        h = await t.boom.delay("bad input")
        with pytest.raises(TaskFailed) as info:
            await h.wait(timeout=10)
        hs = await t.boom_sync.delay()
        with pytest.raises(TaskFailed) as info_sync:
            await hs.wait(timeout=10)
    assert info.value.exc_type == "ValueError" and info.value.exc_message == "bad input"
    assert info.value.traceback and "raise ValueError(text)" in info.value.traceback
    assert info_sync.value.exc_type == "KeyError"
    assert await h.state() == states.FAILURE and await h.failed()
    assert isinstance(h.result, TaskFailed) and h.traceback
    assert isinstance(await h.wait(timeout=1, propagate=False), TaskFailed)
    assert await app.broker.size(app.conf.task_default_queue) == 0  # acked, not redelivered


async def test_calling_forms(app: App, t: Any) -> None:
    async with app.worker():
        a = await t.add.apply_async((1, 2))
        b = await t.add.apply_async(kwargs={"x": 5, "y": 6})
        c = await t.add.options(priority=3).delay(10, y=20)
        d = await app.send_task("t.add", args=(7,), kwargs={"y": 1})
        assert [await h.wait(timeout=10) for h in (a, b, c, d)] == [3, 11, 30, 8]
    assert await t.add(2, 3) == 5  # a direct call runs in-process
    assert t.mul(2, 3) == 6


async def test_countdown_and_eta(app: App, t: Any) -> None:
    async with app.worker():
        sent = time.time()
        h = await t.add.apply_async((1, 1), countdown=0.5)
        assert await h.wait(timeout=10) == 2
        assert time.time() - sent >= 0.45
        h2 = await t.add.apply_async(
            (2, 2), eta=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
        )
        assert await h2.wait(timeout=10) == 4


async def test_expired_task_is_revoked_not_run(app: App, t: Any, rec: Recorder) -> None:
    h = await t.add.apply_async((1, 1), expires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    async with app.worker():
        with pytest.raises(TaskRevoked):
            await h.wait(timeout=10)
    assert await h.state() == states.REVOKED
    assert rec.calls == []


async def test_same_task_id_runs_once(app: App, t: Any, rec: Recorder) -> None:
    task_id = str(uuid.uuid4())
    h1 = await t.add.apply_async((1, 2), task_id=task_id)
    h2 = await t.add.apply_async((1, 2), task_id=task_id)
    assert h1 == h2
    async with app.worker():
        assert await h1.wait(timeout=10) == 3
        assert await (await t.add.delay(0, 0)).wait(timeout=10) == 0  # drained past it
    assert rec.calls.count(("add", 1, 2)) == 1


async def test_finished_task_id_is_not_run_again(app: App, t: Any, rec: Recorder) -> None:
    task_id = str(uuid.uuid4())
    async with app.worker() as worker:
        assert await (await t.add.apply_async((5, 5), task_id=task_id)).wait(timeout=10) == 10
        await t.add.apply_async((5, 5), task_id=task_id)  # a late duplicate of a finished task
        await (await t.mul.delay(1, 1)).wait(timeout=10)
        async with asyncio.timeout(10):  # refused at publish, or acked unrun by the worker
            while await app.broker.size("celery") and worker.executor.duplicates < 1:
                await asyncio.sleep(0.01)
    assert rec.calls.count(("add", 5, 5)) == 1


async def test_bound_request(app: App, t: Any) -> None:
    async with app.worker(queues=["celery", "other"], hostname="w1@%h"):
        h = await t.request.apply_async(kwargs={"tag": "x"}, queue="other", headers={"k": "v"})
        got = await h.wait(timeout=10)
    assert got["id"] == h.id and got["attempt"] == 1 and got["retries"] == 0
    assert got["queue"] == "other" and got["headers"] == {"k": "v"} and got["tag"] == "x"
    assert got["task"] == "t.request" and got["hostname"].startswith("w1@")


async def test_base_class_hooks(app: App, t: Any, rec: Recorder) -> None:
    async with app.worker(concurrency=1):
        assert await (await t.hooked.delay(False)).wait(timeout=10) == "fine"
        with pytest.raises(TaskFailed):
            await (await t.hooked.delay(True)).wait(timeout=10)
    assert rec.hooks == ["success:fine", "after:SUCCESS", "failure:RuntimeError", "after:FAILURE"]


async def test_progress_states_are_observable(app: App, t: Any, rec: Recorder) -> None:
    seen = []
    async with app.worker():
        h = await t.progress.delay(3)
        # the task holds after its first report until it was seen: a watcher that joins
        # late sees only the latest state, which is what events() promises
        async for change in h.events():
            seen.append((change.state, change.info))
            if change.state == "PROGRESS":
                rec.progress_seen.set()
    assert seen[-1] == (states.SUCCESS, 3)
    progress = [info for state, info in seen if state == "PROGRESS"]
    assert progress and progress == sorted(progress, key=lambda m: m["done"])
    assert all(state in ("PROGRESS", states.SUCCESS) for state, _ in seen)


async def test_track_started(app: App, t: Any, rec: Recorder) -> None:
    app.conf.update(task_track_started=True)
    async with app.worker():
        h = await t.block.delay()
        async with asyncio.timeout(10):
            await rec.started.wait()
        assert await h.state() == states.STARTED  # stored before the task body ran
        rec.release.set()
        assert await h.wait(timeout=10) == "released"


async def test_ignore_result(app: App, t: Any, rec: Recorder) -> None:
    async with app.worker():
        h = await t.silent.delay()
        with pytest.raises(ConfigurationError):
            await h.wait(timeout=1)
        marker = await t.add.delay(0, 1)  # same queue, sent after: done means silent ran
        await marker.wait(timeout=10)
    assert ("silent",) in rec.calls
    assert await app.AsyncResult(h.id).state() == states.PENDING


async def test_unencodable_result_is_a_failure(app: App, t: Any) -> None:
    async with app.worker():
        with pytest.raises(TaskFailed, match="EncodeError"):
            await (await t.unencodable.delay()).wait(timeout=10)


async def test_app_async_result_rebuilds_from_id(app: App, t: Any) -> None:
    async with app.worker():
        h = await t.add.delay(20, 22)
        await h.wait(timeout=10)
    again = app.AsyncResult(h.id)
    assert await again.wait(timeout=5) == 42
    await again.forget()
    assert await again.state() == states.PENDING


# -- the worker never dies of a message ------------------------------------------------


async def _inject(app: App, body: bytes, task_id: str | None = None) -> str:
    tid = task_id or str(uuid.uuid4())
    await app.broker.publish([Outgoing(id=tid, queue=app.conf.task_default_queue, body=body)])
    return tid


async def test_garbage_bytes_are_dead_lettered(app: App, t: Any) -> None:
    bad = [
        b"\x00\xff garbage",
        b"",
        b"\xde\x00\x04\xa2id",
        b"{not json",
        msgspec.msgpack.encode([1]),
    ]
    ids = [await _inject(app, body) for body in bad]
    async with app.worker():
        assert await (await t.add.delay(1, 1)).wait(timeout=10) == 2  # still alive
    letters = {d.id: d.reason for d in await app.broker.dead_letters()}
    assert all(letters.get(i) == "decode_error" for i in ids), letters


async def test_unknown_task_fails_and_is_dead_lettered(app: App, t: Any) -> None:
    h = await app.send_task("os.system", args=("touch /tmp/aqueue-pwned",))
    async with app.worker():
        with pytest.raises(TaskFailed, match="NotRegistered"):
            await h.wait(timeout=10)
    [letter] = await app.broker.dead_letters()
    assert (letter.id, letter.reason) == (h.id, "unknown_task")


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        (("two", 2), {}, "'x'"),
        ((1,), {}, "missing a required argument: 'y'"),
        ((1, 2, 3), {}, "too many positional arguments"),
        ((1, 2), {"z": 3}, "unexpected keyword argument 'z'"),
    ],
)
async def test_bad_arguments_fail_without_retry(
    app: App, t: Any, rec: Recorder, args: tuple[Any, ...], kwargs: dict[str, Any], needle: str
) -> None:
    h = await app.send_task("t.add", args=args, kwargs=kwargs)
    async with app.worker():
        with pytest.raises(TaskFailed) as info:
            await h.wait(timeout=10)
    assert info.value.exc_type == "ArgumentError" and needle in info.value.exc_message
    assert rec.calls == []
    assert [(d.id, d.reason) for d in await app.broker.dead_letters()] == [(h.id, "bad_arguments")]


async def test_poison_message_is_dead_lettered_after_max_deliveries(app: App, t: Any) -> None:
    app.conf.update(max_deliveries=2)
    h = await t.add.delay(1, 1)
    for _ in range(2):  # two workers "died" holding it
        [d] = await app.broker.claim(["celery"], limit=1, lease_seconds=30, owner="x", timeout=1)
        assert await d.release(executed=True)
    async with app.worker():
        with pytest.raises(TaskFailed, match="WorkerLostError"):
            await h.wait(timeout=10)
    assert [d.reason for d in await app.broker.dead_letters()] == ["max_deliveries"]


async def test_oversized_payload_refused_before_io(app: App, t: Any) -> None:
    app.conf.update(max_message_bytes=1024)
    with pytest.raises(MessageTooLarge):
        await t.add.delay("x" * 4096, 1)  # type: ignore[arg-type]
    assert await app.broker.size("celery") == 0


async def test_oversized_injected_message_is_dead_lettered(app: App, t: Any) -> None:
    body = msgspec.msgpack.encode({"id": "big", "task": "t.add", "args": ["x" * 5000, 1]})
    await _inject(app, body, "big")
    app.conf.update(max_message_bytes=1024)
    async with app.worker():
        assert await (await t.add.delay(1, 2)).wait(timeout=10) == 3
    assert [d.reason for d in await app.broker.dead_letters()] == ["decode_error"]


async def test_deeply_nested_payload_is_a_decode_error(app: App, t: Any) -> None:
    depth = 100_000
    body = b'{"id":"deep","task":"t.add","args":[' + b"[" * depth + b"]" * depth + b"]}"
    app.conf.update(max_message_bytes=10 * depth)
    await _inject(app, body, "deep")
    async with app.worker():
        assert await (await t.add.delay(1, 2)).wait(timeout=10) == 3
    reasons = {d.id: d.reason for d in await app.broker.dead_letters()}
    assert reasons["deep"] in ("decode_error", "bad_arguments")


async def test_argument_error_type_is_public() -> None:
    assert issubclass(ArgumentError, TypeError)


async def test_worker_stop_before_start_is_harmless(app: App) -> None:
    worker = app.worker()
    await worker.stop()
    await worker.wait_stopped()
