"""The monitoring event stream on every broker that carries topics: each event type with
Celery's fields, a chain's lifecycle through ``app.events()``, arguments kept out by
default, the cap, catching up with ``since``, and nothing sent when events are off."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

import pytest

from aqueue import App, Task, TaskFailed, TaskRevoked
from aqueue.core.errors import ConfigurationError
from aqueue.core.events import (
    EVENT_TYPES,
    EVENTS_PER_MESSAGE,
    EVENTS_TOPIC,
    HEARTBEAT_FREQ,
    REPR_MAX,
    SW_IDENT,
    Event,
    EventStream,
    encode_event,
    pack,
    unpack,
)
from aqueue.core.protocols import KeepsTopics, Outgoing

from .helpers import has, need_topics, of, read_until, types

LIFECYCLE = ["task-sent", "task-received", "task-started", "task-succeeded"]


@pytest.fixture
async def stream(app: App) -> Any:
    """A subscription to the stream, taken before the test does anything."""
    need_topics(app)
    s = EventStream(app)
    await s.subscribe()
    try:
        yield s
    finally:
        await s.aclose()


def check_common(event: Event, hostname: str | None = None) -> None:
    """The fields every Celery event has, with Celery's types."""
    assert event.type in EVENT_TYPES
    assert isinstance(event.timestamp, float) and abs(event.timestamp - time.time()) < 60
    assert isinstance(event.pid, int) and isinstance(event.clock, int)
    assert isinstance(event.utcoffset, int)
    if hostname is not None:
        assert event.hostname == hostname


# -- a chain's lifecycle, through app.events() -----------------------------------------


async def test_a_chains_lifecycle_in_order_through_app_events(app: App) -> None:
    need_topics(app)
    app.conf.update(task_send_sent_event=True)

    @app.task(name="ev.add")
    async def add(x: int, y: int) -> int:
        return x + y

    t0 = time.time()
    async with app.worker(task_events=True, hostname="evw@%h") as w:
        handle = await (add.s(1, 2) | add.s(3) | add.s(4)).apply_async()
        assert await handle.get(timeout=15) == 10
        got: list[Event] = []
        async with contextlib.aclosing(app.events(since=t0, types="task-*")) as events:
            async for event in events:
                got.append(event)
                if all(sum(e.type == t for e in got) == 3 for t in LIFECYCLE):
                    break
    step3 = handle.id
    step2 = handle.parent.id  # type: ignore[union-attr]
    step1 = handle.parent.parent.id  # type: ignore[union-attr]

    # one task's events in the order they happened: task-sent and the worker's events come
    # from different publishers (the producer, the worker's batches), so the stream may
    # carry a task-sent after its task-received; monitors order by timestamp (as Celery's)
    def lifecycle(task_id: str) -> list[Event]:
        return sorted(of(got, task_id), key=lambda e: e.timestamp)

    for task_id in (step1, step2, step3):
        assert types(lifecycle(task_id)) == LIFECYCLE, types(of(got, task_id))
    sent1, received1 = lifecycle(step1)[:2]
    # Celery's ids: the first step is its workflow's root, each later step the child of
    # the one before it
    for e in (sent1, received1):
        assert e.root_id == step1 and e.parent_id is None and e.name == "ev.add"
    for task_id, parent in ((step2, step1), (step3, step2)):
        for e in lifecycle(task_id)[:2]:
            assert e.root_id == step1 and e.parent_id == parent
    # the worker's events carry its name; the test process's task-sent a producer's
    for e in got:
        check_common(e)
        if e.type != "task-sent":
            assert e.hostname == w.hostname and e.pid == os.getpid()
    assert sent1.hostname == f"gen{os.getpid()}@{socket.gethostname()}"
    assert sent1.queue == "celery" and sent1.routing_key == "celery" and sent1.retries == 0
    assert sent1.eta is None and sent1.expires is None
    succeeded = lifecycle(step3)[-1]
    assert isinstance(succeeded.runtime, float) and 0 <= succeeded.runtime < 15
    # one sender's clock only goes up
    worker_clocks = [e.clock for e in got if e.hostname == w.hostname]
    assert worker_clocks == sorted(worker_clocks)


