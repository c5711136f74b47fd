"""Batched acks on the RabbitMQ consuming channel (aqueue/brokers/rabbitmq/acks.py).

``ack()`` queues the delivery tag and the acks of one event-loop turn go out together, as one
``basic.ack(multiple=True)`` where the tags extend the settled run at the bottom of the
channel. What must hold, against the real server:

* a multiple ack never covers a delivery that is still running, buffered or unseen: after a
  connection loss exactly the unacknowledged messages come back;
* acks queued but not yet written when the process dies are redelivered (at-least-once),
  never lost;
* ``close()`` writes what is queued before the connection goes.

And the consuming channel's reader hands deliveries to the consumer inline (no task each)
wherever the installed aiormq allows it (``aiormq_hooks.FRAME_HOOKS``), with aiormq's task
per delivery as the fallback.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from aqueue.brokers.rabbitmq import RabbitMQBroker
from aqueue.brokers.rabbitmq.acks import Acks
from aqueue.core.protocols import Delivery, Outgoing
from aqueue.transports.amqp import aiormq_hooks
from tests.conftest import RABBIT_HOST, RABBIT_PORT, rabbit_url, require_service

pytestmark = pytest.mark.rabbitmq

BASE = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/%2F"
ROOT = Path(__file__).resolve().parents[2]
Make = Callable[..., Awaitable[RabbitMQBroker]]


def msg() -> Outgoing:
    mid = uuid.uuid4().hex
    return Outgoing(id=mid, queue="q", body=f"body-{mid}".encode())


async def claim(broker: RabbitMQBroker, limit: int = 10, timeout: float = 0.05) -> list[Delivery]:
    return await broker.claim(["q"], limit=limit, lease_seconds=30.0, owner="t", timeout=timeout)


async def claim_all(broker: RabbitMQBroker, want: int, timeout: float = 5.0) -> list[Delivery]:
    """Claim until ``want`` deliveries arrived, then once more briefly for any extra."""
    got: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < want:
            got += await claim(broker, limit=100, timeout=0.5)
    got += await claim(broker, limit=100, timeout=0.3)
    return got


def acks_of(broker: RabbitMQBroker) -> Acks:
    acks = broker.channels.acks
    assert acks is not None
    return acks


@pytest.fixture
async def make() -> AsyncIterator[tuple[Make, str]]:
    """Brokers sharing one fresh prefix; their queues are deleted afterwards."""
    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    prefix = f"aqt-{uuid.uuid4().hex[:12]}"
    made: list[RabbitMQBroker] = []

    async def factory(**options: Any) -> RabbitMQBroker:
        broker = RabbitMQBroker(rabbit_url(prefix, BASE), **options)
        await broker.connect()
        made.append(broker)
        return broker

    yield factory, prefix
    for broker in made:
        await broker.close()
    cleaner = RabbitMQBroker(rabbit_url(prefix, BASE))
    try:
        await cleaner.delete_queues(["q"])
    finally:
        await cleaner.close()


# -- the bookkeeping, on its own -------------------------------------------------------------


def test_low_advances_only_over_a_contiguous_run() -> None:
    """``low`` (every tag below it settled) never passes a tag that was not settled,
    whatever the order; the runs above it stay few and merged."""
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 60)
        tags = list(range(1, n + 1))
        missing = set(rng.sample(tags, rng.randint(0, min(3, n))))  # held, or never seen
        order = [t for t in tags if t not in missing]
        rng.shuffle(order)
        acks = Acks(channel=None, gen=1)  # type: ignore[arg-type]  # bookkeeping only
        settled: set[int] = set()
        for tag in order:
            acks.mark(tag)
            settled.add(tag)
            expected_low = 1
            while expected_low in settled:
                expected_low += 1
            assert acks.low == expected_low
            above = {t for first, last in acks.runs for t in range(first, last + 1)}
            assert above == {t for t in settled if t > expected_low}
            for (_, last), (first, _) in zip(acks.runs, acks.runs[1:], strict=False):
                assert first > last + 1  # disjoint and not adjacent


# -- against RabbitMQ ------------------------------------------------------------------------


async def test_acks_of_one_turn_are_one_frame_and_close_writes_them(
    make: tuple[Make, str],
) -> None:
    factory, _ = make
    broker, other = await factory(prefetch=50), await factory()
    await broker.publish([msg() for _ in range(50)])
    got = await claim_all(broker, 50)
    assert len(got) == 50
    for d in got:
        assert await d.ack() is True  # queued: no frame yet, no round trip
    acks = acks_of(broker)
    assert acks.frames == 0 and acks.pending
    await broker.consumers.acks_processed()  # written, and processed by RabbitMQ
    assert (acks.frames, acks.settled) == (1, 50)  # one basic.ack(multiple=True)
    await broker.publish([msg() for _ in range(5)])
    more = await claim_all(broker, 5)
    for d in more:
        assert await d.ack() is True
    await broker.close()  # writes the queued acks and waits for RabbitMQ to process them
    assert await claim(other, timeout=0.5) == []
    assert await other.size("q") == 0


async def test_multiple_acks_never_cover_held_or_buffered_messages(
    make: tuple[Make, str],
) -> None:
    """Acks out of order, and with messages still buffered above them: when the connection
    dies, exactly the unacknowledged messages come back, nothing acked by mistake."""
    factory, _ = make
    broker, other = await factory(prefetch=10), await factory(prefetch=20)
    ms = [msg() for _ in range(12)]
    await broker.publish(ms)
    got = await claim(broker, limit=8, timeout=2.0)  # 8 claimed, up to 2 more buffered
    assert len(got) == 8
    assert [d.id for d in got] == [m.id for m in ms[:8]]  # claimed in delivery-tag order
    acks = acks_of(broker)
    for i in (1, 2, 5):  # not the first: nothing may go out as "multiple"
        assert await got[i].ack()
    await broker.consumers.acks_processed()
    assert (acks.frames, acks.low) == (3, 1)  # three single acks
    assert await got[0].ack()
    await broker.consumers.acks_processed()
    assert acks.frames == 4 and acks.low == 4  # tags 1-3 settled; 4 (got[3]) still held
    for i in (6, 7):  # above a held message: one by one again
        assert await got[i].ack()
    await broker.consumers.acks_processed()
    assert acks.frames == 6
    assert broker.channels.link.conn is not None
    await broker.channels.link.conn.close()  # the worker died holding got[3], got[4] and the buffer
    back = await claim_all(other, 6)
    expected = {got[3].id, got[4].id} | {m.id for m in ms[8:]}
    assert sorted(d.id for d in back) == sorted(expected)
    for d in back:
        assert await d.ack()


async def test_a_run_of_acks_below_a_buffered_window_is_one_multiple_ack(
    make: tuple[Make, str],
) -> None:
    factory, _ = make
    broker, other = await factory(prefetch=10), await factory(prefetch=10)
    ms = [msg() for _ in range(10)]
    await broker.publish(ms)
    got = await claim(broker, limit=4, timeout=2.0)
    assert [d.id for d in got] == [m.id for m in ms[:4]]
    for d in reversed(got):  # any order within the turn
        assert await d.ack()
    await broker.consumers.acks_processed()
    acks = acks_of(broker)
    assert (acks.frames, acks.low) == (1, 5)
    assert broker.channels.link.conn is not None
    await broker.channels.link.conn.close()
    back = await claim_all(other, 6)
    assert sorted(d.id for d in back) == sorted(m.id for m in ms[4:])  # the buffered ones
    for d in back:
        assert await d.ack()


# a worker that acks everything it claimed (each ack() returns True) and dies in the same
# event-loop turn, before the batched acks are written
_DIES_WITH_QUEUED_ACKS = """
import asyncio, os, sys
from aqueue.brokers.rabbitmq import RabbitMQBroker

