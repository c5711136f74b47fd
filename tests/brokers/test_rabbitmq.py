"""RabbitMQ-specific behaviour: confirms, the connection as the lease, delays, dead letters,
reconnection after forced closes (docs/reliability.md row 14), a queue deleted under a consumer
(row 16) and garbage bytes pushed straight into a queue (row 17).

The cross-broker contract lives in ``tests/conformance/``. Every test uses its own prefix
(and the fault test its own vhost) and deletes what it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aio_pika
import pytest

from aqueue.brokers.rabbitmq import RabbitMQBroker
from aqueue.brokers.rabbitmq.consumer import PRIME_WAIT
from aqueue.brokers.rabbitmq.topology import LEVELS_MS, delay_level
from aqueue.core.errors import (
    BrokerError,
    ConfigurationError,
    IndeterminatePublish,
    PublishTimeout,
)
from aqueue.core.protocols import DEAD_LETTER_BODY_LIMIT, Broker, Delivery, Outgoing
from aqueue.transports.amqp.settings import parse_settings
from tests.conftest import (
    RABBIT_HOST,
    RABBIT_PORT,
    REDIS_HOST,
    REDIS_PORT,
    rabbit_url,
    require_service,
)

pytestmark = pytest.mark.rabbitmq

BASE = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}"
Make = Callable[..., Awaitable[RabbitMQBroker]]


def msg(queue: str = "q", *, eta: float | None = None, id: str | None = None) -> Outgoing:
    mid = id or uuid.uuid4().hex
    return Outgoing(id=mid, queue=queue, body=f"body-{mid}".encode(), eta=eta)


async def claim(broker: Broker, queues=("q",), limit=10, timeout=0.05) -> list[Delivery]:
    return await broker.claim(
        list(queues), limit=limit, lease_seconds=30.0, owner="t", timeout=timeout
    )


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns something truthy, within a bounded deadline."""
    async with asyncio.timeout(timeout):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.02)


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def actl(*args: str) -> str:
    return await asyncio.to_thread(rabbitmqctl, *args)


