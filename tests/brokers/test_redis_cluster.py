"""The Redis broker and result backend on a Redis Cluster (``redis+cluster://``).

The cross-broker contract runs on a cluster too (tests/conformance/, kind
``redis-cluster``); this file covers what only the cluster has: its URL, queues and
records in different slots (claims, waits, stores, reads), chords, topics and the worker
registry across nodes. Everything runs on this process's private 3-master cluster
(``tests/conftest.py``, ``private_cluster``); the shared Redis on 6379 is not used.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import App, chord, group
from aqueue.backends.redis import RedisBackend, RedisClusterBackend
from aqueue.brokers.redis import RedisBroker, RedisClusterBroker
from aqueue.core.errors import BrokerError, ConfigurationError
from aqueue.core.protocols import Lease, Outgoing, WorkerInfo
from aqueue.core.urls import make_backend, make_broker
from aqueue.transports.redis.keys import KeySpace
from aqueue.transports.redis.settings import parse_settings
from tests.conftest import delete_cluster_prefix, private_cluster

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"aqt-cl-{uuid.uuid4().hex[:12]}"
    yield name
    delete_cluster_prefix(name)


@pytest.fixture
def url(prefix: str) -> str:
    return str(private_cluster().url(prefix=prefix))


@pytest.fixture
async def broker(url: str) -> AsyncIterator[RedisClusterBroker]:
    b = RedisClusterBroker(url)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def backend(url: str) -> AsyncIterator[RedisClusterBackend]:
    b = RedisClusterBackend(url)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


def spread_queues(prefix: str, count: int = 3) -> list[str]:
    """``count`` queue names whose keys are served by ``count`` different masters."""
    cluster = private_cluster()
    keys = KeySpace(prefix)
    found: dict[int, str] = {}
    for n in range(1000):
        name = f"q{n}"
        port = cluster.master_of(keys.queue(name) + "ready").port
        found.setdefault(port, name)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("no queues on different masters")


def msg(queue: str) -> Outgoing:
    mid = uuid.uuid4().hex
    return Outgoing(id=mid, queue=queue, body=f"body-{mid}".encode())


# -- the URL -------------------------------------------------------------------------------


def test_cluster_urls_pick_the_cluster_classes() -> None:
    url = "redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7001/0?prefix=shop"
    broker, backend = make_broker(url, {}), make_backend(url, url)
    assert isinstance(broker, RedisClusterBroker)
    assert isinstance(backend, RedisClusterBackend)
    for shown in (repr(broker), repr(backend)):
        assert "secret" not in shown and ":***@10.0.0.1:7000,10.0.0.2:7001" in shown
    settings = parse_settings(url, {}, what="t")
    assert settings.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert settings.prefix == "shop" and settings.extra["password"] == "secret"
    # no path, "/", "/0" and ?db=0 are all database 0; IPv6 nodes in brackets
    for same in ("redis+cluster://h:1", "redis+cluster://h:1/", "redis+cluster://h:1?db=0"):
        assert parse_settings(same, {}, what="t").nodes == (("h", 1),)
    assert parse_settings("redis+cluster://[::1]:7000", {}, what="t").nodes == (("::1", 7000),)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis+cluster://h:7000/1", "database 0 only, not 1"),
        ("redis+cluster://h:7000?db=3", "database 0 only, not 3"),
        ("redis+cluster://h:7000/x", "must be a database number"),
        ("redis+cluster://h", "each cluster node is host:port, not 'h'"),
        ("redis+cluster://h:7000,h2", "each cluster node is host:port, not 'h2'"),
        ("redis+cluster://h:70000", "each cluster node is host:port"),
        ("redis+cluster:///0", "names no cluster node"),
        ("redis+cluster://h:7000?sockettimeout=1", "did you mean 'socket_timeout'"),
        ("rediss+cluster://h:7000", "TLS to a Redis Cluster is not supported yet"),
        ("redis-cluster://h:7000", "spelled redis+cluster://"),
    ],
)
def test_bad_cluster_urls_are_refused_naming_the_part(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(named)):
        parse_settings(url, {}, what="t")


def test_wait_replicas_is_refused_on_a_cluster() -> None:
    # the cluster classes never WAIT after a write: asking for it must not pass silently
    named = "wait_replicas applies to one server or a master behind Redis Sentinel only"
    with pytest.raises(ConfigurationError, match=named):
        parse_settings("redis+cluster://h:7000?wait_replicas=1", {}, what="t")
    with pytest.raises(ConfigurationError, match=named):
        parse_settings("redis+cluster://h:7000", {"wait_replicas": 2}, what="t")
    with pytest.raises(ConfigurationError, match=named):
        RedisClusterBroker("redis+cluster://h:7000?wait_replicas=1")
    with pytest.raises(ConfigurationError, match=named):
        RedisClusterBackend("redis+cluster://h:7000", wait_replicas=1)
    # 0 (none asked) is what a cluster does anyway
    settings = parse_settings("redis+cluster://h:7000?wait_replicas=0", {}, what="t")
    assert settings.wait_replicas == 0 and settings.confirm is None


def test_the_one_server_classes_refuse_a_cluster_and_back() -> None:
    with pytest.raises(ConfigurationError, match="RedisClusterBroker"):
        RedisBroker("redis+cluster://h:7000")
    with pytest.raises(ConfigurationError, match="RedisClusterBackend"):
        RedisBackend("redis+cluster://:pw@h:7000")
    with pytest.raises(ConfigurationError, match="one server, not a cluster"):
        RedisClusterBroker("redis://h:6379/0")
    with pytest.raises(ConfigurationError, match="one server, not a cluster"):
        RedisClusterBackend("redis://h:6379/0")


# -- the broker ----------------------------------------------------------------------------


async def test_queues_on_different_masters_are_claimed_in_order(
    broker: RedisClusterBroker, prefix: str
) -> None:
    a, b, c = spread_queues(prefix)
    ma, mb, mc = msg(a), msg(b), msg(c)
    assert await broker.publish([mc, mb, ma]) == [True, True, True]
    got = await broker.claim([a, b, c], limit=2, lease_seconds=30, owner="t", timeout=0)
    assert [(d.queue, d.id) for d in got] == [(a, ma.id), (b, mb.id)]
    [last] = await broker.claim([a, b, c], limit=5, lease_seconds=30, owner="t", timeout=0)
    assert (last.queue, last.id) == (c, mc.id)
    assert all([await d.ack() for d in [*got, last]])
    assert [await broker.size(q) for q in (a, b, c)] == [0, 0, 0]


async def test_an_idle_claim_on_several_masters_wakes_on_a_publish_to_any(
    broker: RedisClusterBroker, prefix: str
) -> None:
    """The wait is one BLPOP per queue (their slots differ): a publish to the last queue
    ends it at once, well before the claim's own timeout."""
    queues = spread_queues(prefix)
    claim = asyncio.ensure_future(
        broker.claim(queues, limit=10, lease_seconds=30, owner="t", timeout=30)
    )
    await _blocked_clients(3)  # every queue's wait has reached its node
    loop = asyncio.get_running_loop()
    started = loop.time()
    m = msg(queues[-1])
    await broker.publish([m])
    [d] = await asyncio.wait_for(claim, timeout=10)  # a safety net, not a measurement
    assert d.id == m.id and loop.time() - started < 10
    await d.ack()
    await _blocked_clients(0)  # the cancelled waits ended on the server too