async def test_breaking_out_of_app_events_ends_its_subscription(app: App) -> None:
    need_topics(app)
    assert isinstance(app.broker, KeepsTopics)
    probe = Event(
        type="task-started",
        timestamp=time.time(),
        hostname="h",
        pid=1,
        clock=1,
        utcoffset=0,
        uuid="x",
    )
    await app.broker.topics.publish(EVENTS_TOPIC, [encode_event(probe)], cap=100)
    events = app.events(since=time.time() - 60)
    async for event in events:
        assert event.uuid == "x"
        break
    stream: EventStream = events.ag_frame.f_locals["stream"]
    assert stream._sub is not None
    del events  # what a loop that broke out leaves: asyncio closes the generator
    async with asyncio.timeout(5):
        while stream._sub is not None:
            await asyncio.sleep(0.01)
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


# -- each task event, with its fields --------------------------------------------------


async def test_received_started_succeeded_and_dates_in_celerys_form(
    app: App, stream: EventStream
) -> None:
    app.conf.update(task_send_sent_event=True)

    @app.task(name="ev.echo")
    async def echo(x: int) -> int:
        return x

    expires = time.time() + 3600
    handle = await echo.apply_async((5,), expires=3600, countdown=0.01)
    async with app.worker(task_events=True):
        assert await handle.get(timeout=15) == 5
        got = await read_until(stream, has("task-succeeded", handle.id))
    sent, received, started, succeeded = of(got, handle.id)
    assert [sent.type, received.type, started.type] == LIFECYCLE[:3]
    # eta and expires travel as Celery's ISO 8601 strings
    for e in (sent, received):
        assert isinstance(e.expires, str) and e.expires.endswith("+00:00")
        assert abs(_parse(e.expires) - expires) < 5
        assert isinstance(e.eta, str) and e.eta.endswith("+00:00")
    assert started.to_dict().keys() == {
        "type",
        "timestamp",
        "hostname",
        "pid",
        "clock",
        "utcoffset",
        "uuid",
    }
    assert succeeded["uuid"] == handle.id and succeeded.get("runtime") is not None


