"""Bulk publishing (delay_many, apply_many, send_many) through each broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from aqueue import (
    App,
    ArgumentError,
    AsyncResult,
    BrokerError,
    BulkPublishError,
    MessageTooLarge,
    Middleware,
    PublishTimeout,
    states,
)
from aqueue.core.bulk import encode_batch, new_ids, publish_chunks
from aqueue.core.message import MessageOut, decode_message
from aqueue.core.middleware import PublishNext
from aqueue.core.protocols import Broker, Outgoing

from .tasks import Recorder, register


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def t(app: App, rec: Recorder) -> Any:
    return register(app, rec)


async def _claim_all(app: App, queue: str, n: int) -> list[MessageOut | Any]:
    """Claim ``n`` messages of ``queue`` directly from the broker, ack them, decode them."""
    got: list[Any] = []
    async with asyncio.timeout(10):
        while len(got) < n:
            batch = await app.broker.claim(
                [queue], limit=n - len(got), lease_seconds=30, owner="t", timeout=1
            )
            for d in batch:
                got.append(decode_message(d.body, app.conf.max_message_bytes))
                assert await d.ack()
    return got


async def test_delay_many_keeps_order_and_runs_each_once(app: App, t: Any, rec: Recorder) -> None:
    app.conf.update(publish_chunk_size=7)  # several broker calls, still in order
    items = [(i, 100 + i) for i in range(40)]
    handles = await t.add.delay_many(items)
    assert len(handles) == 40 and len({h.id for h in handles}) == 40
    assert all(uuid.UUID(h.id).version == 4 for h in handles)
    assert all(isinstance(h, AsyncResult) for h in handles)
    assert await app.broker.size("celery") == 40
    async with app.worker(concurrency=20):
        values = [await h.wait(timeout=10) for h in handles]
    assert values == [x + y for x, y in items]
    assert sorted(c for c in rec.calls if c[0] == "add") == sorted(("add", x, y) for x, y in items)
    again = [await app.AsyncResult(h.id).wait(timeout=5) for h in handles]  # by id, anywhere
    assert again == values
    assert await app.broker.size("celery") == 0


async def test_delay_many_accepts_any_iterable_and_lists(app: App, t: Any) -> None:
    handles = await t.add.delay_many((i, [1, 2, 3][i]) for i in range(3))
    handles += await t.add.delay_many([[5, 5]])  # a list of arguments is taken as a tuple
    async with app.worker():
        assert [await h.wait(timeout=10) for h in handles] == [1, 3, 5, 10]


async def test_apply_many_applies_options_to_every_message(app: App, t: Any) -> None:
    handles = await t.add.apply_many(
        [(1, 1), (2, 2), (3, 3)],
        queue="other",
        priority=7,
        headers={"k": "v"},
        ignore_result=True,
        expires=600,
        time_limit=30,
        soft_time_limit=20,
        parent_id="p-1",
    )
    assert await app.broker.size("celery") == 0
    messages = await _claim_all(app, "other", 3)
    assert {m.id for m in messages} == {h.id for h in handles}
    for m in messages:
        assert (m.task, m.queue, m.priority, m.headers) == ("t.add", "other", 7, {"k": "v"})
        assert m.ignore_result and (m.time_limit, m.soft_time_limit) == (30, 20)
        assert m.parent_id == "p-1" and m.group_id is None and m.chord is None
        assert m.expires is not None and 590 < m.expires - time.time() <= 600
    assert len({m.expires for m in messages}) == 1  # computed once for the call


async def test_apply_many_countdown_and_bound_options(app: App, t: Any) -> None:
    sent = time.time()
    delayed = await t.add.apply_many([(1, 2), (3, 4)], countdown=0.5)
    bound = await t.add.options(queue="other").delay_many([(5, 6)])
    early = await app.broker.claim(["celery"], limit=5, lease_seconds=30, owner="t", timeout=0.1)
    assert early == []  # not due yet
    async with app.worker(queues=["celery", "other"]):
        assert [await h.wait(timeout=10) for h in delayed] == [3, 7]
        assert time.time() - sent >= 0.45
        assert await bound[0].wait(timeout=10) == 11


async def test_apply_many_links_get_their_own_callback_per_message(app: App, t: Any) -> None:
    seen: list[int] = []
    both = asyncio.Event()

    @app.task(name="t.collect")
    async def collect(value: int) -> None:
        seen.append(value)
        if len(seen) == 3:
            both.set()

    await t.add.apply_many([(1, 1), (2, 2), (3, 3)], link=collect.s())
    async with app.worker():
        async with asyncio.timeout(10):
            await both.wait()
    assert sorted(seen) == [2, 4, 6]


async def test_apply_many_ignore_result_stores_nothing(app: App, t: Any, rec: Recorder) -> None:
    handles = await t.add.apply_many([(1, 1), (2, 2)], ignore_result=True)
    async with app.worker():
        marker = await t.add.delay(0, 0)  # FIFO queue: done means the two above ran
        await marker.wait(timeout=10)
    assert ("add", 1, 1) in rec.calls and ("add", 2, 2) in rec.calls
    assert [await h.state() for h in handles] == [states.PENDING, states.PENDING]


async def test_bad_arguments_are_refused_before_anything_is_sent(app: App, t: Any) -> None:
    with pytest.raises(ArgumentError, match=r"item 2: .*missing a required argument: 'y'"):
        await t.add.delay_many([(1, 2), (3, 4), (5,), (7, 8)])
    with pytest.raises(ArgumentError, match=r"item 1: .*too many positional arguments"):
        await t.add.apply_many([(1, 2), (3, 4, 5)], queue="other")
    with pytest.raises(TypeError, match="item 1 is a str"):
        await t.add.delay_many([(1, 2), "ab"])
    with pytest.raises(TypeError, match="unknown call option"):
        await t.add.apply_many([(1, 2)], countdwn=1)
    with pytest.raises(TypeError, match="task_id"):
        await t.add.apply_many([(1, 2)], task_id="same-for-all")
    with pytest.raises(ArgumentError, match="item 1: "):
        await app.send_many([t.add.s(1, 2), t.mul.s(x=1, z=2)])
    assert await app.broker.size("celery") == 0
    assert await app.broker.size("other") == 0


async def test_oversized_message_is_refused_before_anything_is_sent(app: App, t: Any) -> None:
    app.conf.update(max_message_bytes=1024, publish_chunk_size=2)
    items = [("small",), ("small",), ("x" * 4096,), ("small",)]
    with pytest.raises(MessageTooLarge, match=r"message 2 \(t.boom, id .*\) is \d+ bytes"):
        await t.boom.delay_many(items)
    with pytest.raises(MessageTooLarge, match="message 1 "):
        await app.send_many([t.boom.s("small"), t.boom.s("x" * 4096)])
    assert await app.broker.size("celery") == 0


async def test_send_many_mixed_tasks(app: App, t: Any) -> None:
    handles = await app.send_many(
        [
            t.add.s(1, 2),
            t.mul.s(3, 4),
            t.add.s(x=5, y=6),
            app.signature("t.add", args=(7, 8)),
            t.request.s("tagged").set(queue="other", headers={"k": "v"}),
        ]
    )
    async with app.worker(queues=["celery", "other"]):
        values = [await h.wait(timeout=10) for h in handles]
    assert values[:4] == [3, 12, 11, 15]
    assert values[4]["queue"] == "other" and values[4]["headers"] == {"k": "v"}
    assert values[4]["tag"] == "tagged" and values[4]["id"] == handles[4].id
    assert await app.workflow_states(handles[0].id) == {}  # no group or workflow bookkeeping


async def test_send_many_keeps_signature_task_ids_and_dedupes(app: App, t: Any) -> None:
    chosen = str(uuid.uuid4())
    handles = await app.send_many([t.add.s(1, 1).set(task_id=chosen), t.add.s(2, 2)])
    assert handles[0].id == chosen
    again = await app.send_many([t.add.s(1, 1).set(task_id=chosen)])  # duplicate: as delay()
    assert again[0].id == chosen
    async with app.worker():
        assert [await h.wait(timeout=10) for h in handles] == [2, 4]
        assert await (await t.add.delay(0, 0)).wait(timeout=10) == 0  # drained past it


async def test_send_many_refuses_workflows(app: App, t: Any) -> None:
    from aqueue import chain, group

    for canvas in (chain(t.add.s(1, 1), t.add.s(2)), group([t.add.s(1, 1)])):
        with pytest.raises(TypeError, match="send_many item 1 is a"):
            await app.send_many([t.add.s(0, 0), canvas])
    assert await app.broker.size("celery") == 0


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1//", "memory://nothing"]
)
async def test_empty_lists_do_no_io(url: str) -> None:
    app = App("empty", broker=url)

    @app.task(name="e.add")
    async def add(x: int, y: int) -> int:
        return x + y

    assert await add.delay_many([]) == []
    assert await add.apply_many(iter(()), queue="q", countdown=5) == []
    assert await add.options(queue="q").delay_many([]) == []
    assert await app.send_many([]) == []
    assert not app.is_connected  # never connected


class _Tagger(Middleware):
    """Sees every message; numbers them in a header; drops those whose tag is "drop"."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def publish(self, message: MessageOut, call_next: PublishNext) -> None:
        self.seen.append(message.id)
        if message.args == ("drop",):
            return
        headers = {**message.headers, "n": str(len(self.seen))}
        await call_next(msgspec.structs.replace(message, headers=headers))


