"""Redis-specific behaviour of RedisBroker and RedisBackend, against the real server.

The cross-broker contract is in tests/conformance/; this file covers what only the Redis
implementation has: key layout, dedupe markers, fencing tokens across hand-backs, the
wake-up chain, cancellation, pub/sub multiplexing and reconnection, and redaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from aqueue.backends.redis import RedisBackend
from aqueue.brokers.redis import RedisBroker
from aqueue.brokers.redis import broker as redis_broker_module
from aqueue.brokers.redis import delivery as redis_delivery_module
from aqueue.brokers.redis import wait as redis_wait_module
from aqueue.core import states
from aqueue.core.errors import BackendError, BrokerError, ConfigurationError
from aqueue.core.protocols import (
    DEAD_LETTER_BODY_LIMIT,
    Broker,
    Delivery,
    Lease,
    Outgoing,
    ResultBackend,
    SharedThrottle,
)
from aqueue.transports.redis import redispy
from aqueue.transports.redis.redispy import pack_command
from aqueue.transports.redis.scripts import Script, pack_script_call
from aqueue.transports.redis.settings import (
    REDIS_PY_OPTIONS,
    TLS_OPTIONS,
    accepted_options,
    parse_settings,
)
from tests.conftest import assert_none_before
from tests.faults.redis_server import RedisServer, running_server

pytestmark = pytest.mark.redis

HOST, PORT = "127.0.0.1", 6379
LEASE = 0.2


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"aqt-redis-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis(host=HOST, port=PORT)
    try:
        keys = list(client.scan_iter(match=f"{name}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


@pytest.fixture
def url(prefix: str) -> str:
    return f"redis://{HOST}:{PORT}/0?prefix={prefix}"


@pytest.fixture
async def broker(url: str) -> AsyncIterator[RedisBroker]:
    b = RedisBroker(url)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def backend(url: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(url)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis(host=HOST, port=PORT)
    yield client
    client.close()


def msg(queue: str = "q", *, priority: int = 0, eta: float | None = None, id: str | None = None):
    mid = id or uuid.uuid4().hex
    return Outgoing(id=mid, queue=queue, body=f"body-{mid}".encode(), priority=priority, eta=eta)


async def claim(b: Broker, queues=("q",), limit=10, lease=30.0, timeout=0.0) -> list[Delivery]:
    return await b.claim(list(queues), limit=limit, lease_seconds=lease, owner="t", timeout=timeout)


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the tests that count the server's blocked clients: on the
    shared one, the other test processes' waits change that count under them (a failed
    make test waited 5 s for an exact count)."""
    with running_server(tmp_path_factory.mktemp("redis-alone")) as server:
        yield server


@pytest.fixture
def alone_raw(alone: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host=HOST, port=alone.port)
    yield client
    client.close()


@pytest.fixture
async def alone_broker(alone: RedisServer, prefix: str) -> AsyncIterator[RedisBroker]:
    b = RedisBroker(f"redis://{HOST}:{alone.port}/0?prefix={prefix}")
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


def blocked_clients(raw: redis.Redis) -> int:
    return int(raw.info("clients")["blocked_clients"])


async def until_blocked(raw: redis.Redis, count: int) -> None:
    """Until exactly ``count`` clients are blocked in a wait (BLPOP) on the server."""
    async with asyncio.timeout(5):
        while blocked_clients(raw) != count:
            await asyncio.sleep(0.002)


# -- protocol shape and layout ---------------------------------------------------------------


async def test_implements_the_protocols(broker: RedisBroker, backend: RedisBackend) -> None:
    assert isinstance(broker, Broker) and isinstance(backend, ResultBackend)
    caps = broker.capabilities
    assert caps.delayed_delivery and caps.priorities and caps.dead_letters
    assert caps.shared and caps.leases


async def test_keys_are_prefixed_and_hash_tagged_per_queue(
    broker: RedisBroker, prefix: str, raw: redis.Redis
) -> None:
    await broker.publish([msg("jobs"), msg("jobs", eta=time.time() + 60)])
    [d] = await claim(broker, ("jobs",))
    keys = {k.decode() for k in raw.scan_iter(match=f"{prefix}*")}
    tag = f"{prefix}:{{q:jobs}}:"
    names = {k.removeprefix(tag) for k in keys if k.startswith(tag)}
    assert len(names) == len(keys)  # every key carries the queue's hash tag
    # the claimed message left "ready" empty (gone); nobody waited on "notify"
    assert names - {"notify"} == {
        "delayed",
        "inflight",
        "body",
        "score",
        "count",
        "epoch",
        "seq",
        "dedupe",
    }
    assert raw.zcard(f"{tag}dedupe") == 2
    await d.ack()


async def test_connect_and_close_are_idempotent(url: str) -> None:
    b = RedisBroker(url)
    await b.close()  # before connect: nothing to do
    await b.connect()
    await b.connect()
    assert await b.size("q") == 0
    await b.close()
    await b.close()


async def test_no_io_before_connect() -> None:
    # a port where nothing listens: constructing must not touch it
    b = RedisBroker("redis://127.0.0.1:1/0")
    r = RedisBackend("redis://127.0.0.1:1/0")
    assert "127.0.0.1:1" in repr(b) and "127.0.0.1:1" in repr(r)


# -- publish ---------------------------------------------------------------------------------


async def test_publish_many_in_one_call_and_idempotent(broker: RedisBroker) -> None:
    batch = [msg() for _ in range(1200)]  # more than one script chunk
    dup = msg(id=batch[0].id)
    assert await broker.publish([*batch, dup]) == [True] * 1200 + [False]
    assert await broker.size("q") == 1200
    assert await broker.publish(batch[:3]) == [False] * 3