def _parse(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


async def test_a_failing_task_gives_task_failed_with_its_exception(
    app: App, stream: EventStream
) -> None:
    @app.task(name="ev.boom")
    async def boom() -> None:
        raise ValueError("boom-7")

    async with app.worker(task_events=True):
        handle = await boom.delay()
        with pytest.raises(TaskFailed):
            await handle.get(timeout=15)
        got = await read_until(stream, has("task-failed", handle.id))
    assert types(of(got, handle.id)) == ["task-received", "task-started", "task-failed"]
    failed = of(got, handle.id)[-1]
    assert failed.exception == "ValueError('boom-7')"
    assert failed.traceback is not None and "ValueError: boom-7" in failed.traceback
    assert "raise ValueError" in failed.traceback


async def test_a_retried_task_gives_task_retried_then_runs_again(
    app: App, stream: EventStream
) -> None:
    @app.task(bind=True, name="ev.flaky")
    async def flaky(self: Task[[], str]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=KeyError("not-yet"), countdown=0)
        return "ok"

    async with app.worker(task_events=True):
        handle = await flaky.delay()
        assert await handle.get(timeout=15) == "ok"
        got = await read_until(stream, has("task-succeeded", handle.id))
    assert types(of(got, handle.id)) == [
        "task-received",
        "task-started",
        "task-retried",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    retried = of(got, handle.id)[2]
    assert retried.exception == "KeyError('not-yet')"
    assert retried.traceback is not None and "KeyError" in retried.traceback
    assert of(got, handle.id)[3].retries == 1


async def test_revoked_before_it_ran(app: App, stream: EventStream) -> None:
    @app.task(name="ev.never")
    async def never() -> None:
        raise AssertionError("a revoked task ran")

    handle = await never.delay()
    await app.control.revoke(handle.id)
    async with app.worker(task_events=True):
        with pytest.raises(TaskRevoked):
            await handle.get(timeout=15)
        got = await read_until(stream, has("task-revoked", handle.id))
    revoked = of(got, handle.id)[-1]
    assert revoked.terminated is False and revoked.expired is False
    assert revoked.to_dict()["terminated"] is False  # sent, not left out as a default
    assert "task-started" not in types(of(got, handle.id))


async def test_expired_is_revoked_with_expired(app: App, stream: EventStream) -> None:
    @app.task(name="ev.late")
    async def late() -> None:
        raise AssertionError("an expired task ran")

    handle = await late.apply_async(expires=0.05)
    await asyncio.sleep(0.1)  # let it expire while queued (the point of this test)
    async with app.worker(task_events=True):
        got = await read_until(stream, has("task-revoked", handle.id))
    revoked = of(got, handle.id)[-1]
    assert revoked.expired is True and revoked.terminated is False


async def test_terminated_is_revoked_with_terminated(app: App, stream: EventStream) -> None:
    started = asyncio.Event()

    @app.task(name="ev.forever")
    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async with app.worker(task_events=True):
        handle = await forever.delay()
        async with asyncio.timeout(10):
            await started.wait()
        await app.control.revoke(handle.id, terminate=True)
        got = await read_until(stream, has("task-revoked", handle.id))
    revoked = of(got, handle.id)[-1]
    assert revoked.terminated is True and revoked.expired is False
    assert types(of(got, handle.id)) == ["task-received", "task-started", "task-revoked"]


async def test_an_unknown_task_is_rejected(app: App, stream: EventStream) -> None:
    async with app.worker(task_events=True):
        handle = await app.send_task("ev.no_such_task", args=[1])
        got = await read_until(stream, has("task-rejected", handle.id))
    rejected = of(got, handle.id)[-1]
    assert rejected.requeue is False and rejected.reason == "unknown_task"
    assert types(of(got, handle.id)) == ["task-rejected"]  # never received: it is not known


async def test_arguments_that_do_not_fit_are_rejected(app: App, stream: EventStream) -> None:
    @app.task(name="ev.typed")
    async def typed(x: int) -> int:
        return x

    async with app.worker(task_events=True):
        handle = await app.send_task("ev.typed", args=["not an int"])
        got = await read_until(stream, has("task-rejected", handle.id))
    assert of(got, handle.id)[-1].reason == "bad_arguments"


async def test_an_undecodable_message_is_rejected(app: App, stream: EventStream) -> None:
    await app.broker.publish([Outgoing("poison-ev-1", "celery", b"\x00 not a message")])
    async with app.worker(task_events=True):
        got = await read_until(stream, has("task-rejected", "poison-ev-1"))
    rejected = of(got, "poison-ev-1")[-1]
    assert rejected.reason == "decode_error" and rejected.requeue is False


# -- arguments and results -------------------------------------------------------------


async def test_arguments_and_results_are_left_out_by_default(app: App, stream: EventStream) -> None:
    app.conf.update(task_send_sent_event=True)

    @app.task(name="ev.secret")
    async def secret(password: str, *, pin: int) -> str:
        return password.upper()

    async with app.worker(task_events=True):
        handle = await secret.delay("hunter2", pin=1234)
        assert await handle.get(timeout=15) == "HUNTER2"
        got = await read_until(stream, has("task-succeeded", handle.id))
    assert types(of(got, handle.id)) == LIFECYCLE
    for event in of(got, handle.id):
        assert event.args is None and event.kwargs is None and event.result is None
        wire = encode_event(event)
        assert b"hunter2" not in wire.lower() and b"1234" not in wire
        assert b'"args"' not in wire and b'"result"' not in wire


async def test_arguments_and_results_as_celerys_reprs_when_asked(
    app: App, stream: EventStream
) -> None:
    app.conf.update(task_send_sent_event=True, event_include_arguments=True)

    @app.task(name="ev.shout")
    async def shout(text: str, *, times: int) -> str:
        return text * times

    async with app.worker(task_events=True):
        handle = await shout.delay("ab", times=1000)
        await handle.get(timeout=15)
        got = await read_until(stream, has("task-succeeded", handle.id))
    sent, received, _, succeeded = of(got, handle.id)
    for e in (sent, received):
        assert e.args == "('ab',)" and e.kwargs == "{'times': 1000}"
    assert succeeded.result is not None and len(succeeded.result) == REPR_MAX
    assert succeeded.result.startswith("'abab") and succeeded.result.endswith("...")


# -- workers ---------------------------------------------------------------------------


async def test_worker_online_heartbeat_offline(app: App, stream: EventStream) -> None:
    @app.task(name="ev.noop")
    async def noop() -> None:
        return None

    w = app.worker(task_events=True, hostname="beater@%h")
    async with w:
        await (await noop.delay()).get(timeout=15)
        got = await read_until(stream, has("worker-heartbeat"), timeout=HEARTBEAT_FREQ * 3 + 5)
    got += await read_until(stream, has("worker-offline"), timeout=10)
    mine = [e for e in got if e.type.startswith("worker-")]
    assert mine[0].type == "worker-online"
    assert mine[-1].type == "worker-offline"
    beat = next(e for e in mine if e.type == "worker-heartbeat")
    for e in mine:
        check_common(e, w.hostname)
        assert e.freq == HEARTBEAT_FREQ and e.sw_ident == SW_IDENT
        assert isinstance(e.sw_ver, str) and isinstance(e.sw_sys, str)
        assert isinstance(e.active, int) and isinstance(e.processed, int)
        assert isinstance(e.loadavg, list)
    assert beat.processed == 1 and beat.active == 0


# -- off by default, and switched at run time ------------------------------------------


async def test_off_by_default_nothing_is_sent(app: App, stream: EventStream) -> None:
    """A worker without -E sends nothing: a task's whole run leaves the stream empty, and a
    probe published afterwards is the first thing a reader gets."""

    @app.task(name="ev.quiet")
    async def quiet() -> int:
        return 1

    async with app.worker() as w:
        await (await quiet.delay()).get(timeout=15)
        assert not w.events.enabled
    assert w.events.published == 0
    assert isinstance(app.broker, KeepsTopics)
    probe = Event(
        type="task-started",
        timestamp=time.time(),
        hostname="probe",
        pid=0,
        clock=0,
        utcoffset=0,
        uuid="probe",
    )
    await app.broker.topics.publish(EVENTS_TOPIC, [encode_event(probe)], cap=100)
    got = await read_until(stream, has("task-started", "probe"))
    assert [e.uuid for e in got] == ["probe"]


async def test_enable_and_disable_at_run_time(app: App, stream: EventStream) -> None:
    @app.task(name="ev.step")
    async def step(n: int) -> int:
        return n

    async with app.worker() as w:
        silent = await step.delay(1)
        await silent.get(timeout=15)
        w.events.enable()
        loud = await step.delay(2)
        await loud.get(timeout=15)
        w.events.disable()
        hushed = await step.delay(3)
        await hushed.get(timeout=15)
        w.events.enable()
        last = await step.delay(4)
        await last.get(timeout=15)
        got = await read_until(stream, has("task-succeeded", last.id))
    # enabling a running worker announces it first
    assert got[0].type == "worker-online"
    assert of(got, silent.id) == [] and of(got, hushed.id) == []
    assert types(of(got, loud.id)) == LIFECYCLE[1:]
    assert types(of(got, last.id)) == LIFECYCLE[1:]


# -- the stream: its cap, catching up, bulk sends ----------------------------------------


async def test_a_late_subscriber_catches_up_with_since(app: App) -> None:
    need_topics(app)

    @app.task(name="ev.early")
    async def early() -> int:
        return 7

    t0 = time.time()
    async with app.worker(task_events=True):
        handle = await early.delay()
        await handle.get(timeout=15)
    # the worker is gone: a monitor that starts now still reads what it did
    late = EventStream(app, since=t0, types=["task-*"])
    try:
        got = await read_until(late, has("task-succeeded", handle.id))
    finally:
        await late.aclose()
    assert types(of(got, handle.id)) == LIFECYCLE[1:]
    # one that starts without since reads only what comes next
    fresh = EventStream(app)
    try:
        await fresh.subscribe()
        assert await fresh.next_batch(0.3) == []
    finally:
        await fresh.aclose()


async def test_bulk_sends_tell_task_sent_for_each(app: App, stream: EventStream) -> None:
    app.conf.update(task_send_sent_event=True)

    @app.task(name="ev.many")
    async def many(n: int) -> int:
        return n

    handles = await many.delay_many([(i,) for i in range(50)])
    got = await read_until(stream, lambda es: len(es) >= 50)
    assert [e.uuid for e in got] == [h.id for h in handles]
    assert {e.type for e in got} == {"task-sent"}


async def test_task_sent_is_stamped_before_the_publish_returns(
    app: App, stream: EventStream
) -> None:
    """A task's ``task-sent`` never comes after its ``task-received`` in timestamp order:
    it is stamped when the message is made, not after the publish returned (by then a worker
    may have stamped ``task-received``: ``aqueue events`` showed a chain's step received
    before it was sent). For ``delay()``, ``delay_many()`` and a chain's later steps."""
    app.conf.update(task_send_sent_event=True)

    @app.task(name="ev.stamp")
    async def stamp(n: int) -> int:
        return n + 1

    await app.connected_broker()
    broker = app.broker
    inner = broker.publish
    returned: dict[str, float] = {}

    async def publish(batch: list[Outgoing]) -> Any:
        result = await inner(batch)
        now = time.time()
        returned.update((o.id, now) for o in batch)
        return result

    broker.publish = publish  # type: ignore[method-assign]
    try:
        ids = [(await stamp.delay(0)).id]
        ids += [h.id for h in await stamp.delay_many([(i,) for i in range(3)])]
        async with app.worker():
            handle = await (stamp.s(1) | stamp.s() | stamp.s()).apply_async()
            assert await handle.get(timeout=15) == 4
        ids += [handle.id, handle.parent.id]  # type: ignore[union-attr]  # sent by the worker
    finally:
        del broker.publish
    got = await read_until(stream, lambda es: set(ids) <= {e.uuid for e in es})
    sent = {e.uuid: e for e in got if e.type == "task-sent"}
    late = {i: sent[i].timestamp - returned[i] for i in ids if sent[i].timestamp > returned[i]}
    assert late == {}


async def test_the_stream_keeps_at_most_its_cap(app: App, stream: EventStream) -> None:
    """``event_max_kept`` bounds the events kept: a late reader finds the newest ones, never
    more than the cap (and, events being stored 16 to a message, at least 1/16 of it)."""
    if app.broker_url.startswith("amqp"):
        pytest.skip("RabbitMQ keeps events in a stream capped by bytes (segments), not count")
    app.conf.update(task_send_sent_event=True, event_max_kept=64)  # 4 messages of 16

    @app.task(name="ev.capped")
    async def capped(n: int) -> int:
        return n

    t0 = time.time()
    for _ in range(10):
        await capped.delay_many([(i,) for i in range(32)])  # 2 full messages each
    last = (await capped.delay(-1)).id  # a message of one event
    late = EventStream(app, since=t0 - 1)
    try:
        kept = await read_until(late, has("task-sent", last), timeout=10)
        kept += await late.next_batch(0.3)
    finally:
        await late.aclose()
    assert kept[-1].uuid == last
    assert 4 <= len(kept) <= 64, len(kept)  # of 321 sent


# -- the wire, and brokers without topics -----------------------------------------------


def test_events_are_json_and_unknown_bytes_are_skipped() -> None:
    event = Event(
        type="task-sent",
        timestamp=1.5,
        hostname="h",
        pid=2,
        clock=3,
        utcoffset=-1,
        uuid="u",
        retries=0,
    )
    wire = encode_event(event)
    assert wire.startswith(b'{"type":"task-sent"')
    assert unpack(wire) == [event]
    assert unpack(b"\x80\x03pickle") == [] and unpack(b"[1]") == []
    # several events to a message: a JSON array of at most EVENTS_PER_MESSAGE
    many = [event] * (EVENTS_PER_MESSAGE + 1)
    messages = pack(many)
    assert len(messages) == 2 and messages[0].startswith(b'[{"type":"task-sent"')
    assert [e for m in messages for e in unpack(m)] == many
    assert event["retries"] == 0 and event.get("result", "none") == "none"
    with pytest.raises(KeyError):
        event["nope"]


class _NoTopics:
    """A memory broker that carries no topics (as a third-party broker may not)."""

    def __init__(self, url: str) -> None:
        from aqueue.brokers.memory import MemoryBroker

        self._inner = MemoryBroker(url)

    def __getattr__(self, name: str) -> Any:
        if name == "topics":
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_a_broker_without_topics_is_a_clear_error() -> None:
    app = App("nt", broker=_NoTopics("memory://notopics"), backend="memory://notopics-r")
    async with app:
        with pytest.raises(ConfigurationError, match="has no topics"):
            async for _ in app.events():
                break

        # a worker with events on still runs its tasks: the events are dropped
        @app.task(name="nt.ok")
        async def ok() -> int:
            return 3

        async with app.worker(task_events=True) as w:
            assert await (await ok.delay()).get(timeout=15) == 3
        assert w.events.published == 0 and w.events.dropped > 0