def _connections_received() -> list[int]:
    """Connections each master has accepted so far (this reading's own included)."""
    counts = []
    for node in private_cluster().live():
        client = node.admin()
        try:
            counts.append(int(client.info("stats")["total_connections_received"]))
        finally:
            client.close()
    return counts


async def test_idle_rounds_on_several_masters_reuse_their_connections(
    url: str, prefix: str
) -> None:
    """A round that ends by its timeout lets every queue's wait end by itself (same
    timeout), so an idle worker's rounds open no new connections."""
    queues = spread_queues(prefix)
    broker = RedisClusterBroker(url, socket_timeout=0.4)  # rounds of 0.2 s
    try:
        assert await broker.claim(queues, limit=1, lease_seconds=30, owner="t", timeout=0.5) == []
        before = _connections_received()
        assert await broker.claim(queues, limit=1, lease_seconds=30, owner="t", timeout=1.0) == []
        after = _connections_received()
    finally:
        await broker.close()
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]  # the readings


async def test_a_cancelled_idle_claim_ends_every_wait(
    broker: RedisClusterBroker, prefix: str
) -> None:
    queues = spread_queues(prefix)
    claim = asyncio.ensure_future(
        broker.claim(queues, limit=10, lease_seconds=30, owner="t", timeout=30)
    )
    await _blocked_clients(3)
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim
    await _blocked_clients(0)
    m = msg(queues[0])
    await broker.publish([m])  # the pool still works
    [d] = await broker.claim(queues, limit=1, lease_seconds=30, owner="t", timeout=5)
    assert d.id == m.id
    await d.ack()


