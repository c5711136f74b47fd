"""The Topics capability (control, replies, events), as every built-in broker keeps it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from aqueue import App, SubscriptionClosed
from aqueue.core.protocols import Broker, KeepsTopics, Subscription, Topics
from aqueue.core.urls import broker_class


@pytest.fixture
async def topics(broker_url: str) -> AsyncIterator[Topics]:
    b: Broker = broker_class(broker_url)(broker_url)
    await b.connect()
    try:
        assert isinstance(b, KeepsTopics)
        yield b.topics
    finally:
        await b.close()


async def drain(sub: Subscription, want: int, timeout: float = 5.0) -> list[bytes]:
    """Read until ``want`` messages came (or ``timeout`` passed with fewer)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += await sub.get(deadline - time.monotonic())
    return got


def name(kind: str = "control") -> str:
    return f"{kind}.{uuid.uuid4().hex[:8]}" if kind == "reply" else kind


async def test_every_subscriber_reads_everything_in_order(topics: Topics) -> None:
    a = await topics.subscribe("control")
    b = await topics.subscribe("control")
    try:
        bodies = [f"m{i}".encode() for i in range(20)]
        await topics.publish("control", bodies[:5], cap=100)
        await topics.publish("control", bodies[5:], cap=100)
        assert await drain(a, 20) == bodies
        assert await drain(b, 20) == bodies
    finally:
        await a.close()
        await b.close()
        await b.close()  # idempotent


async def test_a_subscription_starts_when_subscribe_returns(topics: Topics) -> None:
    await topics.publish("control", [b"before"], cap=100)
    sub = await topics.subscribe("control")
    try:
        await topics.publish("control", [b"after"], cap=100)
        assert await drain(sub, 1) == [b"after"]
        assert await sub.get(0.2) == []  # nothing more, and get returns on time
    finally:
        await sub.close()


async def test_get_times_out_with_nothing(topics: Topics) -> None:
    sub = await topics.subscribe(f"reply.{uuid.uuid4().hex}")
    try:
        t0 = time.monotonic()
        assert await sub.get(0.3) == []
        assert 0.25 <= time.monotonic() - t0 < 20  # it waited, and it returned
    finally:
        await sub.close()


async def test_reply_topics_are_separate(topics: Topics) -> None:
    one, two = f"reply.{uuid.uuid4().hex}", f"reply.{uuid.uuid4().hex}"
    s1 = await topics.subscribe(one)
    s2 = await topics.subscribe(two)
    try:
        await topics.publish(one, [b"for-one"], cap=10)
        await topics.publish(two, [b"for-two"], cap=10)
        assert await drain(s1, 1) == [b"for-one"]
        assert await drain(s2, 1) == [b"for-two"]
        assert await s1.get(0.2) == []
    finally:
        await s1.close()
        await s2.close()


async def test_events_kept_can_be_read_by_a_late_subscriber(topics: Topics) -> None:
    t0 = time.time() - 1.0
    await topics.publish("events", [b"e1", b"e2", b"e3"], cap=1000)
    late = await topics.subscribe("events", since=t0)
    try:
        assert await drain(late, 3) == [b"e1", b"e2", b"e3"]
        await topics.publish("events", [b"e4"], cap=1000)
        assert await drain(late, 1) == [b"e4"]
    finally:
        await late.close()


async def test_since_in_the_future_reads_only_new(topics: Topics) -> None:
    await topics.publish("events", [b"old"], cap=1000)
    sub = await topics.subscribe("events", since=time.time() + 3600)
    try:
        await topics.publish("events", [b"new"], cap=1000)
        assert await drain(sub, 1) == [b"new"]
    finally:
        await sub.close()


async def test_a_topic_keeps_about_its_cap(topics: Topics, broker_url: str) -> None:
    if broker_url.startswith("amqp"):
        pytest.skip("RabbitMQ keeps events in a stream capped by bytes (segments), not count")
    for i in range(30):
        await topics.publish("events", [f"e{i}".encode() for _ in range(10)], cap=20)
    sub = await topics.subscribe("events", since=0.0)
    try:
        kept = await drain(sub, 300, timeout=0.5)
        assert kept and kept[-1] == b"e29"
        assert len(kept) < 150  # trimmed (Redis trims approximately, never below the cap)
        assert len(kept) >= 20
    finally:
        await sub.close()


async def test_another_client_reaches_the_subscribers(topics: Topics, broker_url: str) -> None:
    """The CLI and the workers are separate processes: a second broker object (its own
    connection, or its own SQLite store) publishes to what the first one subscribed."""
    other: Broker = broker_class(broker_url)(broker_url)
    await other.connect()
    token = f"reply.{uuid.uuid4().hex}"
    control = await topics.subscribe("control")
    reply = await topics.subscribe(token)
    try:
        assert isinstance(other, KeepsTopics)
        await other.topics.publish("control", [b"stop"], cap=100)
        await other.topics.publish(token, [b"done"], cap=10)
        assert await drain(control, 1) == [b"stop"]
        assert await drain(reply, 1) == [b"done"]
    finally:
        await control.close()
        await reply.close()
        await other.close()


async def test_a_closed_subscription_says_so(topics: Topics) -> None:
    """Read after its close, a subscription raises at once: it returned ``[]`` at once, and
    a reader looping until told to stop (an event stream whose broker closed under it)
    spun on that without ever yielding to the event loop."""
    sub = await topics.subscribe("control")
    await topics.publish("control", [b"m"], cap=100)
    await sub.close()
    async with asyncio.timeout(20):  # at once, not after its minute
        with pytest.raises(SubscriptionClosed):
            await sub.get(60.0)


async def test_a_get_waiting_when_its_subscription_closes_ends(topics: Topics) -> None:
    sub = await topics.subscribe(name("reply"))
    waiting = asyncio.create_task(sub.get(60.0))
    await asyncio.sleep(0.2)  # let it start waiting (a close before it started says so too)
    await sub.close()
    async with asyncio.timeout(20):
        with pytest.raises(SubscriptionClosed):
            await waiting


async def test_closing_the_broker_ends_an_event_stream(broker_url: str) -> None:
    """``async for event in app.events()`` ends when the app closes. It spun: the closed
    subscription answered ``[]`` at once, forever, and the loop never ran anything else (a
    dashboard's metrics follower froze a test for two minutes)."""
    app = App("t", broker=broker_url, backend="memory://")
    await app.connect()
    seen: list[object] = []

    async def follow() -> None:
        async for event in app.events():
            seen.append(event)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # subscribed and waiting
    await app.close()
    async with asyncio.timeout(20):
        await follower  # ends without an error
    assert seen == []


async def test_since_skips_what_was_published_before_it(topics: Topics) -> None:
    """Kept messages are read from ``since`` on, not from the start of what is kept (nor,
    on RabbitMQ, from the start of the stream chunk that holds ``since``)."""
    await topics.publish("events", [b"old"], cap=1000)
    await asyncio.sleep(0.02)  # timestamps have millisecond resolution
    since = time.time()
    await asyncio.sleep(0.02)
    await topics.publish("events", [b"new"], cap=1000)
    sub = await topics.subscribe("events", since=since)
    try:
        await topics.publish("events", [b"newer"], cap=1000)
        assert await drain(sub, 2) == [b"new", b"newer"]
        assert await sub.get(0.2) == []
    finally:
        await sub.close()