@contextlib.asynccontextmanager
async def raw_channel(vhost: str = "%2F") -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel, for what a test does behind the broker's back."""
    conn = await aio_pika.connect(f"{BASE}/{vhost}")
    try:
        yield await conn.channel()
    finally:
        await conn.close()


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Brokers sharing one fresh prefix; their queues are deleted afterwards."""
    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    prefix = f"aqt-{uuid.uuid4().hex[:12]}"
    made: list[RabbitMQBroker] = []

    async def factory(vhost: str = "%2F", **options: Any) -> RabbitMQBroker:
        broker = RabbitMQBroker(rabbit_url(prefix, f"{BASE}/{vhost}"), **options)
        await broker.connect()
        made.append(broker)
        return broker

    yield factory
    queues = sorted({"q"}.union(*(b.channels.known for b in made)))
    for broker in made:
        await broker.close()
    if made and made[0].settings.client_url.split("?")[0].endswith("%2F"):
        cleaner = RabbitMQBroker(rabbit_url(prefix, f"{BASE}/%2F"))
        try:
            await cleaner.delete_queues(queues)
        finally:
            await cleaner.close()


@pytest.fixture
async def broker(make: Make) -> RabbitMQBroker:
    return await make()


# -- settings -----------------------------------------------------------------------


def test_url_options_and_redaction() -> None:
    b = RabbitMQBroker(
        "amqps://u:s3cret@h:5671/vh?prefix=p1&queue_type=classic&junk=1&cafile=/x.pem",
        delivery_limit=7,
    )
    assert "s3cret" not in repr(b) and "***" in repr(b)
    s = b.settings
    assert (s.prefix, b.options.queue_type, b.options.delivery_limit) == ("p1", "classic", 7)
    assert "junk" not in s.client_url and "prefix" not in s.client_url
    assert "cafile=%2Fx.pem" in s.client_url and "heartbeat=30" in s.client_url
    assert b.capabilities.priorities and not b.capabilities.leases
    assert not RabbitMQBroker("amqp://h/").capabilities.priorities  # quorum: best effort
    with pytest.raises(ConfigurationError, match="unknown rabbitmq broker option"):
        RabbitMQBroker("amqp://h/", bogus=1)
    with pytest.raises(ConfigurationError, match="queue_type"):
        RabbitMQBroker("amqp://h/?queue_type=stream")
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        b.topology.check("x.dlq")


def test_tls_options_as_keywords_win_over_the_query(tmp_path: Path) -> None:
    # broker_options={"cafile": ...} was refused as an unknown option
    ca = tmp_path / "ca.pem"
    s, _ = parse_settings(
        "amqps://h/?cafile=/old.pem&certfile=/c.pem",
        {"cafile": ca, "keyfile": "/k.pem", "no_verify_ssl": True},
        owner="rabbitmq broker",
    )
    query = dict(parse_qsl(urlsplit(s.client_url).query))
    assert query["cafile"] == str(ca) and query["certfile"] == "/c.pem"
    assert query["keyfile"] == "/k.pem" and query["no_verify_ssl"] == "1"
    s, _ = parse_settings("amqps://h/", {"no_verify_ssl": False}, owner="rabbitmq broker")
    assert dict(parse_qsl(urlsplit(s.client_url).query))["no_verify_ssl"] == "0"


def test_one_settings_parser_for_every_role() -> None:
    """The transport reads the connection options and hands each role its own, typed; a
    password never survives scrubbing, percent-encoded in the URL or not."""
    s, own = parse_settings(
        "amqp://u:p%40ss@h/vh?prefix=x&cache_size=3&queue_type=classic&cafile=/c.pem",
        {"heartbeat": 5, "cache_size": None},
        owner="test role",
        own={"cache_size": int},
    )
    assert own == {"cache_size": 3}  # the broker's queue_type is not this role's: dropped
    assert (s.prefix, s.heartbeat, s.operation_timeout) == ("x", 5, 10.0)
    assert "heartbeat=5" in s.client_url and "cafile=%2Fc.pem" in s.client_url
    assert "cache_size" not in s.client_url and "queue_type" not in s.client_url
    assert "***" in s.redacted and "p%40ss" not in s.redacted
    text = s.scrub(OSError("login p@ss refused for amqp://u:p%40ss@h"))
    assert "p@ss" not in text and "p%40ss" not in text and text.startswith("OSError: ")
    with pytest.raises(ConfigurationError, match="unknown test role option"):
        parse_settings("amqp://h/", {"bogus": 1}, owner="test role")
    with pytest.raises(ConfigurationError, match="heartbeat='soon' is not a valid int"):
        parse_settings("amqp://h/?heartbeat=soon", {}, owner="test role")
    with pytest.raises(ConfigurationError, match="prefix"):
        parse_settings("amqp://h/?prefix=amq.x", {}, owner="test role")
    with pytest.raises(ConfigurationError, match="amqp://"):
        parse_settings("redis://h/", {}, owner="test role")


def test_delay_levels_never_deliver_early_and_halve_what_remains() -> None:
    assert delay_level(5) == LEVELS_MS[0] == 16
    assert delay_level(1000) == 512 and delay_level(1024) == 1024
    assert delay_level(10**12) == LEVELS_MS[-1]
    remaining, hops = 2 * 3600 * 1000, 0
    while remaining > 0:
        remaining -= delay_level(remaining)
        hops += 1
    assert hops <= 22  # two hours: about log2(7.2e6 / 16) hops, never early


async def test_unreachable_server_fails_fast_without_the_password() -> None:
    b = RabbitMQBroker("amqp://guest:hunter2@127.0.0.1:1/", connect_timeout=2)
    with pytest.raises(BrokerError) as info:
        await b.connect()
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
    await b.close()
    await b.close()  # idempotent


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An AMQP URL whose server accepts and never answers (a connection attempt waits for
    Connection.Start), and an event set once it accepted one."""
    accepted = asyncio.Event()
    server = await asyncio.start_server(lambda r, w: accepted.set(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"amqp://guest:guest@127.0.0.1:{port}/", accepted
    finally:
        server.close()


def test_closing_during_a_connection_attempt_leaves_no_connect_behind() -> None:
    """A connection attempt whose caller gave up (cancelled) is ended by ``close``, not left
    running: left, it was still pending when the event loop closed (pytest-asyncio < 1
    cancels nothing), and the garbage collector later closed aiormq's ``Connection.connect``
    mid-handshake, which raised "Event loop is closed" into whatever test ran then."""
    unraisable: list[BaseException | None] = []

    async def abandon() -> None:
        async with silent_server() as (url, accepted):
            b = RabbitMQBroker(url, connect_timeout=60)
            caller = asyncio.ensure_future(b.connect())
            await accepted.wait()
            caller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await caller
            await b.close()

    # a loop that ends as pytest-asyncio 0.26's does: nothing left pending is cancelled
    loop = asyncio.new_event_loop()
    hook, sys.unraisablehook = sys.unraisablehook, lambda u: unraisable.append(u.exc_value)
    try:
        loop.run_until_complete(abandon())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        del loop
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert unraisable == []


async def test_a_caller_still_waiting_when_close_ends_the_attempt_gets_a_broker_error() -> None:
    async with silent_server() as (url, accepted):
        b = RabbitMQBroker(url, connect_timeout=60)
        waiting = asyncio.ensure_future(b.connect())
        await accepted.wait()
        await b.close()
        with pytest.raises(BrokerError, match="closed while opening"):
            await waiting


# -- publishing -----------------------------------------------------------------------


async def test_unroutable_publish_raises_then_redeclares(broker: RabbitMQBroker) -> None:
    await broker.publish([msg()])  # declares the queue
    async with raw_channel() as ch:
        await ch.queue_delete(broker.topology.work("q"))
    with pytest.raises(BrokerError, match="could not route"):
        await broker.publish([msg()])  # confirmed as unroutable: never silently dropped
    m = msg()
    assert await broker.publish([m]) == [True]  # declared again
    [d] = await claim(broker)
    assert d.id == m.id and await d.ack()


async def test_blocked_connection_publish_fails_with_a_clear_error(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = await make(operation_timeout=0.3)

    async def stuck(*args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()  # what a publish does while a resource alarm lasts

    monkeypatch.setattr(broker.channels, "send", stuck)
    monkeypatch.setattr(broker.channels, "blocked", lambda: True)
    t0 = time.monotonic()
    with pytest.raises(PublishTimeout, match="resource alarm"):
        await broker.publish([msg()])
    assert time.monotonic() - t0 < 2


async def test_dedupe_across_processes_with_redis(make: Make) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    a = await make(dedupe_url=url, dedupe_ttl=60)
    b = await make(
        dedupe_url=url, dedupe_ttl=60
    )  # another producer: the local window cannot see it
    m = msg()
    assert await a.publish([m]) == [True]
    assert await b.publish([m]) == [False]
    assert await b.size("q") == 1


async def test_publish_during_a_connection_loss_is_indeterminate_then_resendable(
    broker: RabbitMQBroker,
) -> None:
    await broker.publish([msg()])  # declared, channels open
    [first] = await claim(broker)
    await first.ack()
    batch = [msg() for _ in range(300)]
    publishing = asyncio.create_task(broker.publish(batch))
    pub = broker.channels.live("pub")
    assert pub is not None
    underlay = await pub.get_underlay_channel()
    async with asyncio.timeout(5):
        while not underlay.confirmations:  # wait until publishes are out, unconfirmed
            await asyncio.sleep(0)
    assert broker.channels.link.conn is not None
    await broker.channels.link.conn.close()
    try:
        await publishing
        pytest.skip("every confirm arrived before the close; nothing to observe")
    except IndeterminatePublish as exc:
        assert "may or may not be stored" in str(exc)
    stored = await broker.publish(batch)  # re-send: unconfirmed ids are published again
    assert any(stored)
    seen: list[str] = []
    while got := await claim(broker, limit=500, timeout=0.5):
        seen += [d.id for d in got]
        for d in got:
            await d.ack()
    assert set(seen) == {m.id for m in batch}  # nothing lost; duplicates are possible


# -- the connection is the lease ------------------------------------------------------


async def test_dead_holder_redelivers_at_once_and_is_fenced(make: Make) -> None:
    holder, other = await make(), await make()
    m = msg()
    await holder.publish([m])
    [stale] = await claim(holder)
    waiting = asyncio.create_task(claim(other, timeout=5.0))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    t0 = time.monotonic()
    assert holder.channels.link.conn is not None
    await holder.channels.link.conn.close()  # the worker died: its connection is gone
    [fresh] = await waiting
    assert time.monotonic() - t0 < 2.0  # immediate, no lease to wait for
    assert (fresh.id, fresh.delivery_count) == (m.id, 2)
    assert holder.renew([stale.lease], 30.0) == [stale.lease]
    assert await stale.ack() is False
    assert await stale.release(executed=True) is False
    assert await fresh.requeue(b"retry", eta=None) is True
    [again] = await claim(other, timeout=5.0)
    assert (again.id, again.body, again.delivery_count) == (m.id, b"retry", 1)
    assert await stale.dead_letter("x") is False  # a late holder cannot touch the retry
    assert await other.size("q") == 1
    assert other.renew([again.lease], 30.0) == []
    assert await again.ack() is True
    assert other.renew([again.lease], 30.0) == [again.lease]
    assert await other.size("q") == 0


async def test_a_process_that_stops_claiming_hands_its_buffer_back(make: Make) -> None:
    """An embedded worker that stopped while its app lives on must not sit on messages."""
    stopped = await make(idle_timeout=0.3, prefetch=10)
    other = await make(prefetch=10)  # no prefetch raise: its consumer restart could count
    ms = [msg() for _ in range(3)]
    await stopped.publish(ms)
    [d] = await claim(stopped, limit=1)  # the other two are buffered here
    assert await d.release(executed=False) is True  # back into the buffer, no round trip
    assert stopped.consumers.local("q") == 3
    t0 = time.monotonic()
    got: list[Delivery] = []
    async with asyncio.timeout(5):
        while len(got) < 3:
            got += await claim(other, limit=3, timeout=1.0)
    assert time.monotonic() - t0 < 2.0
    assert sorted(x.id for x in got) == sorted(m.id for m in ms)
    assert [x.delivery_count for x in got] == [2, 2, 2]  # one requeue each, none ran
    assert stopped.consumers.local("q") == 0 and not stopped.consumers.consumers
    assert await d.ack() is False
    for x in got:
        assert await x.ack()


async def test_a_starting_consumer_hands_out_what_it_received_at_once(make: Make) -> None:
    """RabbitMQ delivers right after consume-ok, while the claim that started the consumer
    has not run again yet: those deliveries count for priming, so the claim returns them
    at once instead of waiting ``PRIME_WAIT`` for messages that already arrived."""
    producer = await make()
    ms = [msg() for _ in range(50)]
    await producer.publish(ms)
    for _ in range(3):  # a fresh consumer each time
        fresh = await make(prefetch=50)
        t0 = time.monotonic()
        got = await claim(fresh, limit=50, timeout=5.0)
        waited = time.monotonic() - t0
        assert len(got) == 50
        assert waited < PRIME_WAIT / 2, f"claim waited {waited:.2f}s for its own deliveries"
        await fresh.close()  # all 50 go back, for the next round


# -- dead letters and delays ----------------------------------------------------------


async def test_delivery_limit_lands_in_the_dlq_with_a_reason(make: Make) -> None:
    broker = await make(delivery_limit=2)
    m = msg()
    await broker.publish([m])
    counts = []
    while got := await claim(broker, timeout=0.5):
        [d] = got
        counts.append(d.delivery_count)
        await d.release(executed=True)  # the worker crashed, again and again
    assert counts == [1, 2, 3]  # x-delivery-limit 2: the third return dead-letters it
    letters = await eventually(lambda: broker.dead_letters("q"))
    assert [(x.id, x.reason, x.body) for x in letters] == [(m.id, "delivery_limit", m.body)]
    assert letters[0].at > time.time() - 60
    # reading dead letters does not consume them
    assert len(await broker.dead_letters()) == 1


async def test_dead_letters_newest_first_and_limited(broker: RabbitMQBroker) -> None:
    ms = [msg() for _ in range(3)]
    await broker.publish(ms)
    for d in await claim(broker, limit=3):
        await d.dead_letter(f"r-{d.id}")
        await asyncio.sleep(0.002)
    letters = await broker.dead_letters("q", limit=2)
    assert len(letters) == 2 and letters[0].at >= letters[1].at
    assert [x.reason for x in letters] == [f"r-{m.id}" for m in reversed(ms)][:2]


async def test_countdown_waits_on_the_broker_not_in_the_worker(broker: RabbitMQBroker) -> None:
    sent = time.time()
    # 3 s: the counts below are read while the message is still in its delay queue (when
    # it moves to the work queue, at-least-once dead-lettering counts it in both for a
    # moment: a loaded machine read a size of 2 with 1 s)
    m = msg(eta=sent + 3.0)
    await broker.publish([m])
    assert await claim(broker, timeout=0.2) == []
    # the message sits in a delay queue on the server; this process holds nothing
    assert not any(broker.consumers.buffers.values()) and not broker.consumers.inflight
    levels = [broker.topology.delay("q", lvl) for lvl in LEVELS_MS]
    assert sum((await broker.channels.probe(levels)).values()) == 1
    assert await broker.size("q") == 1
    got = await claim(broker, timeout=8.0)
    assert [d.id for d in got] == [m.id] and got[0].delivery_count == 1
    assert time.time() >= sent + 3.0
    await got[0].ack()


async def test_far_future_eta_parks_in_a_long_delay_queue(broker: RabbitMQBroker) -> None:
    m = msg(eta=time.time() + 2 * 3600)
    await broker.publish([m])
    level = delay_level(2 * 3600 * 1000)
    assert level == 2**22  # ~70 minutes: the first of about 20 hops
    counts = await broker.channels.probe(
        [broker.topology.delay("q", level), broker.topology.work("q")]
    )
    assert counts == {broker.topology.delay("q", level): 1, broker.topology.work("q"): 0}
    assert await claim(broker, timeout=0.2) == []
    assert await broker.purge("q") == 1
    assert await broker.size("q") == 0


async def test_classic_queues_keep_priorities(make: Make) -> None:
    broker = await make(queue_type="classic")
    low, high = msg(), msg()
    await broker.publish([Outgoing(low.id, "q", low.body, priority=1)])
    await broker.publish([Outgoing(high.id, "q", high.body, priority=8)])
    got = await claim(broker, limit=2)
    assert [d.id for d in got] == [high.id, low.id]
    assert [d.delivery_count for d in got] == [1, 1]


async def test_channels_the_server_closes_never_free_a_live_channel_number(
    broker: RabbitMQBroker,
) -> None:
    """Dead-letter scans and queue probes of missing queues get their channels closed by
    the server while other channels open on the same connection. aiormq 7.2.1 freed a
    closed channel's number twice, the second time under a new channel that had taken it,
    so the next channel reused a number still open on the server ("CHANNEL_ERROR - second
    'channel.open' seen") and the connection dropped: a dashboard on RabbitMQ lost its
    connection under a fresh-clone run. The floor is aiormq 7.2.2, which fixed it."""
    for n in range(2):
        await broker.publish([msg(f"q{n}")])  # known queues without dead-letter queues
    missing = [f"missing-{uuid.uuid4().hex}" for _ in range(2)]

    async def scan() -> None:
        for _ in range(80):  # fails 12 runs in 12 on aiormq 7.2.1
            assert await broker.dead_letters() == []

    async def probe() -> None:
        for _ in range(240):
            assert await broker.channels.probe(missing) == {}

    await asyncio.gather(scan(), scan(), scan(), probe(), probe())
    assert [await broker.size(f"q{n}") for n in range(2)] == [1, 1]


# -- bad input --------------------------------------------------------------------------


async def test_garbage_pushed_straight_into_the_queue_is_delivered_as_bytes(
    broker: RabbitMQBroker,
) -> None:
    await broker.publish([msg()])  # declares the queue
    [first] = await claim(broker)
    await first.ack()
    garbage = b"\x00\xff\xfe not an aqueue message"
    async with raw_channel() as ch:  # no headers, no content type, an id of aiormq's making
        await ch.default_exchange.publish(aio_pika.Message(garbage), broker.topology.work("q"))
    [d] = await claim(broker, timeout=5.0)
    assert d.body == garbage and d.delivery_count == 1 and d.id
    assert await d.dead_letter("decode_error") is True  # what the worker does with it
    [letter] = await broker.dead_letters("q")
    assert (letter.reason, letter.body) == ("decode_error", garbage)


async def test_a_huge_message_is_dead_lettered_as_its_start_and_size(make: Make) -> None:
    """Defect 6: a dead letter keeps the first ``DEAD_LETTER_BODY_LIMIT`` bytes of the body,
    its original size and the reason, not the whole message (a 60 MB garbage message took
    67 MB in the dead-letter queue). RabbitMQ's own dead-lettering (the quorum delivery
    limit) stores the whole message; listing shows it cut the same way."""
    broker = await make()
    await broker.publish([msg()])  # declares the queue
    [first] = await claim(broker)
    await first.ack()
    garbage = os.urandom(4 * 1024 * 1024)
    async with raw_channel() as ch:
        await ch.default_exchange.publish(aio_pika.Message(garbage), broker.topology.work("q"))
    [d] = await claim(broker, timeout=5.0)
    assert len(d.body) == len(garbage)
    assert await d.dead_letter("decode_error") is True
    [letter] = await broker.dead_letters("q")
    assert (letter.reason, letter.size) == ("decode_error", len(garbage))
    assert letter.body == garbage[:DEAD_LETTER_BODY_LIMIT]
    async with raw_channel() as ch:  # what RabbitMQ stores: the start only
        dlq = await ch.declare_queue(broker.topology.dlq("q"), passive=True)
        stored = await dlq.get(no_ack=False)
        assert stored is not None and len(stored.body) == DEAD_LETTER_BODY_LIMIT
        await stored.nack(requeue=True)

    native = await make(delivery_limit=1)
    big = Outgoing("big", "native", garbage)
    await native.publish([big])
    while got := await claim(native, queues=("native",), timeout=0.5):
        await got[0].release(executed=True)  # the worker died with it: RabbitMQ gives up
    [letter] = await eventually(lambda: native.dead_letters("native"))
    assert (letter.id, letter.reason, letter.size) == ("big", "delivery_limit", len(garbage))
    assert letter.body == garbage[:DEAD_LETTER_BODY_LIMIT]


# -- faults (docs/reliability.md) ------------------------------------------------------------


async def test_queue_deleted_under_a_consumer_is_redeclared(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 16: re-declared and consumed again, never silently idle."""
    consumer, producer = await make(), await make()
    await producer.publish([msg()])
    [d] = await claim(consumer, timeout=5.0)
    await d.ack()
    waiting = asyncio.create_task(claim(consumer, timeout=10.0))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    async with raw_channel() as ch:
        await ch.queue_delete(consumer.topology.work("q"))
    m = msg()

    async def publish() -> bool:
        try:
            return (await producer.publish([m]))[0]
        except BrokerError:  # the producer's cached declaration is stale once: re-declared
            await producer.dedupe.discard([m.id])  # type: ignore[union-attr]
            return False

    await eventually(publish)
    got: list[Delivery] = []
    with contextlib.suppress(BrokerError):  # RabbitMQ may drop the connection mid-race
        got = await waiting
    async with asyncio.timeout(10):
        while not got:
            with contextlib.suppress(BrokerError):
                got = await claim(consumer, timeout=1.0)
    assert [x.id for x in got] == [m.id]
    print(
        f"\nrow 16 (queue deleted under a consumer): consuming again after "
        f"{time.monotonic() - t0:.2f}s"
    )
    assert time.monotonic() - t0 < 10.0
    assert "declaring it again" in caplog.text or "starting it again" in caplog.text


async def test_watchdog_restarts_a_consumer_that_receives_nothing(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 16's quiet variant: RabbitMQ 3.10 can leave a consumer registered that never
    receives (a queue deleted and declared again before the channel noticed). Simulated by
    cancelling the consumer behind the broker's back; the idle-claim watchdog restarts it."""
    broker = await make(watchdog_interval=0.2)
    assert await claim(broker) == []  # consumer started
    consumer = broker.consumers.consumers["q"]
    underlay = broker.channels.live_consuming()
    assert underlay is not None
    await underlay.basic_cancel(consumer.tag)  # no Basic.Cancel from the server: unnoticed
    m = msg()
    await broker.publish([m])
    t0 = time.monotonic()
    got = await claim(broker, timeout=5.0)
    assert [d.id for d in got] == [m.id]
    assert time.monotonic() - t0 < 3.0
    assert "received nothing while 1 message(s) were ready" in caplog.text


async def test_consumer_timeout_closure_is_explained(
    broker: RabbitMQBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery held past RabbitMQ's consumer_timeout (30 min by default on 3.10, where
    the x-consumer-timeout argument is ignored) closes the channel: it must not look like
    an unexplained duplicate."""
    await broker.publish([msg()])
    [d] = await claim(broker)
    exc = RuntimeError(
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. "
        "Timeout value used: 1800000 ms."
    )
    with caplog.at_level(logging.ERROR, logger="aqueue.broker.rabbitmq"):
        # what aio-pika reports when RabbitMQ closes the channel with that error
        broker.channels.consuming_closed(broker.channels.live_consuming(), exc)
    assert "consumer_timeout" in caplog.text and "run again as a new attempt" in caplog.text
    assert broker.renew([d.lease], 30.0) == [d.lease]
    assert await d.ack() is False


@pytest.fixture
def vhost() -> Any:
    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    name = f"aqt-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


async def test_force_closed_connections_lose_nothing(make: Make, vhost: str) -> None:
    """Row 14: `rabbitmqctl close_all_connections` (on a private vhost) while producing and
    consuming: unacked deliveries come back, consumers re-register, publishes are confirmed
    or raise. Reports lost / N, extra / N and recovery seconds.

    The consumer models a worker that runs whatever it claimed: a delivery claimed before a
    kill still "runs" (its ack is refused) and runs again when redelivered, so extra
    executions are bounded by what was claimed at each kill (prefetch 20). To make every
    kill land while deliveries are held, the consumer is paused around it."""
    n, kills = 200, 2
    consumer = await make(vhost, prefetch=20)
    producer = await make(vhost)
    ids = [uuid.uuid4().hex for _ in range(n)]
    executed: list[str] = []
    claimed_at: list[float] = []
    raised = 0
    done = asyncio.Event()
    running = asyncio.Event()
    running.set()

    async def consume() -> None:
        while not done.is_set():
            try:
                got = await claim(consumer, limit=20, timeout=0.2)
            except BrokerError:
                await asyncio.sleep(0.02)
                continue
            if got:
                claimed_at.append(time.monotonic())
            for d in got:
                await running.wait()
                executed.append(d.id)  # "ran" before the ack: a refused ack means a rerun
                await asyncio.sleep(0.002)
                await d.ack()
            if len(set(executed)) == n:
                done.set()

    async def produce() -> None:
        nonlocal raised
        for i in range(0, n, 10):
            batch = [Outgoing(x, "q", x.encode()) for x in ids[i : i + 10]]
            while True:
                try:
                    await producer.publish(batch)
                    break
                except (BrokerError, PublishTimeout):  # includes IndeterminatePublish
                    raised += 1
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)  # still producing when the kills come

    tasks = [asyncio.create_task(consume()), asyncio.create_task(produce())]
    recoveries: list[float] = []
    for k in range(kills):
        await eventually(lambda k=k: _true(len(set(executed)) >= n * (k + 1) // (kills + 2)))
        running.clear()  # deliveries claimed now stay unacknowledged through the kill
        lost_at: list[float] = []
        assert consumer.channels.link.conn is not None
        consumer.channels.link.conn.close_callbacks.add(lambda *_: lost_at.append(time.monotonic()))
        await actl("close_all_connections", "-p", vhost, "aqueue fault test")
        await eventually(lambda: _true(bool(lost_at)))
        resumed_at = time.monotonic()
        running.set()
        first = await eventually(lambda: _first_after(claimed_at, resumed_at))
        recoveries.append(first - resumed_at)
    async with asyncio.timeout(20):
        await done.wait()
    await asyncio.sleep(0.5)  # let late redeliveries show up as extra executions
    done.set()
    await asyncio.gather(*tasks)
    while got := await claim(consumer, limit=50, timeout=0.3):
        executed += [d.id for d in got]
        for d in got:
            await d.ack()
    lost = n - len(set(executed) & set(ids))
    extra = len(executed) - len(set(executed))
    print(
        f"\nrow 14 (RabbitMQ force-closed x{kills}): lost {lost}/{n}, extra {extra}/{n}, "
        f"consuming again {max(recoveries):.2f}s max after resuming, publishes raised {raised}"
    )
    assert lost == 0
    assert extra <= kills * 20  # at most what was claimed at each kill
    assert max(recoveries) < 5.0
    assert await consumer.size("q") == 0


async def _true(value: bool) -> bool:
    return value


async def _first_after(times: list[float], t: float) -> float | None:
    later = [x for x in times if x > t]
    return later[0] if later else None


async def test_queue_expires_lets_rabbitmq_delete_unused_queues(make: Make) -> None:
    """``queue_expires`` sets ``x-expires`` on every queue it declares (work, delay, dead
    letters): RabbitMQ deletes them, messages and all, once unused that long."""
    broker = await make(queue_expires=1.0)
    assert broker.topology.work_args("q")["x-expires"] == 1000
    assert broker.topology.dlq_args()["x-expires"] == 1000
    assert broker.topology.delay_args("q", 256)["x-expires"] == 1000
    await broker.publish([Outgoing(id=uuid.uuid4().hex, queue="q", body=b"{}")])
    assert await broker.size("q") == 1
    observer = await make()  # another process's view: nothing of its own held
    deadline = time.monotonic() + 15
    while await observer.size("q") and time.monotonic() < deadline:
        await asyncio.sleep(0.25)  # RabbitMQ announces no expiry: look again
    assert await observer.size("q") == 0
    with pytest.raises(ConfigurationError, match="queue_expires"):
        RabbitMQBroker("amqp://h/?queue_expires=0")