async def _blocked_clients(count: int) -> None:
    """Wait until the private cluster's masters hold exactly ``count`` blocked clients
    (within 10 s: ``TimeoutError`` otherwise)."""
    cluster = private_cluster()
    async with asyncio.timeout(10):
        while True:
            total = 0
            for node in cluster.live():
                client = node.admin()
                try:
                    total += int(client.info("clients")["blocked_clients"])
                finally:
                    client.close()
            if total == count:
                return
            await asyncio.sleep(0.01)


async def test_renewals_and_settlements_across_masters(
    broker: RedisClusterBroker, prefix: str
) -> None:
    queues = spread_queues(prefix)
    assert await broker.publish([msg(q) for q in queues for _ in range(5)]) == [True] * 15
    got = await broker.claim(queues, limit=15, lease_seconds=30, owner="t", timeout=0)
    assert len(got) == 15
    leases = [d.lease for d in got]
    lost = await asyncio.to_thread(broker.renew, leases, 30.0)
    assert lost == []
    bogus = Lease(id="nope", queue=queues[1], token=1)
    assert await asyncio.to_thread(broker.renew, [bogus], 30.0) == [bogus]
    assert all(await asyncio.gather(*(d.ack() for d in got[:10])))
    for d in got[10:]:
        assert await d.dead_letter("test")
    letters = await broker.dead_letters()
    assert sorted(letter.id for letter in letters) == sorted(d.id for d in got[10:])
    assert await broker.purge_dead_letters() == 5


async def test_a_lost_workers_leases_are_handed_back(
    broker: RedisClusterBroker, prefix: str
) -> None:
    """The registry's keys share the tag ``{workers}``; the reaper names every entry it
    touches in KEYS (LAPSED lists them, REAP checks and marks them)."""
    queues = spread_queues(prefix)
    await broker.publish([msg(q) for q in queues])
    got = await broker.claim(queues, limit=3, lease_seconds=30, owner="t", timeout=0)
    registry = broker.worker_registry
    info = WorkerInfo(
        id="w-dead", hostname="h", host="h", pid=1, queues=tuple(queues), concurrency=1, started=0
    )
    await asyncio.to_thread(registry.beat, info, [d.lease for d in got], 60)
    assert await asyncio.to_thread(registry.reap, 3600.0) == []  # not lapsed yet
    assert await asyncio.to_thread(registry.reap, -1.0) == ["w-dead"]
    assert await asyncio.to_thread(registry.reap, -1.0) == []  # reaped once
    again = await broker.claim(queues, limit=3, lease_seconds=30, owner="t", timeout=0)
    assert sorted(d.id for d in again) == sorted(d.id for d in got)
    assert all(d.delivery_count == 2 for d in again)
    assert [await d.ack() for d in got] == [False] * 3  # fenced: the old holder's tokens


async def test_shared_limits_on_the_cluster(broker: RedisClusterBroker) -> None:
    """Each limit key has its own tag ({throttle:<key>}): rate slots and leased
    concurrency slots of several keys live on several nodes."""
    keys = [f"k{i}" for i in range(6)]
    for key in keys:
        first = await broker.reserve_rate(key, 2, 1.0)
        await broker.reserve_rate(key, 2, 1.0)  # a burst of 2 ...
        third = await broker.reserve_rate(key, 2, 1.0)
        assert third - first > 0.3  # ... then one per 0.5 s (on the server's clock)
        await broker.reset_rate(key)
        assert await broker.acquire_slot(key, "a", 1, 30)
        assert not await broker.acquire_slot(key, "b", 1, 30)
    await asyncio.to_thread(broker.renew_slots, [(key, "a") for key in keys], 30)
    for key in keys:
        await broker.release_slot(key, "a")
        assert await broker.acquire_slot(key, "b", 1, 30)


# -- the backend ---------------------------------------------------------------------------


async def test_stores_and_reads_of_records_in_many_slots(backend: RedisClusterBackend) -> None:
    ids = [uuid.uuid4().hex for _ in range(50)]
    stored = await asyncio.gather(
        *(backend.store(i, f"r-{i}".encode(), state="SUCCESS", attempt=1, ttl=60) for i in ids)
    )
    assert stored == [True] * 50
    # fenced per record: an older attempt loses, as on one server
    assert not await backend.store(ids[0], b"old", state="STARTED", attempt=0, ttl=60)
    assert await backend.get_many([*ids, "missing"]) == [f"r-{i}".encode() for i in ids] + [None]
    watch = backend.watch(ids[1])
    assert await anext(watch) == f"r-{ids[1]}".encode()
    await watch.aclose()
    await backend.forget(ids[1])
    assert await backend.get(ids[1]) is None