async def test_completed_id_is_refused_within_dedupe_ttl(url: str, broker: RedisBroker) -> None:
    m = msg()
    await broker.publish([m])
    [d] = await claim(broker)
    assert await d.ack()
    assert await broker.publish([m]) == [False]  # finished, but still remembered
    assert await claim(broker) == []
    no_dedupe = RedisBroker(url, dedupe_ttl=0)
    try:
        assert await no_dedupe.publish([m]) == [True]  # only "still queued" is refused now
        assert await no_dedupe.publish([m]) == [False]
    finally:
        await no_dedupe.close()


async def test_priority_order_clamped_and_fifo(broker: RedisBroker) -> None:
    ms = [msg(priority=p) for p in (0, 3, -2, 10**9, 3, -(10**9), 0)]
    for m in ms:
        await broker.publish([m])
    got = await claim(broker, limit=10)
    # 10**9 is clamped to the top level, -(10**9) to the bottom; equal priorities keep FIFO
    order = [ms[3], ms[1], ms[4], ms[0], ms[6], ms[2], ms[5]]
    assert [d.id for d in got] == [m.id for m in order]


async def test_released_message_keeps_its_place(broker: RedisBroker) -> None:
    first, second, high = msg(), msg(), msg(priority=5)
    await broker.publish([first, second])
    [d] = await claim(broker, limit=1)
    assert d.id == first.id
    await broker.publish([high])
    assert await d.release(executed=True)
    got = await claim(broker, limit=3)
    assert [x.id for x in got] == [high.id, first.id, second.id]


async def test_multi_queue_order(broker: RedisBroker) -> None:
    await broker.publish([msg("low"), msg("low"), msg("high")])
    got = await claim(broker, ("high", "low"), limit=2)
    assert [d.queue for d in got] == ["high", "low"]
    got = await claim(broker, ("high", "low", "high"), limit=5)  # duplicates are ignored
    assert [d.queue for d in got] == ["low"]


# -- delays, leases, fencing -----------------------------------------------------------------


async def test_delayed_not_early_then_on_time_without_publish(broker: RedisBroker) -> None:
    due = time.time() + 0.4
    m = msg(eta=due)
    assert await broker.publish([m]) == [True]
    got = await claim(broker, timeout=0.1)
    assert_none_before(got, due)
    if not got:
        async with asyncio.timeout(5):
            got = await claim(broker, timeout=3.0)
    assert [d.id for d in got] == [m.id]
    # server time decides; allow Redis's 100 ms timer granularity and clock rounding
    assert time.time() >= due - 0.05
    assert time.time() < due + 1.0


async def test_publishing_a_delayed_message_shortens_an_idle_wait(broker: RedisBroker) -> None:
    waiter = asyncio.create_task(claim(broker, timeout=4.0))
    await asyncio.sleep(0.1)  # the claimer is waiting with nothing due
    t0 = time.monotonic()
    await broker.publish([msg(eta=time.time() + 0.3)])
    async with asyncio.timeout(5):
        got = await waiter
    assert len(got) == 1 and time.monotonic() - t0 < 2.0


async def test_lease_expiry_reclaims_with_new_token_and_fences(broker: RedisBroker) -> None:
    await broker.publish([msg()])
    [stale] = await claim(broker, lease=LEASE)
    async with asyncio.timeout(5):
        [fresh] = await claim(broker, timeout=3.0)  # wakes when the lease runs out
    assert fresh.id == stale.id and fresh.delivery_count == 2
    assert fresh.lease.token != stale.lease.token
    assert await stale.ack() is False
    assert await stale.dead_letter("late") is False
    assert await stale.requeue(b"x", eta=None) is False
    assert broker.renew([stale.lease, fresh.lease], 30.0) == [stale.lease]
    assert await fresh.ack() is True
    assert await broker.dead_letters("q") == []


async def test_expired_but_unclaimed_lease_still_belongs_to_its_holder(
    broker: RedisBroker,
) -> None:
    await broker.publish([msg()])
    [d] = await claim(broker, lease=LEASE)
    await asyncio.sleep(LEASE * 2)  # let it expire; nobody claims it meanwhile
    assert await claim(broker, ("other",)) == []  # a claim elsewhere moves nothing here
    assert broker.renew([d.lease], 30.0) == []  # the holder keeps it
    assert await claim(broker) == []
    assert await d.ack() is True


async def test_release_unexecuted_does_not_count_and_kills_the_old_token(
    broker: RedisBroker,
) -> None:
    await broker.publish([msg()])
    [d] = await claim(broker)
    assert await d.release(executed=False)
    # a late heartbeat cannot grab it back (nor is it lost: its holder handed it back)
    assert broker.renew([d.lease], 30.0) == []
    assert await d.ack() is False
    [again] = await claim(broker)
    assert again.delivery_count == 1
    assert await again.release(executed=True)
    [third] = await claim(broker)
    assert third.delivery_count == 2
    assert await third.ack()


async def test_requeue_replaces_body_resets_count_and_fences_old_holders(
    broker: RedisBroker,
) -> None:
    await broker.publish([msg()])
    [stale] = await claim(broker, lease=LEASE)
    async with asyncio.timeout(5):
        [holder] = await claim(broker, timeout=3.0)
    assert holder.delivery_count == 2
    due = time.time() + 0.2
    assert await holder.requeue(b"v2", eta=due)
    got = await claim(broker)  # delayed
    assert_none_before(got, due)
    async with asyncio.timeout(5):
        [again] = got or await claim(broker, timeout=3.0)
    assert (again.body, again.delivery_count) == (b"v2", 1)
    # the first holder's token equalled count 1 once; tokens are never reused
    assert await stale.ack() is False
    assert await holder.ack() is False
    assert await again.requeue(b"v3", eta=None)
    [now] = await claim(broker)
    assert (now.body, now.delivery_count) == (b"v3", 1)
    assert await now.ack()