async def test_middleware_sees_every_message(app: App, t: Any) -> None:
    tagger = _Tagger()
    app.add_middleware(tagger)
    app.conf.update(publish_chunk_size=2)
    handles = await t.request.delay_many([("a",), ("drop",), ("c",), ("d",)])
    assert tagger.seen == [h.id for h in handles]
    assert await app.broker.size("celery") == 3  # the dropped one was not sent
    mixed = await app.send_many([t.request.s("e"), t.add.s(1, 2)])
    assert tagger.seen[4:] == [h.id for h in mixed]
    async with app.worker():
        got = [await handles[i].wait(timeout=10) for i in (0, 2, 3)]
        assert await mixed[1].wait(timeout=10) == 3
        e = await mixed[0].wait(timeout=10)
    assert [(r["tag"], r["headers"]) for r in got] == [
        ("a", {"n": "1"}),
        ("c", {"n": "3"}),
        ("d", {"n": "4"}),
    ]
    assert e["headers"] == {"n": "5"}


# -- chunks and partial failure ---------------------------------------------------------


class _FailingAt:
    """The real broker, with a fault injected at one ``publish`` call (1-based)."""

    def __init__(self, inner: Broker, at: int, *, hang: bool = False) -> None:
        self.inner = inner
        self.at = at
        self.hang = hang
        self.calls: list[int] = []

    async def publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        self.calls.append(len(messages))
        if len(self.calls) == self.at:
            if self.hang:
                await asyncio.Event().wait()
            raise BrokerError("injected fault")
        return await self.inner.publish(messages)