async def test_a_worker_drains_queues_on_every_master_with_results(url: str, prefix: str) -> None:
    queues = spread_queues(prefix)
    app = App("cl", broker=url, backend=url, lease_seconds=5.0)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with app, app.worker(queues=queues, concurrency=20):
        handles = [await add.options(queue=queues[i % 3]).delay(i, i) for i in range(300)]
        results = await asyncio.wait_for(
            asyncio.gather(*(h.wait(timeout=60) for h in handles)), timeout=90
        )
    assert results == [2 * i for i in range(300)]
    # every one acked (the app's close flushed the last acks): nothing left anywhere
    check = RedisClusterBroker(url)
    try:
        assert [await check.size(q) for q in queues] == [0, 0, 0]
    finally:
        await check.close()


async def test_a_chord_and_a_group_on_the_cluster(url: str) -> None:
    app = App("clc", broker=url, backend=url, lease_seconds=5.0)

    @app.task
    async def square(x: int) -> int:
        return x * x

    @app.task
    async def total(xs: list[int]) -> int:
        return sum(xs)

    async with app, app.worker(concurrency=20):
        h = await chord(group(square.s(i) for i in range(20)), total.s()).delay()
        assert await h.wait(timeout=60) == sum(i * i for i in range(20))
        g = await group(square.s(i) for i in range(10)).delay()
        assert await g.wait(timeout=60) == [i * i for i in range(10)]


@pytest.mark.parametrize("protocol", [2, 3])
async def test_topics_live_on_the_node_of_their_slot(url: str, protocol: int) -> None:
    broker = RedisClusterBroker(url, protocol=protocol)
    topics = broker.topics
    subs: list[Any] = [await topics.subscribe(name) for name in ("events", "control")]
    await topics.publish("events", [b"e1", b"e2"], cap=100)
    await topics.publish("control", [b"c1"], cap=100)
    assert await subs[0].get(10) == [b"e1", b"e2"]
    assert await subs[1].get(10) == [b"c1"]
    assert await subs[0].get(0.05) == []
    for sub in subs:
        await sub.close()
    await broker.close()


# -- every script within one slot -------------------------------------------------------------

#: a key argument of ``redis.call`` built in the script (PUBLISH takes a channel, not a key)
_BUILT_KEY = re.compile(r"redis\.call\('(?!PUBLISH')\w+',\s*([^,)]*\.\.[^,)]*)[,)]")
_BUILT_LOCAL = re.compile(r"local\s+\w*key\w*\s*=.*\.\.")
#: the keys built in a script, each on the one-server path only (file, line), and why the
#: cluster's never does it
_ONE_SERVER_ONLY = {
    # the claimed tasks' records: only when a backend is bound, which a cluster never is
    ("brokers/redis/lua/claim.lua", "redis.call('HGET', head .. id .. tail, RECORD_FIELD)"),
    # RedisClusterBackend.get_many sends an HGET per task instead
    (
        "backends/redis/lua/get_many.lua",
        "redis.call('HGET', ARGV[1] .. ARGV[i] .. ARGV[2], RECORD_FIELD)",
    ),
    # RedisClusterBackend passes each record's key in KEYS
    ("backends/redis/lua/store.lua", "local key = KEYS[i] or (ARGV[1] .. id .. ARGV[2])"),
}


def test_no_script_builds_a_key_on_the_cluster_path() -> None:
    """Every Lua script names the keys it touches in KEYS (redis-py sends a script to the
    node of its KEYS' one slot, and refuses KEYS in several); the few that build a key
    from ARGV do it only on the one-server path, which the cluster classes never take."""
    import aqueue

    root = Path(aqueue.__file__).parent
    built: set[tuple[str, str]] = set()
    for path in sorted(root.rglob("*.lua")):
        for line in path.read_text().splitlines():
            code = line.split("--", 1)[0]
            if _BUILT_KEY.search(code) or _BUILT_LOCAL.search(code):
                where = path.relative_to(root).as_posix()
                text = code.strip()
                found = next((s for f, s in _ONE_SERVER_ONLY if f == where and s in text), text)
                built.add((where, found))
    assert built == _ONE_SERVER_ONLY
    assert (
        RedisClusterBroker("redis+cluster://h:1").bind_records(
            RedisClusterBackend("redis+cluster://h:1")
        )
        is False
    )


# -- a password ------------------------------------------------------------------------------

PASSWORD = "cl-s3cret-pw"


@pytest.fixture(scope="module")
def password_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.faults.redis_cluster import running_cluster

    with running_cluster(tmp_path_factory.mktemp("pwcluster"), password=PASSWORD) as c:
        yield c