async def main() -> None:
    broker = RabbitMQBroker(sys.argv[1], prefetch=20)
    await broker.connect()
    got = []
    async with asyncio.timeout(10):
        while len(got) < int(sys.argv[2]):
            got += await broker.claim(["q"], limit=20, lease_seconds=30, owner="x", timeout=1)
    acked = [await d.ack() for d in got]
    assert all(acked) and broker.channels.acks.pending, acked
    sys.stdout.write("acked %d\\n" % len(acked))
    sys.stdout.flush()
    os._exit(9)  # killed before the next loop turn: nothing was written

asyncio.run(main())
"""


async def test_a_worker_killed_with_queued_acks_loses_nothing(make: tuple[Make, str]) -> None:
    factory, prefix = make
    other = await factory(prefetch=20)
    ms = [msg() for _ in range(15)]
    await other.publish(ms)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _DIES_WITH_QUEUED_ACKS, rabbit_url(prefix, BASE), "15"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 9, done.stderr
    assert done.stdout.strip() == "acked 15"
    back = await claim_all(other, 15)
    assert sorted(d.id for d in back) == sorted(m.id for m in ms)  # all redelivered
    assert {d.delivery_count for d in back} == {2}  # as after any crash
    for d in back:
        assert await d.ack()
    await other.consumers.acks_processed()
    assert await other.size("q") == 0


# -- deliveries handed to the consumer inline ------------------------------------------------


async def test_deliveries_are_handled_inline_by_the_channel_reader(
    make: tuple[Make, str],
) -> None:
    """Where the version guard allows it, the consuming channel's reader calls the consumer
    itself (no task per delivery): every delivery went through the hook, counted by it. If
    this fails after an aiormq upgrade, the fallback (a task per delivery, below) still
    works, only slower: fix the hook or the guard."""
    factory, _ = make
    broker = await factory(prefetch=20)
    ms = [msg() for _ in range(20)]
    await broker.publish(ms)
    got = await claim_all(broker, 20)
    assert sorted(d.id for d in got) == sorted(m.id for m in ms)
    hook = broker.channels.inline_hook
    if aiormq_hooks.FRAME_HOOKS:
        assert hook is not None and hook.delivered == 20  # all of them, none in a task
        assert set(hook.consumers) == {broker.consumers.consumers["q"].tag}
    else:  # an aiormq whose reader binds its handlers once: the hook is not installed
        assert hook is None
    for d in got:
        assert await d.ack()


async def test_the_version_guard_matches_what_aiormq_does(
    make: tuple[Make, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook installed whatever the guard says: aiormq's reader calls it for every
    delivery exactly on the versions the guard lets it be installed on (>= 7.2.1); on older
    ones the reader never calls it (deliveries still arrive, through aiormq's own handler)."""
    monkeypatch.setattr(aiormq_hooks, "FRAME_HOOKS", True)
    factory, _ = make
    broker = await factory(prefetch=10)
    ms = [msg() for _ in range(10)]
    await broker.publish(ms)
    got = await claim_all(broker, 10)
    assert sorted(d.id for d in got) == sorted(m.id for m in ms)
    hook = broker.channels.inline_hook
    assert hook is not None
    works = aiormq_hooks.AIORMQ_VERSION >= aiormq_hooks.FRAME_HOOKS_SINCE
    assert hook.delivered == (10 if works else 0)
    for d in got:
        assert await d.ack()


async def test_without_the_inline_hook_a_task_per_delivery_works_the_same(
    make: tuple[Make, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiormq_hooks, "deliver_inline", lambda channel, consumers: None)
    factory, _ = make
    broker, other = await factory(prefetch=10), await factory(prefetch=10)
    ms = [msg() for _ in range(10)]
    await broker.publish(ms)
    got = await claim(broker, limit=6, timeout=2.0)
    assert [d.id for d in got] == [m.id for m in ms[:6]]
    channel = broker.channels.live_consuming()
    assert channel is not None and broker.channels.inline_hook is None
    for d in got[:5]:
        assert await d.ack()
    await broker.consumers.acks_processed()
    assert acks_of(broker).frames == 1
    assert broker.channels.link.conn is not None
    await broker.channels.link.conn.close()
    back = await claim_all(other, 5)
    assert sorted(d.id for d in back) == sorted([got[5].id] + [m.id for m in ms[6:]])
    for d in back:
        assert await d.ack()