def _batch(app: App, n: int) -> tuple[list[Outgoing], list[AsyncResult[Any]]]:
    ids = new_ids(n)
    messages = [MessageOut(id=i, task="t.add", args=(1, 2)) for i in ids]
    return encode_batch(messages, "msgpack", 1 << 20), [app.AsyncResult(i) for i in ids]


@pytest.mark.parametrize("hang", [False, True], ids=["error", "timeout"])
async def test_failed_chunk_tells_what_was_published(app: App, hang: bool) -> None:
    batch, results = _batch(app, 10)
    broker = _FailingAt(app.broker, at=2, hang=hang)
    with pytest.raises(BulkPublishError) as info:
        await publish_chunks(
            broker,  # type: ignore[arg-type]
            batch,
            results,
            timeout=0.3,
            where="test",
            chunk=4,
        )
    err = info.value
    assert broker.calls == [4, 4]  # stopped at the failing chunk: the last 2 never sent
    assert (err.published, err.uncertain) == (4, 4)
    assert [r.id for r in err.results] == [m.id for m in batch]
    assert isinstance(err.__cause__, PublishTimeout if hang else BrokerError)
    assert "the first 4 are stored" in str(err) and "the last 2 were not sent" in str(err)
    assert await app.broker.size("celery") == 4
    stored = {m.id for m in await _claim_all(app, "celery", 4)}
    assert stored == {r.id for r in err.results[:4]}


async def test_rabbitmq_refused_chunk_stops_the_bulk_publish(app: App, t: Any) -> None:
    if not app.broker_url.startswith("amqp"):
        pytest.skip("only RabbitMQ refuses this queue name at publish")
    app.conf.update(publish_chunk_size=3)
    sigs = [t.add.s(i, i) for i in range(8)]
    sigs[7] = sigs[7].set(queue="bad.dlq")  # a reserved name: refused when its chunk is sent
    with pytest.raises(BulkPublishError) as info:
        await app.send_many(sigs)
    assert (info.value.published, info.value.uncertain) == (6, 2)
    assert await app.broker.size("celery") == 6