async def test_a_cluster_with_a_password_never_shows_it(
    password_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aqueue")
    url = password_cluster.url(prefix="pw")
    app = App("pw", broker=url, backend=url, lease_seconds=5.0)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with app, app.worker(concurrency=5):
        handles = [await add.delay(i, 1) for i in range(20)]
        assert [await h.wait(timeout=30) for h in handles] == [i + 1 for i in range(20)]
        texts = [repr(app.broker), repr(app.backend), repr(app.conf)]
    wrong = password_cluster.url(prefix="pw").replace(PASSWORD, "not-the-pw-42")
    broker = RedisClusterBroker(wrong, retries=0)
    with pytest.raises(BrokerError) as refused:
        await broker.connect()
    await broker.close()
    texts += [str(refused.value), repr(refused.value)]
    texts += [record.getMessage() for record in caplog.records]
    assert not [t for t in texts if PASSWORD in t or "not-the-pw-42" in t]


# -- a hot queue spread over several slots --------------------------------------------------


async def test_a_sharded_queue_spreads_over_slots_and_is_claimed_in_turn(
    prefix: str,
) -> None:
    url = private_cluster().url(prefix=prefix, shards="hot:4")
    broker = RedisClusterBroker(url)
    try:
        shards = broker.shards_of("hot")
        assert shards == ["hot#0", "hot#1", "hot#2", "hot#3"]
        assert broker.shards_of("cold") == ["cold"]
        keys = KeySpace(prefix)
        ports = {private_cluster().master_of(keys.queue(s) + "ready").port for s in shards}
        assert len(ports) > 1  # several slots, on more than one master
        messages = [msg("hot") for _ in range(40)]
        assert await broker.publish(messages) == [True] * 40
        # an id goes to one shard, by its id: sent again, its first copy refuses it
        assert await broker.publish([messages[0]]) == [False]
        per_shard = [await RedisBroker.size(broker, s) for s in shards]
        assert sum(per_shard) == 40 and all(per_shard)
        assert await broker.size("hot") == 40
        # each claim starts at the next shard
        first = [
            (await broker.claim(["hot"], limit=1, lease_seconds=30, owner="t", timeout=0))[0]
            for _ in range(4)
        ]
        assert sorted(d.queue for d in first) == shards
        rest = await broker.claim(["hot"], limit=100, lease_seconds=30, owner="t", timeout=0)
        assert sorted(d.id for d in [*first, *rest]) == sorted(m.id for m in messages)
        await first[0].dead_letter("test")
        [letter] = await broker.dead_letters("hot")
        assert letter.queue == first[0].queue  # its shard
        assert all(await asyncio.gather(*(d.ack() for d in [*first[1:], *rest])))
        assert await broker.size("hot") == 0
        # replayed into its shard, claimed again from the queue
        again = Outgoing(id=letter.id, queue="hot", body=letter.body)
        assert await broker.replay_dead_letter(letter, again)
        [back] = await broker.claim(["hot"], limit=5, lease_seconds=30, owner="t", timeout=0)
        assert (back.id, back.queue) == (letter.id, letter.queue)
        await back.dead_letter("again")
        assert await broker.purge_dead_letters("hot") == 1
    finally:
        await broker.close()


async def test_a_worker_drains_a_sharded_queue(prefix: str) -> None:
    url = private_cluster().url(prefix=prefix, shards="hot:4")
    app = App("clh", broker=url, backend=url, lease_seconds=5.0)

    @app.task(queue="hot")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app, app.worker(queues=["hot"], concurrency=20):
        handles = [await add.delay(i, i) for i in range(200)]
        handles += await add.delay_many([(i, 1) for i in range(100)])
        results = await asyncio.gather(*(h.wait(timeout=60) for h in handles))
    assert results == [2 * i for i in range(200)] + [i + 1 for i in range(100)]
    check = RedisClusterBroker(url)
    try:
        assert await check.size("hot") == 0
    finally:
        await check.close()


def test_shards_are_checked() -> None:
    assert parse_settings("redis+cluster://h:1?shards=hot:8,bulk:2", {}, what="t").shards == (
        ("hot", 8),
        ("bulk", 2),
    )
    assert parse_settings("redis+cluster://h:1", {"shards": {"hot": 3}}, what="t").shards == (
        ("hot", 3),
    )
    for bad in ("hot", "hot:0", "hot:x", "h{x}:2", "a#b:2", "hot:100000"):
        with pytest.raises(ConfigurationError, match="shards"):
            parse_settings(f"redis+cluster://h:1?shards={bad}", {}, what="t")
    with pytest.raises(ConfigurationError, match="unknown option 'shards'"):
        parse_settings("redis://h/0?shards=hot:2", {}, what="t")
