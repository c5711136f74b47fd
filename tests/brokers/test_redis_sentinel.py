"""Redis Sentinel end to end (issue 20), against a private setup (tests/faults/redis_sentinel.py):
a master with a password, one replica, three sentinels with a password of their own.

Covered: a task round trip with the broker and the result backend on aqueue's
``redis+sentinel://`` URL and on Celery's ``sentinel://...;sentinel://...`` spelling with
``broker_transport_options``; a wrong sentinel password or master name failing at connect
with a message that holds no password; and a publish that reaches a master demoted to a
replica (``READONLY``) being sent again to the new master instead of failing, where the
scripts are loaded again (``NOSCRIPT``). The failover
during a drain is tests/faults/test_redis_sentinel_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator

import pytest

from aqueue import App, BrokerError
from aqueue.brokers.redis import RedisBroker
from aqueue.core.protocols import Outgoing

from ..faults.redis_sentinel import MASTER_NAME, SentinelSetup, running_sentinels
from ..faults.redis_server import HOST

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), pytest.mark.redis]

PASSWORD = "m4ster-pw-sentinel"
SENTINEL_PASSWORD = "s3ntinel-pw"


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    with running_sentinels(
        tmp_path_factory.mktemp("sentinel"),
        password=PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    ) as setup:
        yield setup


def _app(broker: str, backend: str, **conf: object) -> App:
    app = App("sentinel", broker=broker, backend=backend, **conf)  # type: ignore[arg-type]

    @app.task(name="sentinel.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


async def test_round_trip_aqueue_spelling(sentinels: SentinelSetup) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    url = sentinels.url(prefix=prefix, sentinel_password=SENTINEL_PASSWORD)
    app = _app(url, url)
    async with app.worker():
        handle = await app.send_task("sentinel.add", args=(2, 3))
        assert await handle.wait(timeout=20) == 5
    await app.close()


async def test_round_trip_celery_spelling(sentinels: SentinelSetup) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    url = sentinels.celery_url()
    # Celery's result_backend_transport_options have no counterpart: the backend's
    # options go in its URL's query
    query = f"master_name={MASTER_NAME}&prefix={prefix}&sentinel_password={SENTINEL_PASSWORD}"
    backend = f"{url}?{query}"
    app = _app(url, backend)
    app.conf.update(
        broker_transport_options={
            "master_name": MASTER_NAME,
            "sentinel_kwargs": {"password": SENTINEL_PASSWORD},
            "prefix": prefix,
        }
    )
    async with app.worker():
        handle = await app.send_task("sentinel.add", args=(20, 22))
        assert await handle.wait(timeout=20) == 42
    await app.close()


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("sentinel_password=wrong", "No master found"),
        (f"sentinel_password={SENTINEL_PASSWORD}&master_name=", "No master found"),
    ],
)
async def test_connect_failures_are_clear(sentinels: SentinelSetup, query: str, says: str) -> None:
    url = sentinels.url(retries=0, socket_connect_timeout=1, operation_timeout=5)
    url += "&" + query
    if "master_name=" in query:  # a master the sentinels do not know
        url = url.replace(f"/{MASTER_NAME}/", "/nosuchmaster/")
    broker = RedisBroker(url)
    with pytest.raises(BrokerError) as caught:
        await broker.connect()
    text = str(caught.value)
    assert says in text
    assert PASSWORD not in text and SENTINEL_PASSWORD not in text
    await broker.close()


async def test_publish_to_a_demoted_master_goes_to_the_new_one(
    sentinels: SentinelSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """A publish written to a master that has just become a replica (``READONLY``; its
    clients not yet disconnected) did not run: it is sent again, to the new master."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(sentinels.url(prefix=prefix, sentinel_password=SENTINEL_PASSWORD))
    await broker.connect()
    try:
        assert await broker.publish([Outgoing("a", "q", b"a")]) == [True]  # connects
        old, new = await asyncio.to_thread(sentinels.failover)
        # turn the old master into a replica at once, without the client kill Sentinel
        # sends with its own reconfiguration: the broker's connections stay on it
        with contextlib.closing(sentinels.server(old).admin()) as admin:
            admin.execute_command("REPLICAOF", HOST, str(new))
            ids = admin.execute_command("CLIENT", "LIST", "TYPE", "normal")
            assert ids.count(b"\n") >= 2  # the broker's connections are still there
        # the new master has its replica back (publishes wait for one), and none of the
        # scripts: the broker's calls there are refused (NOSCRIPT) until it loads them
        await asyncio.to_thread(sentinels.await_settled)
        with contextlib.closing(sentinels.server(new).admin()) as admin:
            admin.script_flush()
        with caplog.at_level(logging.DEBUG, logger="aqueue.broker.redis"):
            assert await broker.publish([Outgoing("b", "q", b"b")]) == [True]
        # it did reach the demoted master first, and was refused there unrun
        assert any("not sent" in r.getMessage() for r in caplog.records)
        assert await broker.publish([Outgoing("c", "q", b"c"), Outgoing("d", "q", b"d")]) == [
            True,
            True,
        ]
        with contextlib.closing(sentinels.server(new).admin()) as admin:
            ready = admin.zrange(f"{prefix}:{{q:q}}:ready", 0, -1)
        assert {b"b", b"c", b"d"} <= set(ready)
        assert await broker.size("q") == 4  # "a" came along with the replication
        claimed = await broker.claim(["q"], limit=10, lease_seconds=5, owner="t", timeout=1)
        assert sorted(d.id for d in claimed) == ["a", "b", "c", "d"]
        assert all([await d.ack() for d in claimed])
        assert await broker.size("q") == 0
    finally:
        await broker.close()
        await asyncio.to_thread(sentinels.await_settled)
