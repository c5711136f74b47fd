"""RabbitMQ-specific behaviour of the broker's topics: what is declared where, replies to a
caller that is gone, and a subscription that outlives its connection (the cross-broker
contract is in tests/conformance/test_topics.py).

The exchanges and the stream are deleted after each test (tests/conftest.py records every
declaration); subscription queues are exclusive and go with their channel.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from aqueue.brokers.rabbitmq import RabbitMQBroker
from aqueue.core.errors import SubscriptionClosed
from tests.conftest import RABBIT_HOST, RABBIT_PORT, rabbit_url, require_service

pytestmark = pytest.mark.rabbitmq


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def queues(prefix: str, vhost: str = "/") -> dict[str, str]:
    """Queue name -> type, of the queues named ``<prefix>.*``."""
    out = await asyncio.to_thread(
        rabbitmqctl, "list_queues", "-p", vhost, "--no-table-headers", "name", "type"
    )
    rows = (line.split() for line in out.splitlines() if line.strip())
    return {row[0]: row[1] for row in rows if row[0].startswith(f"{prefix}.")}


@pytest.fixture
def prefix() -> str:
    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    return f"aqt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def broker(prefix: str) -> AsyncIterator[RabbitMQBroker]:
    b = RabbitMQBroker(rabbit_url(prefix))
    await b.connect()
    yield b
    await b.close()


async def test_what_is_declared_where(broker: RabbitMQBroker, prefix: str) -> None:
    await broker.topics.publish("control", [b"nobody listens"], cap=10)  # dropped: fine
    control = await broker.topics.subscribe("control")
    reply = await broker.topics.subscribe("reply.abc")
    await broker.topics.publish("events", [b"e"], cap=100)
    declared = await queues(prefix)
    assert declared.pop(f"{prefix}.topic.events.stream") == "stream"
    assert declared.pop(f"{prefix}.reply.abc") == "classic"
    [(own, kind)] = declared.items()  # the control subscription's own queue
    assert own.startswith(f"{prefix}.topic.control.") and kind == "classic"
    await control.close()
    await reply.close()
    assert await queues(prefix) == {f"{prefix}.topic.events.stream": "stream"}


async def test_a_reply_to_a_caller_that_is_gone_is_dropped_quietly(
    broker: RabbitMQBroker,
) -> None:
    for _ in range(3):
        await broker.topics.publish(f"reply.{uuid.uuid4().hex}", [b"late"], cap=10)
    sub = await broker.topics.subscribe("control")  # the connection and channels still work
    try:
        await broker.topics.publish("control", [b"still here"], cap=10)
        assert await sub.get(5.0) == [b"still here"]
    finally:
        await sub.close()


@pytest.fixture
def vhost() -> Iterator[str]:
    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    name = f"aqt-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


async def test_a_stream_subscription_resumes_after_its_connection_died(vhost: str) -> None:
    url = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/{vhost}?prefix=t"
    b = RabbitMQBroker(url)
    await b.connect()
    try:
        await b.topics.publish("events", [b"e1"], cap=100)
        sub = await b.topics.subscribe("events", since=time.time() - 60)
        assert await sub.get(5.0) == [b"e1"]
        await asyncio.to_thread(
            rabbitmqctl, "close_all_connections", "-p", vhost, "test: connection lost"
        )
        # published (on a new connection) before the subscription opens again: the stream
        # keeps it, and the subscription goes on after the last offset it read
        async with asyncio.timeout(10):  # until the broker has heard of it
            while b.channels.link.conn is not None:
                await asyncio.sleep(0.01)
        await b.topics.publish("events", [b"e2"], cap=100)
        assert await sub.get(5.0) == [b"e2"]
        await sub.close()
    finally:
        await b.close()


@pytest.mark.parametrize("since", [None, 0.0], ids=["queue", "stream"])
async def test_more_than_the_prefetch_flows_as_it_is_read(
    broker: RabbitMQBroker, since: float | None
) -> None:
    """A subscription holds at most PREFETCH unacknowledged deliveries: reading must
    acknowledge them, or the 1001st would never come."""
    await broker.topics.publish("events", [b"first"], cap=5000)  # the stream exists now
    sub = await broker.topics.subscribe("events", since=since)
    try:
        bodies = [b"e%d" % i for i in range(2500)]
        for i in range(0, len(bodies), 500):
            await broker.topics.publish("events", bodies[i : i + 500], cap=5000)
        got: list[bytes] = []
        async with asyncio.timeout(20):
            while len(got) < len(bodies) + (since is not None):
                got += await sub.get(5.0)
        assert got == ([b"first"] if since is not None else []) + bodies
    finally:
        await sub.close()


async def test_closing_the_broker_ends_waiting_subscriptions(prefix: str) -> None:
    b = RabbitMQBroker(rabbit_url(prefix))
    await b.connect()
    sub = await b.topics.subscribe("control")
    waiting = asyncio.ensure_future(sub.get(60.0))
    await asyncio.sleep(0.05)
    await b.close()
    async with asyncio.timeout(20):  # the close ended the wait, not its minute
        with pytest.raises(SubscriptionClosed):
            await waiting


async def test_a_publisher_with_another_cap_uses_the_stream_as_it_is(
    broker: RabbitMQBroker, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """RabbitMQ refuses to declare a queue again with other arguments; the stream is the
    first publisher's, and a publisher with another cap keeps its messages in it."""
    caplog.set_level(logging.DEBUG, "aqueue.broker.rabbitmq")
    other = RabbitMQBroker(rabbit_url(prefix))
    await other.connect()
    try:
        await broker.topics.publish("events", [b"a"], cap=100)
        await other.topics.publish("events", [b"b"], cap=5000)
        await other.topics.publish("events", [b"c"], cap=5000)  # its channels still work
        sub = await other.topics.subscribe("events", since=time.time() - 60)
        got: list[bytes] = []
        async with asyncio.timeout(10):
            while len(got) < 3:
                got += await sub.get(5.0)
        assert got == [b"a", b"b", b"c"]
        assert "exists with other arguments" in caplog.text
        await sub.close()
    finally:
        await other.close()
