"""Shared fixtures: one URL per broker kind, each isolated per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from aqueue import App
from aqueue.core.urls import default_backend_url

#: aqueue's own pytest plugin (opt-in for users: docs/testing.md), and pytester to test it
pytest_plugins = ["aqueue.testing", "pytester"]

# A suite started in the background by a non-interactive shell (`make test` runs the
# lowest-versions suite with `&`; CI may start `make test` so) inherits SIGINT ignored, and
# so would every process the tests start: the tests of what Ctrl-C does would then test
# nothing and wait out their timeouts. A Python handler here becomes the default in the
# children (an exec resets handlers, not ignored signals), as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Fail (never skip) when a server the suite needs is down: `make services` starts it."""
    if not _port_open(host, port):
        pytest.fail(f"{name} is not running on {host}:{port}: run `make services`", pytrace=False)


def delete_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        keys += list(client.scan_iter(match=f"*{{{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


RABBIT_URL = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/%2F"
#: RabbitMQ deletes a test's queues once nobody used them for a minute (``x-expires``), so an
#: interrupted run leaves nothing behind and a run never piles up quorum queues: each holds
#: file handles, and a node (1 024 descriptors) with ~300 of them accepts no connection.
RABBIT_TEST_OPTIONS = "queue_expires=60"


def prefix_of(url: str) -> str:
    """The ``prefix`` option of a test URL."""
    return parse_qs(urlsplit(url).query)["prefix"][0]


def rabbit_url(prefix: str, base: str = RABBIT_URL) -> str:
    """A RabbitMQ URL for a test's own ``prefix`` (its queues expire when unused)."""
    return f"{base}?prefix={prefix}&{RABBIT_TEST_OPTIONS}"


def delete_rabbit_queues(names: list[str], exchanges: Sequence[str] = ()) -> None:
    """Delete RabbitMQ queues (and exchanges) by name, from a thread with its own event loop
    (callable from any fixture, whatever loop a test ran in)."""
    import aio_pika
    from aiormq.exceptions import ChannelLockedResource

    async def delete() -> None:
        conn = await aio_pika.connect(RABBIT_URL, timeout=10)
        try:
            channel = await conn.channel()
            for name in names:
                try:
                    await channel.queue_delete(name)
                except ChannelLockedResource:
                    # an exclusive queue of a connection still open (a worker subprocess
                    # still stopping): the server deletes it when that connection closes
                    channel = await conn.channel()
            for name in exchanges:
                await channel.exchange_delete(name)
        finally:
            await conn.close()

    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(delete())
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    worker = threading.Thread(target=run, name="delete-test-queues")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


#: full names of the RabbitMQ queues declared in this process since the last test ended
_DECLARED_QUEUES: set[str] = set()
#: full names of the RabbitMQ exchanges (task_queues') declared since the last test ended
_DECLARED_EXCHANGES: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def _record_rabbit_queues() -> Iterator[None]:
    """Note every queue a RabbitMQ broker of this process declares (by wrapping the one method
    that declares them), so each test's queues are deleted as it ends: quorum queues hold file
    handles, and a node that runs out of them accepts no connection. Queues declared by
    worker subprocesses are not seen here; they expire (``RABBIT_TEST_OPTIONS``)."""
    try:
        from aqueue.brokers.rabbitmq.channels import Channels
    except ImportError:  # the rabbitmq extra is not installed
        yield
        return
    declare = Channels.declare
    declare_exchange = Channels.declare_exchange

    async def recording(
        self: Channels, name: str, args: dict[str, Any], *, exclusive: bool = False
    ) -> int:
        if not exclusive:  # an exclusive queue goes with its connection
            _DECLARED_QUEUES.add(name)
        return await declare(self, name, args, exclusive=exclusive)

    async def recording_exchange(self: Channels, exchange: Any) -> None:
        _DECLARED_EXCHANGES.add(self.topo.exchange(exchange.name))
        await declare_exchange(self, exchange)

    Channels.declare = recording  # type: ignore[method-assign]
    Channels.declare_exchange = recording_exchange  # type: ignore[method-assign]
    try:
        yield
    finally:
        Channels.declare = declare  # type: ignore[method-assign]
        Channels.declare_exchange = declare_exchange  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _delete_queues_of_each_test() -> Iterator[None]:
    yield
    if _DECLARED_QUEUES or _DECLARED_EXCHANGES:
        names, exchanges = sorted(_DECLARED_QUEUES), sorted(_DECLARED_EXCHANGES)
        _DECLARED_QUEUES.clear()
        _DECLARED_EXCHANGES.clear()
        delete_rabbit_queues(names, exchanges)


def _delete_rabbit_prefixes(prefixes: list[str]) -> None:
    """Delete every queue and exchange named ``<prefix>.*`` (one listing each for the whole
    session)."""

    def listed(what: str) -> list[str]:
        listing = subprocess.run(
            ["rabbitmqctl", what, "-q", "-p", "/", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return [
            n.strip()
            for n in listing.stdout.splitlines()
            if any(n.strip().startswith(f"{p}.") for p in prefixes)
        ]

    names, exchanges = listed("list_queues"), listed("list_exchanges")
    if names or exchanges:
        delete_rabbit_queues(names, exchanges)


#: every RabbitMQ prefix this process used: each one ``make_url`` hands out, and those
#: tests add themselves (``_rabbit_prefixes``)
_SESSION_RABBIT_PREFIXES: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _rabbit_prefixes() -> Iterator[list[str]]:
    """Prefixes the session's RabbitMQ tests used; their queues and exchanges (those a worker
    subprocess declared too: its control topic's, its queues) are deleted at the end."""
    yield _SESSION_RABBIT_PREFIXES
    if _SESSION_RABBIT_PREFIXES:
        _delete_rabbit_prefixes(sorted(set(_SESSION_RABBIT_PREFIXES)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # a test that waits for a wall-clock moment (a minute boundary: up to 90 s) runs first:
    # started last, its wait alone made `make test`'s slow suite a minute longer
    items.sort(key=lambda item: item.get_closest_marker("waits_for_the_clock") is None)


BROKER_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
]
#: the conformance suite runs on a Redis Cluster too: a private one per test process
#: (xdist worker), started on first use (about 2 s) and stopped at the session's end
CLUSTER_KIND = pytest.param("redis-cluster", id="redis-cluster", marks=pytest.mark.redis_cluster)
#: a broker of your own, through the whole suite (docs/extending.md): its URL, in which
#: ``{unique}`` becomes a fresh name per test (each test needs its own queues and records);
#: the scheme must be registered (entry points) or be one of aqueue's
EXTRA_BROKER_URL = os.environ.get("AQUEUE_TEST_BROKER_URL")
if EXTRA_BROKER_URL:
    BROKER_KINDS.append(pytest.param("extra", id="extra"))


def assert_none_before(claimed: Sequence[object], due: float, slack: float = 0.05) -> None:
    """A claim made before a delayed message's ``due`` time found nothing, or, when a
    loaded machine let the time pass before the claim returned, found it no earlier than
    ``due``: "not early", without betting on how fast the claim comes back."""
    if claimed:
        assert time.time() >= due - slack, f"claimed {due - time.time():.3f} s early"


def make_url(kind: str, tmp_path: Path) -> str:
    """A URL for ``kind`` that no other test shares."""
    unique = uuid.uuid4().hex[:12]
    if kind == "memory":
        return f"memory://t{unique}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'aqueue.db'}"
    if kind == "redis":
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix=aqt-{unique}"
    if kind == "rabbitmq":
        require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
        _SESSION_RABBIT_PREFIXES.append(f"aqt-{unique}")
        return rabbit_url(f"aqt-{unique}")
    if kind == "redis-cluster":
        return private_cluster().url(prefix=f"aqt-{unique}")
    if kind == "extra" and EXTRA_BROKER_URL:
        return EXTRA_BROKER_URL.replace("{unique}", f"aqt-{unique}")
    raise AssertionError(kind)


#: this process's private Redis Cluster (:func:`private_cluster`), once started
_PRIVATE_CLUSTER: list[Any] = []


def private_cluster() -> Any:
    """This test process's private 3-master Redis Cluster (``tests/faults/redis_cluster``),
    started on first use on free loopback ports and stopped by PID when the session ends."""
    if not _PRIVATE_CLUSTER:
        from tests.faults.redis_cluster import PrivateCluster

        cluster = PrivateCluster(Path(tempfile.mkdtemp(prefix="aqueue-cluster-")))
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            shutil.rmtree(cluster.directory, ignore_errors=True)
            raise
        _PRIVATE_CLUSTER.append(cluster)
    return _PRIVATE_CLUSTER[0]


@pytest.fixture(scope="session", autouse=True)
def _stop_private_cluster() -> Iterator[None]:
    yield
    while _PRIVATE_CLUSTER:
        cluster = _PRIVATE_CLUSTER.pop()
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)


def delete_cluster_prefix(prefix: str) -> None:
    """Delete a test's keys from every master of the private cluster (one key per DEL:
    they are in different slots)."""
    for node in private_cluster().live():
        client = node.admin()
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("UNLINK", key)
            pipe.execute(raise_on_error=False)  # a replica answers MOVED: its master deletes
        finally:
            client.close()


def broker_url_of(
    request: pytest.FixtureRequest, tmp_path: Path, *, shared_results: bool = True
) -> Iterator[str]:
    """The body of a broker URL fixture parametrized by kind: a URL no other test shares,
    its keys or queues deleted afterwards. ``shared_results``: the test builds a result
    store from it (none on RabbitMQ: skipped there unless an ``app`` pairs it with one)."""
    paired = {"app", "broker", "topics"} & set(request.fixturenames)
    if request.param == "rabbitmq" and shared_results and not paired:
        # amqp:// has no result store (rpc:// serves only the caller); the `app` fixture
        # pairs it with a memory:// store, but a test building its own from broker_url cannot
        # (the `topics` fixture builds only a broker)
        pytest.skip("amqp:// has no shared result store; this test builds one from broker_url")
    url = make_url(request.param, tmp_path)
    if request.param == "rabbitmq":
        request.getfixturevalue("_rabbit_prefixes").append(prefix_of(url))
    yield url
    if request.param == "redis":
        delete_redis_prefix(prefix_of(url))
    elif request.param == "redis-cluster":
        delete_cluster_prefix(prefix_of(url))


@pytest.fixture(params=BROKER_KINDS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from broker_url_of(request, tmp_path)


@contextlib.asynccontextmanager
async def app_with_shared_results(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path, name: str = "tests"
) -> AsyncIterator[App]:
    """An app on broker ``kind``, connected; on RabbitMQ its results (and so its worker
    registry) live in Redis, a store every process shares (``amqp://``'s own ``rpc://``
    serves only the caller: no chords, no registry). Its Redis keys and RabbitMQ queues
    are deleted afterwards."""
    broker = make_url(kind, tmp_path)
    backend: str | None = None
    if kind == "rabbitmq":
        request.getfixturevalue("_rabbit_prefixes").append(prefix_of(broker))
        backend = make_url("redis", tmp_path)
    the_app = App(name, broker=broker, backend=backend, lease_seconds=5.0)
    try:
        async with the_app:
            yield the_app
    finally:
        for used in (broker, backend or ""):
            if used.startswith("redis://"):
                delete_redis_prefix(prefix_of(used))


@pytest.fixture
async def app(broker_url: str) -> AsyncIterator[App]:
    # amqp:// implies rpc:// (results for the caller only: no revocations, no chords), so
    # its tests keep results in a memory:// store that the embedded worker shares
    implied = default_backend_url(broker_url)
    backend = None if implied == broker_url else f"memory://r{uuid.uuid4().hex[:12]}"
    the_app = App("tests", broker=broker_url, backend=backend, lease_seconds=5.0)
    async with the_app:
        yield the_app
