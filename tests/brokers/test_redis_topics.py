"""Redis-specific behaviour of the broker's topics: the key layout, the reply topics' expiry,
reads bounded by the socket timeout, and cancellation (the cross-broker contract is in
tests/conformance/test_topics.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from aqueue.brokers.redis import RedisBroker
from aqueue.core.errors import SubscriptionClosed

pytestmark = pytest.mark.redis

HOST, PORT = "127.0.0.1", 6379


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"aqt-topics-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis(host=HOST, port=PORT)
    try:
        keys = list(client.scan_iter(match=f"{name}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    client = redis.Redis(host=HOST, port=PORT)
    yield client
    client.close()


@pytest.fixture
async def broker(prefix: str) -> AsyncIterator[RedisBroker]:
    # a short socket timeout: a read must still wait the caller's whole timeout, in rounds
    b = RedisBroker(f"redis://{HOST}:{PORT}/0?prefix={prefix}&socket_timeout=0.4")
    await b.connect()
    yield b
    await b.close()


async def test_a_topic_is_one_capped_stream_and_a_reply_topic_expires(
    broker: RedisBroker, prefix: str, server: redis.Redis
) -> None:
    await broker.topics.publish("control", [b"a", b"b", b"c"], cap=2)
    reply = f"reply.{uuid.uuid4().hex}"
    await broker.topics.publish(reply, [b"r"], cap=10)
    control = f"{prefix}:{{topic:control}}"
    assert server.type(control) == b"stream"
    entries = server.xrange(control)
    assert entries is not None
    assert [fields for _, fields in entries] == [{b"b": b"b"}, {b"b": b"c"}]
    assert server.ttl(control) == -1  # kept: only capped
    assert 0 < server.ttl(f"{prefix}:{{topic:{reply}}}") <= 60


async def test_a_get_longer_than_the_socket_timeout_waits_it_out(broker: RedisBroker) -> None:
    sub = await broker.topics.subscribe("control")
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await sub.get(1.0) == []  # several XREAD BLOCK rounds of 0.2 s, no error
        assert loop.time() - t0 >= 0.95
        later = asyncio.ensure_future(sub.get(3.0))
        await asyncio.sleep(0.5)  # into the read's second round
        await broker.topics.publish("control", [b"x"], cap=10)
        assert await later == [b"x"]
    finally:
        await sub.close()


async def test_a_cancelled_get_leaves_the_subscription_usable(broker: RedisBroker) -> None:
    sub = await broker.topics.subscribe("control")
    try:
        for _ in range(3):  # cancelled while blocked in XREAD, reply pending
            reading = asyncio.ensure_future(sub.get(5.0))
            await asyncio.sleep(0.05)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
        await broker.topics.publish("control", [b"after"], cap=10)
        assert await sub.get(2.0) == [b"after"]
        assert await sub.get(0.1) == []
    finally:
        await sub.close()


async def test_subscriptions_do_not_hold_pooled_connections(
    prefix: str, server: redis.Redis
) -> None:
    # a pool of one connection: blocked readers must leave it to publishes
    b = RedisBroker(f"redis://{HOST}:{PORT}/0?prefix={prefix}&max_connections=1")
    await b.connect()
    subs = [await b.topics.subscribe("events") for _ in range(3)]
    try:
        reads = [asyncio.ensure_future(s.get(5.0)) for s in subs]
        await asyncio.sleep(0.1)
        async with asyncio.timeout(2.0):
            await b.topics.publish("events", [b"e"], cap=10)
            assert await asyncio.gather(*reads) == [[b"e"]] * 3
        names = [c["name"] for c in server.client_list()]
        assert names.count(f"{prefix}:topic:events") == 3
    finally:
        await b.close()  # closes the subscriptions still open
    names = [c["name"] for c in server.client_list()]
    assert f"{prefix}:topic:events" not in names


async def test_closing_the_broker_ends_waiting_subscriptions(prefix: str) -> None:
    b = RedisBroker(f"redis://{HOST}:{PORT}/0?prefix={prefix}")
    await b.connect()
    sub = await b.topics.subscribe("control")
    waiting = asyncio.ensure_future(sub.get(60.0))
    await asyncio.sleep(0.05)
    await b.close()
    # the close ended the wait, not its minute (a bound for correctness, not a speed: this
    # took 2.5 s once on a loaded machine, 0.01 s on a quiet one)
    async with asyncio.timeout(20):
        with pytest.raises(SubscriptionClosed):
            await waiting