async def test_dead_letters_newest_first_across_queues_and_capped(url: str) -> None:
    b = RedisBroker(url, dead_letter_limit=2)
    try:
        ms = [msg("a"), msg("b"), msg("a"), msg("a")]
        for m in ms:
            await b.publish([m])
            [d] = await claim(b, (m.queue,))
            assert await d.dead_letter(f"why-{m.id[:4]}")
        assert await b.size("a") == 0
        a = await b.dead_letters("a")
        assert [(x.id, x.reason, x.body, x.queue) for x in a] == [
            (m.id, f"why-{m.id[:4]}", m.body, "a") for m in (ms[3], ms[2])
        ]  # capped at 2, newest first
        every = await b.dead_letters()
        assert [x.id for x in every] == [ms[3].id, ms[2].id, ms[1].id]
        assert [x.id for x in await b.dead_letters(limit=1)] == [ms[3].id]
        assert every[0].at >= every[-1].at > time.time() - 60
    finally:
        await b.close()


async def test_dead_letters_keep_the_start_of_a_big_body_and_its_size(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # issue 11, defect 6: a 60 MB garbage message took 67 MB in the dead-letter list
    big = os.urandom(4 * 1024 * 1024)
    small = msg()
    await broker.publish([Outgoing(id="big", queue="q", body=big), small])
    for d in await claim(broker, limit=2):
        assert await d.dead_letter("undecodable")
    letters = {x.id: x for x in await broker.dead_letters("q")}
    assert letters["big"].body == big[:DEAD_LETTER_BODY_LIMIT]
    assert letters["big"].size == len(big)
    assert (letters[small.id].body, letters[small.id].size) == (small.body, len(small.body))
    used = raw.memory_usage(f"{prefix}:{{q:q}}:dead")
    assert used is not None and used < 2 * DEAD_LETTER_BODY_LIMIT


async def test_dead_letters_written_before_bodies_were_cut_are_read(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # the entry layout before sizes: "<at>\n<len(id)>\n<len(reason)>\n" id reason body
    raw.lpush(f"{prefix}:{{q:q}}:dead", b"1700000000.5\n3\n3\noldwhy2\nbody")
    [letter] = await broker.dead_letters("q")
    assert (letter.id, letter.reason, letter.body) == ("old", "why", b"2\nbody")
    assert (letter.size, letter.at) == (6, 1700000000.5)


async def test_purge_removes_waiting_messages_and_their_dedupe_markers(
    broker: RedisBroker,
) -> None:
    ready, delayed, held = msg(), msg(eta=time.time() + 60), msg()
    await broker.publish([held])
    [d] = await claim(broker)
    await broker.publish([ready, delayed])
    assert await broker.size("q") == 3
    assert await broker.purge("q") == 2
    assert await broker.size("q") == 1
    assert await broker.publish([ready]) == [True]  # purged ids may be sent again
    assert await d.ack()


# -- renew -----------------------------------------------------------------------------------


async def test_renew_from_many_threads(broker: RedisBroker) -> None:
    # a lease a loaded machine can keep: each thread's first renewal also takes a connection
    # of the sync pool, and a 0.2 s lease ran out before it on a loaded make test
    lease = 1.5
    await broker.publish([msg() for _ in range(20)] + [msg("other") for _ in range(5)])
    held = await claim(broker, ("q", "other"), limit=25, lease=lease)
    assert len(held) == 25
    leases = [d.lease for d in held]
    stop = threading.Event()
    lost: list[object] = []
    errors: list[BaseException] = []

    def heartbeat(part: int) -> None:
        try:
            while True:
                lost.extend(broker.renew(leases[part::4], lease))
                if stop.wait(lease / 5):
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=heartbeat, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        assert await claim(broker, ("q", "other"), lease=lease, timeout=lease * 2) == []
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert lost == [] and errors == []
    assert all(await asyncio.gather(*(d.ack() for d in held)))


async def test_renew_of_unknown_leases_reports_them_lost(url: str, broker: RedisBroker) -> None:
    await broker.publish([msg()])
    [d] = await claim(broker)
    assert await d.ack()
    other = RedisBroker(url)  # another worker, which never held it
    try:
        assert other.renew([d.lease], 30.0) == [d.lease]
        assert other.renew([Lease(id="nobody", queue="q", token=1)], 30.0) != []
        assert other.renew([], 30.0) == []
    finally:
        await other.close()


async def test_a_renewal_behind_its_holders_settlements_reports_none_lost(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # Issue 11, defect 9: the heartbeat lists its leases, then the tasks settle, then the
    # renewal reaches Redis (here simply after them; tests/faults has it behind a freeze)
    await broker.publish([msg() for _ in range(5)])
    held = await claim(broker, limit=5)
    snapshot = [d.lease for d in held]
    assert await held[0].ack()
    assert await held[1].dead_letter("poison")
    assert await held[2].release(executed=True)
    assert await held[3].requeue(b"again", eta=None)
    assert broker.renew(snapshot, 30.0) == []  # settled by their holder: not lost
    # ...and not extended either: only the one still held is in flight
    inflight = raw.zrange(f"{prefix}:{{q:q}}:inflight", 0, -1)
    assert inflight == [held[4].id.encode()]
    # a settlement that was refused (the lease was lost before) does not hide the loss
    assert await held[2].ack() is False
    assert broker.renew([held[2].lease], 30.0) == [held[2].lease]
    assert await held[4].ack()


# -- batching and waiting --------------------------------------------------------------------


async def test_concurrent_settlements_are_batched_and_correct(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    await broker.publish([msg() for _ in range(200)] + [msg("other") for _ in range(50)])
    held = await claim(broker, ("q", "other"), limit=250)
    calls = 0
    real = redis_delivery_module.run_scripts

    async def counting(client, script_calls):
        nonlocal calls
        calls += 1
        return await real(client, script_calls)

    monkeypatch.setattr(redis_delivery_module, "run_scripts", counting)
    results = await asyncio.gather(
        *(d.ack() if i % 2 else d.release(executed=True) for i, d in enumerate(held))
    )
    assert all(results)
    assert calls <= 3  # one flush (two queues, one pipeline), maybe split by timing
    assert await broker.size("q") + await broker.size("other") == 125


async def test_idle_claim_blocks_instead_of_polling(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = redis_broker_module.run_scripts

    async def counting(client, script_calls):
        nonlocal calls
        calls += 1
        return await real(client, script_calls)

    waits = 0
    real_wait = redis_wait_module.BlockingClaim.run

    async def counting_waits(self):  # type: ignore[no-untyped-def]
        nonlocal waits
        waits += 1
        return await real_wait(self)

    monkeypatch.setattr(redis_broker_module, "run_scripts", counting)
    monkeypatch.setattr(redis_wait_module.BlockingClaim, "run", counting_waits)
    t0 = time.monotonic()
    assert await claim(broker, timeout=1.0) == []
    assert time.monotonic() - t0 >= 0.95
    # one claim, then one wait-and-claim (the wait is capped at half the socket timeout)
    assert calls == 1 and waits == 1


async def test_one_publish_wakes_every_idle_claimer_that_has_work(broker: RedisBroker) -> None:
    waiters = [asyncio.create_task(claim(broker, limit=5, timeout=4.0)) for _ in range(4)]
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await broker.publish([msg() for _ in range(20)])
    async with asyncio.timeout(5):
        got = await asyncio.gather(*waiters)
    assert sorted(len(g) for g in got) == [5, 5, 5, 5]
    assert time.monotonic() - t0 < 1.0  # passed along, not found by a later timeout


async def test_cancelled_claim_hands_back_what_it_took(broker: RedisBroker) -> None:
    for delay in (0, 0.0005, 0.001, 0.003):
        m = msg()
        await broker.publish([m])
        task = asyncio.create_task(claim(broker, timeout=2.0))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            result = await task
            if result:  # it finished before the cancel landed
                assert await result[0].release(executed=False)
        async with asyncio.timeout(3):
            [d] = await claim(broker, timeout=2.0)
        assert (d.id, d.delivery_count) == (m.id, 1)
        assert await d.ack()


async def test_a_woken_wait_claims_in_the_same_round_trip(
    alone_broker: RedisBroker, alone_raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, raw = alone_broker, alone_raw
    calls = 0
    real = redis_broker_module.run_scripts

    async def counting(client, script_calls):
        nonlocal calls
        calls += 1
        return await real(client, script_calls)

    monkeypatch.setattr(redis_broker_module, "run_scripts", counting)
    base = blocked_clients(raw)
    waiter = asyncio.create_task(claim(broker, timeout=4.0))
    await until_blocked(raw, base + 1)
    m = msg()
    await broker.publish([m])
    async with asyncio.timeout(3):
        [d] = await waiter
    assert calls == 1  # the first, empty claim; the woken one came with the wait
    assert d.id == m.id and await d.ack()


async def test_cancelled_wait_hands_back_what_its_claim_took(
    alone_broker: RedisBroker, alone_raw: redis.Redis
) -> None:
    broker, raw = alone_broker, alone_raw
    base = blocked_clients(raw)
    for delay in (0, 0.0002, 0.0005, 0.001, 0.002, 0.005):
        await until_blocked(raw, base)
        task = asyncio.create_task(claim(broker, timeout=2.0))
        await until_blocked(raw, base + 1)
        m = msg()
        publish = asyncio.create_task(broker.publish([m]))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            result = await task
            if result:  # it finished before the cancel landed
                assert await result[0].release(executed=False)
        await publish
        # handed back at once and uncounted, not after the 30 s lease
        async with asyncio.timeout(3):
            [d] = await claim(broker, timeout=2.0)
        assert (d.id, d.delivery_count) == (m.id, 1)
        assert await d.ack()


async def test_waits_work_for_a_user_without_the_client_command(
    prefix: str, alone: RedisServer, alone_raw: redis.Redis
) -> None:
    raw = alone_raw
    user, password = f"aqt-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    raw.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    raw.execute_command("ACL", "SETUSER", user, "-client")
    try:
        b = RedisBroker(f"redis://{user}:{password}@{HOST}:{alone.port}/0?prefix={prefix}")
        await b.connect()
        try:
            base = blocked_clients(raw)
            waiter = asyncio.create_task(claim(b, timeout=4.0))
            await until_blocked(raw, base + 1)
            m = msg()
            await b.publish([m])
            async with asyncio.timeout(3):
                [d] = await waiter
            assert d.id == m.id and await d.ack()
            assert not b._unblockable  # refused once, not asked again
            # a cancelled wait still ends at once and leaves every connection in step
            await until_blocked(raw, base)
            task = asyncio.create_task(claim(b, timeout=5.0))
            await until_blocked(raw, base + 1)
            t0 = time.monotonic()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert time.monotonic() - t0 < 0.5
            m2 = msg()
            await b.publish([m2])
            [d2] = await claim(b, timeout=2.0)
            assert d2.id == m2.id and await d2.ack()
        finally:
            await b.close()
    finally:
        raw.execute_command("ACL", "DELUSER", user)


async def test_cancelled_wait_does_not_poison_the_pool(
    alone_broker: RedisBroker, alone_raw: redis.Redis
) -> None:
    broker, raw = alone_broker, alone_raw
    base = blocked_clients(raw)
    for _ in range(5):
        await until_blocked(raw, base)
        task = asyncio.create_task(claim(broker, timeout=5.0))
        await until_blocked(raw, base + 1)
        t0 = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 0.5  # cancellation is not swallowed
    # every pooled connection still pairs each reply with its own command
    sizes = await asyncio.gather(*(broker.size(f"q{i}") for i in range(20)))
    assert sizes == [0] * 20
    m = msg()
    assert await broker.publish([m]) == [True]
    [d] = await claim(broker)
    assert d.id == m.id and await d.ack()


def test_the_redis_py_version_guard_matches_the_declared_floor() -> None:
    # redispy.OLDEST is what the code supports; pyproject.toml must not allow less
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    floor = re.search(r'"redis\[hiredis\]>=(\d+)\.(\d+)', pyproject)
    assert floor is not None
    assert (int(floor[1]), int(floor[2])) == redispy.OLDEST
    assert redispy.REDIS_PY >= redispy.OLDEST
    assert tuple(int(p) for p in redis.__version__.split(".")[:2]) == redispy.REDIS_PY


async def test_a_pool_checkout_works_on_the_installed_redis_py(broker: RedisBroker) -> None:
    # the guarded call: redis-py < 5.3 needs a command name, redis-py 6 warns about one
    client = broker.settings.async_client()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            conn = await redispy.take(client)
            try:
                await redispy.send(conn, redispy.pack_command("PING"))
                assert await redispy.read_reply(conn) in (b"PONG", "PONG")
            finally:
                await redispy.give_back(client, conn)
    finally:
        await client.aclose()


async def test_a_lone_publish_takes_the_fast_path(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a lone publish goes on the broker's own connection: no coalescing hop, no pool
    # checkout; publishes made at once share pooled round trips instead
    taken = made = 0
    real_take, real_new = redispy.take, redispy.new_connection

    async def counting_take(client):  # type: ignore[no-untyped-def]
        nonlocal taken
        taken += 1
        return await real_take(client)

    def counting_new(client):  # type: ignore[no-untyped-def]
        nonlocal made
        made += 1
        return real_new(client)

    monkeypatch.setattr(redispy, "take", counting_take)
    monkeypatch.setattr(redispy, "new_connection", counting_new)
    for _ in range(3):
        assert await broker.publish([msg()]) == [True]
    assert (taken, made) == (0, 1)  # one connection of its own, made once
    assert await asyncio.gather(*(broker.publish([msg()]) for _ in range(20))) == [[True]] * 20
    assert 1 <= taken < 20  # coalesced into pooled round trips
    assert made == 1


def test_pack_command_frames_exactly_like_redis_py() -> None:
    args = ("EVALSHA", "ab" * 20, 7, "k\u00e9y", b"\x00\r\n\xff", 3.25, -1, 1e-07, b"", "")
    expected = b"".join(redis.Connection().pack_command(*args))
    assert pack_command(*args) == expected
    script = Script("t", "return 1")
    call = (script, ["k1", "k\u00e9"], [b"\x00", 2, 0.5])
    for _ in range(2):  # framed afresh, then from the cached head
        assert pack_script_call(call) == pack_command("EVALSHA", script.sha, 2, *call[1], *call[2])


# -- configuration and secrets ---------------------------------------------------------------


def test_url_options_and_schemes() -> None:
    s = parse_settings(
        "rediss://u:p%40ss@h:1/2?prefix=pre&socket_timeout=2&ssl_cert_reqs=none",
        {"retries": 1},
        what="t",
    )
    assert (s.prefix, s.socket_timeout, s.retries) == ("pre", 2.0, 1)
    assert "prefix" not in s.url and "socket_timeout" not in s.url
    assert "ssl_cert_reqs=none" in s.url  # left for redis-py
    assert "p%40ss" not in s.redacted and "p@ss" not in s.redacted
    assert "p@ss" not in repr(s) and "p%40ss" not in repr(s)
    assert s.scrub("auth p@ss and p%40ss") == "auth *** and ***"
    assert parse_settings("redis://h", {"prefix": "kw"}, what="t").prefix == "kw"
    assert parse_settings("unix:///tmp/redis.sock?prefix=u", {}, what="t").prefix == "u"
    assert parse_settings("rediss://h:6380/0", {}, what="t").prefix == "aqueue"
    with pytest.raises(ConfigurationError):
        parse_settings("http://h", {}, what="t")
    with pytest.raises(ConfigurationError):
        parse_settings("redis://h", {"prefix": "a{b}"}, what="t")
    with pytest.raises(ConfigurationError):
        parse_settings("redis://h?socket_timeout=soon", {}, what="t")


@pytest.mark.parametrize("cls", [RedisBroker, RedisBackend])
@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://h/1O", "'/1O'"),
        ("redis://h/notanumber", "'/notanumber'"),
        ("redis://h/-1", "'/-1'"),
        ("redis://h/1/extra", "'/1/extra'"),
        ("redis://h/%31", "'/%31'"),
        ("redis://h?db=x", "db='x'"),
        ("redis://h/1?db=2", "path /1 and ?db=2"),
        ("unix:///tmp/r.sock?db=-1", "db='-1'"),
    ],
)
def test_a_mistyped_database_is_refused_at_construction(cls: type, url: str, named: str) -> None:
    # issue 11, defect 4: these all meant database 0, silently
    with pytest.raises(ConfigurationError) as info:
        cls(url)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("url", "options", "db"),
    [
        ("redis://h", {}, 0),
        ("redis://h/", {}, 0),
        ("redis://h:6380/7", {}, 7),
        ("rediss://h/07", {}, 7),
        ("redis://h?db=3", {}, 3),
        ("redis://h/3?db=3", {}, 3),
        ("redis://h", {"db": 5}, 5),
        ("unix:///tmp/r.sock?db=2", {}, 2),
    ],
)
def test_the_database_forms_that_are_accepted(url: str, options: dict[str, int], db: int) -> None:
    settings = parse_settings(url, options, what="t")
    assert redis.connection.parse_url(settings.url)["db"] == db  # what redis-py will use


def test_a_db_option_that_contradicts_the_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="path /2 and db=3"):
        RedisBroker("redis://h/2", db=3)
    with pytest.raises(ConfigurationError, match="not True"):
        RedisBroker("redis://h", db=True)


@pytest.mark.parametrize("cls", [RedisBroker, RedisBackend])
def test_unknown_options_are_refused_at_construction_naming_the_accepted_ones(cls: type) -> None:
    # issue 11, defect 5: redis-py raised a raw TypeError at the first connect
    with pytest.raises(ConfigurationError) as info:
        cls("redis://localhost/0?sockettimeout=3")
    text = str(info.value)
    assert "'sockettimeout'" in text and "did you mean 'socket_timeout'" in text
    assert "prefix" in text and "client_name" in text  # aqueue's and redis-py's
    with pytest.raises(ConfigurationError, match="unknown option 'foo'"):
        cls("redis://localhost/0?foo=1")
    with pytest.raises(ConfigurationError, match="unknown option 'foo' in options"):
        cls("redis://localhost/0", foo=1)
    with pytest.raises(ConfigurationError, match="unknown option 'decode_responses'"):
        cls("redis://localhost/0", decode_responses=True)  # aqueue reads raw bytes
    with pytest.raises(ConfigurationError, match="use a rediss:// URL"):
        cls("redis://localhost/0?ssl_ca_certs=/etc/ca.pem")
    with pytest.raises(ConfigurationError, match="bad value for 'socket_read_size'"):
        cls("redis://localhost/0?socket_read_size=big")
    with pytest.raises(ConfigurationError, match="'prefix' is given twice"):
        cls("redis://localhost/0?prefix=a&prefix=b")
    with pytest.raises(ConfigurationError, match="bad Redis URL"):
        cls("redis://:secret@localhost:port/0")


def test_every_passed_on_option_is_known_to_the_installed_redis_py() -> None:
    # a version guard: the lists in transports/redis/settings.py name what redis-py accepts
    # today; an older one (down to the floor) lacks some TLS options, refused by name
    assert set(REDIS_PY_OPTIONS) <= set(accepted_options("redis", keyword=False))
    missing = set(TLS_OPTIONS) - set(accepted_options("rediss", keyword=False))
    if redispy.REDIS_PY >= (7, 4):
        assert set(TLS_OPTIONS) <= set(accepted_options("rediss", keyword=False))
    for name in missing:
        with pytest.raises(ConfigurationError, match=f"unknown option '{name}'"):
            parse_settings(f"rediss://h/0?{name}=x", {}, what="t")
    assert "ssl_ca_certs" not in accepted_options("redis", keyword=True)
    # ...and the TLS connections hook where redis-py does the handshake
    assert callable(getattr(redis.SSLConnection, "_wrap_socket_with_ssl", None))
    assert callable(getattr(redis.asyncio.SSLConnection, "_connection_arguments", None))


async def test_redis_py_options_in_the_url_reach_redis_py(prefix: str, raw: redis.Redis) -> None:
    name = f"aqt-{uuid.uuid4().hex[:8]}"
    b = RedisBroker(f"redis://{HOST}:{PORT}/1?prefix={prefix}&client_name={name}")
    try:
        await b.publish([msg()])
        names = {c["name"] for c in raw.client_list()}
        assert name in names
        db1 = redis.Redis(host=HOST, port=PORT, db=1)
        try:
            assert db1.exists(f"{prefix}:{{q:q}}:ready") == 1  # in database 1, as asked
            assert raw.exists(f"{prefix}:{{q:q}}:ready") == 0
            db1.delete(*db1.keys(f"{prefix}*"))
        finally:
            db1.close()
    finally:
        await b.close()


async def test_rediss_to_the_plaintext_test_server_fails_at_once() -> None:
    for cls, error in ((RedisBroker, BrokerError), (RedisBackend, BackendError)):
        component = cls(f"rediss://{HOST}:{PORT}/0", socket_connect_timeout=30)
        with pytest.raises(error) as info:
            async with asyncio.timeout(20):  # not after the 30 s connect timeout
                await component.connect()
        assert "TLS handshake" in str(info.value) and "plaintext" in str(info.value)
        await component.close()


def test_a_password_in_the_query_is_hidden() -> None:
    for url in ("redis://h/0?password=s3cr3t", "rediss://h/0?ssl_password=s3cr3t"):
        try:
            s = parse_settings(url, {}, what="t")
        except ConfigurationError as exc:  # no ssl_password before redis-py 7.4: refused
            assert redispy.REDIS_PY < (7, 4) and "ssl_password" in url
            assert "s3cr3t" not in str(exc) and "***" in str(exc)
            continue
        assert "s3cr3t" not in s.redacted + repr(s) and "***" in s.redacted
        assert s.scrub("auth s3cr3t") == "auth ***"


def _everything_said(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


async def test_password_never_appears_in_errors_or_reprs() -> None:
    url = "redis://:pw-7c1e9@127.0.0.1:1/0"
    broker = RedisBroker(url, socket_connect_timeout=0.5, retries=0)
    backend = RedisBackend(url, socket_connect_timeout=0.5, retries=0)
    assert "pw-7c1e9" not in repr(broker) + repr(backend)
    for connect in (broker.connect, backend.connect):
        with pytest.raises((BrokerError, BackendError)) as info:
            await connect()
        assert "pw-7c1e9" not in _everything_said(info.value)
        assert "127.0.0.1:1" in str(info.value)
    with pytest.raises(BrokerError) as info:
        broker.renew([Lease(id="x", queue="q", token=1)], 1.0)
    assert "pw-7c1e9" not in _everything_said(info.value)


async def test_rejected_password_is_not_echoed(prefix: str) -> None:
    # the test server has no password: AUTH fails, and the error must not quote it
    b = RedisBroker(f"redis://:hunter2-{prefix}@{HOST}:{PORT}/0", retries=0)
    with pytest.raises(BrokerError) as info:
        await b.connect()
    assert "hunter2" not in _everything_said(info.value)
    await b.close()


# -- result backend --------------------------------------------------------------------------


@pytest.mark.parametrize("stored_attempt", [1, 2, 3])
@pytest.mark.parametrize("stored_state", [states.STARTED, states.SUCCESS, "PROGRESS"])
@pytest.mark.parametrize("new_attempt", [1, 2, 3])
async def test_store_applies_the_fencing_rule(
    backend: RedisBackend, stored_attempt: int, stored_state: str, new_attempt: int
) -> None:
    t = uuid.uuid4().hex
    assert await backend.store(t, b"old", state=stored_state, attempt=stored_attempt, ttl=60)
    expected = states.supersedes(new_attempt, stored_attempt, stored_state)
    got = await backend.store(t, b"new", state=states.SUCCESS, attempt=new_attempt, ttl=60)
    assert got is expected
    assert await backend.get(t) == (b"new" if expected else b"old")


async def test_ttl_none_persists_and_ttl_sets_expiry(
    backend: RedisBackend, prefix: str, raw: redis.Redis
) -> None:
    t = uuid.uuid4().hex
    key = f"{prefix}:{{t:{t}}}:result"
    await backend.store(t, b"a", state=states.STARTED, attempt=1, ttl=30)
    assert 0 < raw.pttl(key) <= 30_000
    await backend.store(t, b"b", state=states.SUCCESS, attempt=1, ttl=None)
    assert raw.pttl(key) == -1
    await backend.forget(t)
    assert raw.exists(key) == 0


async def test_watch_sees_record_stored_before_and_by_another_client(
    backend: RedisBackend, url: str
) -> None:
    t = uuid.uuid4().hex
    other = RedisBackend(url)
    try:
        await other.store(t, b"before", state=states.STARTED, attempt=1, ttl=60)
        seen: list[bytes] = []
        async with asyncio.timeout(5), contextlib.aclosing(backend.watch(t)) as stream:
            async for record in stream:
                seen.append(record)
                if record == b"before":
                    await other.store(t, b"after", state=states.SUCCESS, attempt=1, ttl=60)
                else:
                    break
        assert seen == [b"before", b"after"]  # each once, in order
    finally:
        await other.close()


async def _first(backend: ResultBackend, task_id: str) -> bytes:
    async with contextlib.aclosing(backend.watch(task_id)) as stream:
        async for record in stream:
            return record
    raise AssertionError("watch ended")


def _pubsub_clients(raw: redis.Redis, prefix: str) -> list[dict]:
    # by name: with no channel subscribed it is not of type "pubsub"
    return [c for c in raw.client_list() if c["name"] == f"{prefix}:results"]


async def test_many_watchers_share_one_connection_and_unsubscribe(
    backend: RedisBackend, url: str, prefix: str, raw: redis.Redis
) -> None:
    ids = [uuid.uuid4().hex for _ in range(100)]
    waiters = [asyncio.create_task(_first(backend, t)) for t in ids for _ in range(2)]
    channels = [f"{prefix}:{{t:{t}}}:result" for t in ids]
    async with asyncio.timeout(5):
        while sum(n for _, n in raw.pubsub_numsub(*channels)) < len(ids):
            await asyncio.sleep(0.02)  # waiting for the watchers to start, not for the code
    assert len(_pubsub_clients(raw, prefix)) == 1
    producer = RedisBackend(url)
    try:
        await asyncio.gather(
            *(producer.store(t, t.encode(), state=states.SUCCESS, attempt=1, ttl=60) for t in ids)
        )
    finally:
        await producer.close()
    async with asyncio.timeout(10):
        assert await asyncio.gather(*waiters) == [t.encode() for t in ids for _ in range(2)]
    async with asyncio.timeout(5):
        while any(n for _, n in raw.pubsub_numsub(*channels)):
            await asyncio.sleep(0.02)  # the last watcher out unsubscribes


async def test_watch_survives_a_killed_pubsub_connection(
    backend: RedisBackend, prefix: str, raw: redis.Redis
) -> None:
    t = uuid.uuid4().hex
    seen: list[bytes] = []
    got_first = asyncio.Event()

    async def watch() -> None:
        async with contextlib.aclosing(backend.watch(t)) as stream:
            async for record in stream:
                seen.append(record)
                got_first.set()
                if record == b"final":
                    return

    task = asyncio.create_task(watch())
    await backend.store(t, b"first", state=states.STARTED, attempt=1, ttl=60)
    async with asyncio.timeout(5):
        await got_first.wait()
    [conn] = _pubsub_clients(raw, prefix)
    raw.client_kill_filter(_id=conn["id"])
    # stored while the subscription is (probably) down: recovered by the re-read
    await backend.store(t, b"final", state=states.SUCCESS, attempt=1, ttl=60)
    async with asyncio.timeout(10):
        await task
    assert seen == [b"first", b"final"]
    async with asyncio.timeout(5):
        while len(_pubsub_clients(raw, prefix)) != 1:
            await asyncio.sleep(0.05)  # reconnected


async def test_concurrent_stores_are_batched_and_fenced(backend: RedisBackend) -> None:
    t = uuid.uuid4().hex
    results = await asyncio.gather(
        *(
            backend.store(t, str(a).encode(), state=states.SUCCESS, attempt=a, ttl=60)
            for a in (1, 3, 2)
        )
    )
    assert results == [True, True, False]
    assert await backend.get(t) == b"3"


async def test_claim_reads_stored_records_when_the_backend_shares_the_server(
    broker: RedisBroker, backend: RedisBackend, url: str, prefix: str
) -> None:
    done, fresh = msg(), msg()
    await broker.publish([done, fresh])
    await backend.store(done.id, b"record", state=states.SUCCESS, attempt=1, ttl=60)
    # unbound: no record is read (the worker then looks them up itself)
    [first] = await claim(broker, limit=1)
    assert getattr(first, "prior", None) is None
    await first.release(executed=False)
    # another database or another client type: not bound
    assert not broker.bind_records(object())
    other = RedisBackend(f"redis://{HOST}:{PORT}/1?prefix={prefix}")
    assert not broker.bind_records(other)
    assert broker.bind_records(backend)
    priors = {d.id: getattr(d, "prior", "absent") for d in await claim(broker)}
    assert priors == {done.id: b"record", fresh.id: None}


async def test_get_many_in_one_round_trip(backend: RedisBackend) -> None:
    a, b, missing = (uuid.uuid4().hex for _ in range(3))
    await backend.store(a, b"ra", state=states.SUCCESS, attempt=1, ttl=60)
    await backend.store(b, b"rb", state=states.STARTED, attempt=1, ttl=60)
    assert await backend.get_many([a, missing, b]) == [b"ra", None, b"rb"]
    assert await backend.get_many([]) == []


# -- shared throttle -------------------------------------------------------------------------


async def test_rate_reservations_follow_gcra(broker: RedisBroker, prefix: str) -> None:
    assert isinstance(broker, SharedThrottle)
    key = f"rate-{prefix}"
    t0 = time.time()
    slots = [await broker.reserve_rate(key, 2, 1.0) for _ in range(5)]
    offsets = [s - t0 for s in slots]
    # burst of 2 at once, then one every 0.5 s
    for got, want in zip(offsets, [0.0, 0.0, 0.5, 1.0, 1.5], strict=True):
        assert want - 0.1 <= got <= want + 0.1, offsets


async def test_concurrency_slots_are_leased(broker: RedisBroker, prefix: str) -> None:
    key = f"slots-{prefix}"
    assert await broker.acquire_slot(key, "h1", 2, LEASE)
    assert await broker.acquire_slot(key, "h2", 2, 30.0)
    assert not await broker.acquire_slot(key, "h3", 2, 30.0)
    assert await broker.acquire_slot(key, "h2", 2, 30.0)  # a holder may re-take its own
    await broker.release_slot(key, "h2")
    assert await broker.acquire_slot(key, "h3", 2, 30.0)
    # h1's lease runs out unless renewed; renewing an unknown holder does nothing
    broker.renew_slots([(key, "nobody")], 30.0)
    async with asyncio.timeout(5):
        while not await broker.acquire_slot(key, "h4", 2, 30.0):
            await asyncio.sleep(LEASE / 4)  # waiting for the clock, not for the code
    broker.renew_slots([(key, "h3"), (key, "h4")], 30.0)
    assert not await broker.acquire_slot(key, "h1", 2, 30.0)


async def test_results_are_pushed_to_the_sender_once_it_watches(url: str) -> None:
    sender, worker = RedisBackend(url), RedisBackend(url)
    try:
        await sender.connect()
        await worker.connect()
        assert sender.reply_headers() == {}  # never watched: nothing is pushed to it
        first = uuid.uuid4().hex
        await worker.store(first, b"r0", state=states.SUCCESS, attempt=1, ttl=60)
        async with contextlib.aclosing(sender.watch(first)) as stream:
            assert await anext(stream) == b"r0"
        headers = sender.reply_headers()
        assert list(headers.values()) == [sender.reply_channel]
        # a worker learns the channel from the message, pushes every state there, and
        # forgets it once the task is done; a channel that is not an aqueue one is ignored
        task_id, foreign = uuid.uuid4().hex, uuid.uuid4().hex
        worker.observe(task_id, headers)
        worker.observe(foreign, {key: "somebody-else" for key in headers})
        assert sender._hub is not None
        pushed: asyncio.Queue[bytes] = asyncio.Queue()
        sender._hub.listen(task_id, pushed)
        await worker.store(task_id, b"r1", state=states.STARTED, attempt=1, ttl=60)
        await worker.store(task_id, b"r2", state=states.SUCCESS, attempt=1, ttl=60)
        async with asyncio.timeout(5):
            assert [await pushed.get(), await pushed.get()] == [b"1:r1", b"2:r2"]
        assert worker._routes == {}
        # the watcher takes the push or its own subscription, whichever comes first
        async with contextlib.aclosing(sender.watch(task_id)) as stream:
            assert await anext(stream) == b"r2"
    finally:
        await sender.close()
        await worker.close()


async def test_forget_lets_a_watcher_accept_a_new_record(backend: RedisBackend) -> None:
    t = uuid.uuid4().hex
    await backend.store(t, b"v1", state=states.SUCCESS, attempt=1, ttl=60)
    seen: list[bytes] = []
    async with asyncio.timeout(5), contextlib.aclosing(backend.watch(t)) as stream:
        async for record in stream:
            seen.append(record)
            if record == b"v1":
                await backend.forget(t)
                await backend.store(t, b"again", state=states.STARTED, attempt=1, ttl=60)
            else:
                break
    assert seen == [b"v1", b"again"]


async def test_closing_the_backend_ends_watches_with_an_error(url: str) -> None:
    b = RedisBackend(url)
    waiter = asyncio.create_task(_first(b, uuid.uuid4().hex))
    await asyncio.sleep(0.1)  # let it subscribe
    await b.close()
    async with asyncio.timeout(5):
        with pytest.raises(BackendError, match="closed"):
            await waiter


async def test_chord_join_fires_once(backend: RedisBackend, url: str) -> None:
    chord = uuid.uuid4().hex
    others = [RedisBackend(url) for _ in range(3)]
    try:
        members = [f"m{i}" for i in range(30)]
        # every member joins twice, from several clients at once
        joins = [
            others[i % 3].chord_join(chord, m, len(members), failed=False, ttl=60)
            for i, m in enumerate(members * 2)
        ]
        assert sum(await asyncio.gather(*joins)) == 1
        failed_chord = uuid.uuid4().hex
        assert not await backend.chord_join(failed_chord, "a", 3, failed=False, ttl=None)
        assert await backend.chord_join(failed_chord, "b", 3, failed=True, ttl=None)
        assert not await backend.chord_join(failed_chord, "c", 3, failed=False, ttl=None)
    finally:
        for b in others:
            await b.close()
