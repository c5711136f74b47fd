"""docs/reliability.md, "Redis Cluster node restart": a master of a private Redis Cluster
is killed (SIGKILL) in the middle of a drain and started again; nothing acknowledged is lost.

The cluster (3 masters, no replicas) runs with ``appendonly yes`` and ``appendfsync
always``: Redis writes every write to its AOF and fsyncs it before it replies, so what a
client saw acknowledged (a publish that returned, an ack, a stored result) survives the
crash, and the restarted master comes back with the same slots (its ``nodes-<port>.conf``).
While it is down its slots answer nothing: calls to them fail (and are retried by the
worker, or re-sent by the producer with the same task id); the other masters' queues go on.
The shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aqueue.brokers.redis import RedisClusterBroker
from aqueue.core.protocols import Outgoing
from aqueue.core.result import AsyncResult
from aqueue.transports.redis.keys import KeySpace

from .redis_cluster import PrivateCluster, running_cluster
from .test_redis_faults import Stats, Tally, collect, fmt, make_slow_app, report, send

pytestmark = [pytest.mark.faults, pytest.mark.redis_cluster, pytest.mark.slow]


@pytest.fixture(autouse=True)
async def _collect_replaced_nodes() -> AsyncIterator[None]:
    """redis-py < 5.3's cluster client drops the nodes a topology refresh replaced (a node
    died) without closing them: collected here, while their event loop still runs, their
    connections close quietly, instead of in a later test on a closed loop (an unraisable
    error there)."""
    yield
    gc.collect()


@pytest.fixture
def durable_cluster(tmp_path: Path) -> Iterator[PrivateCluster]:
    with running_cluster(tmp_path / "cluster", appendonly=True, appendfsync="always") as c:
        yield c


def spread(cluster: PrivateCluster, prefix: str) -> list[str]:
    """Three queue names served by three different masters, the first by the cluster's
    first listed node (the one the result watchers subscribe on first)."""
    keys = KeySpace(prefix)
    found: dict[int, str] = {}
    for n in range(1000):
        found.setdefault(cluster.master_of(keys.queue(f"q{n}") + "ready").port, f"q{n}")
        if len(found) == 3:
            first = found.pop(cluster.nodes[0].port)
            return [first, *found.values()]
    raise AssertionError("no queues on three masters")


async def sizes(url: str, queues: list[str]) -> list[int]:
    broker = RedisClusterBroker(url)
    try:
        return [await broker.size(q) for q in queues]
    finally:
        await broker.close()


async def test_a_cluster_node_restart_loses_nothing_acknowledged(
    durable_cluster: PrivateCluster,
) -> None:
    n = 300
    tally, stats = Tally(), Stats()
    prefix = "clrestart"
    queues = spread(durable_cluster, prefix)
    # the first listed node: its queue, its records and the result watchers' pub/sub
    # connection (which moves to the next node) all go down with it
    victim = durable_cluster.nodes[0]
    assert durable_cluster.master_of(KeySpace(prefix).queue(queues[0]) + "ready") is victim
    url = durable_cluster.url(
        prefix=prefix, operation_timeout=2, socket_timeout=2, health_check_interval=1
    )
    # the worker (80 tasks/s) is slower than the producer: a backlog builds up on every
    # master, and the killed one holds queued, in-flight and finished work at the crash
    app, slow = make_slow_app(url, tally, 0.05, lease_seconds=3.0, publish_timeout=2.0)
    handles: dict[int, AsyncResult[Any]] = {}

    async def produce() -> None:
        for i in range(n):
            handles[i] = await send(slow, i, stats, prefix=prefix, queue=queues[i % 3])
            await asyncio.sleep(0.005)

    async with app, app.worker(queues=queues, concurrency=4):
        async with asyncio.timeout(120):  # a safety net
            producer = asyncio.create_task(produce())
            await tally.until(lambda: len(tally.runs) >= 60, 30)
            t_crash = time.monotonic()
            confirmed_before = set(stats.confirmed)
            backlog = len(confirmed_before - set(tally.runs))
            # SIGKILL: a crash; the AOF (fsync always) holds every acknowledged write
            await asyncio.to_thread(victim.restart, kill=True)
            t_up = time.monotonic()
            await asyncio.to_thread(durable_cluster.wait_ok)
            t_ok = time.monotonic()
            await producer
            await asyncio.gather(*(collect(h, i, stats) for i, h in handles.items()))
    left = await sizes(url, queues)
    lost = tally.lost(range(n))
    report(
        "cluster node restart (SIGKILL), AOF always",
        N=n,
        lost=f"{lost}/{n}",
        extra=f"{tally.extra(range(n))}/{n}",
        confirmed_before_crash=len(confirmed_before),
        queued_at_crash=backlog,
        downtime=f"{t_up - t_crash:.2f}s",
        cluster_ok_after=f"{t_ok - t_crash:.2f}s",
        recovery=fmt(tally.first_after(t_up)),
        send_errors=dict(stats.send_errors),
        wait_errors=dict(stats.wait_errors),
        left_in_queues=left,
    )
    assert backlog > 0, "nothing was queued at the crash: the row was not exercised"
    assert lost == 0
    assert left == [0, 0, 0]


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[PrivateCluster]:
    with running_cluster(tmp_path / "cluster", replicas=1) as c:
        yield c


async def test_a_killed_master_fails_over_to_its_replica(
    replicated_cluster: PrivateCluster,
) -> None:
    """3 masters with a replica each, no persistence: the master of a queue is killed
    (SIGKILL) mid-drain and not started again; its replica is promoted once the others
    find it silent for ``cluster-node-timeout`` (2 s here). Replication is asynchronous:
    a write the master acknowledged in its last moment may not have reached the replica
    (Redis's own guarantee, not aqueue's), so what is asserted is that at most what was
    confirmed in the last second before the kill is lost (measured: none), and that
    everything sent after it runs."""
    n = 300
    tally, stats = Tally(), Stats()
    prefix = "clfailover"
    cluster = replicated_cluster
    queues = spread_masters(cluster, prefix)
    victim = cluster.master_of(KeySpace(prefix).queue(queues[0]) + "ready")
    url = cluster.url(prefix=prefix, operation_timeout=2, socket_timeout=2, health_check_interval=1)
    app, slow = make_slow_app(url, tally, 0.05, lease_seconds=3.0, publish_timeout=2.0)
    handles: dict[int, AsyncResult[Any]] = {}

    async def produce() -> None:
        for i in range(n):
            handles[i] = await send(slow, i, stats, prefix=prefix, queue=queues[i % 3])
            await asyncio.sleep(0.005)

    async with app, app.worker(queues=queues, concurrency=4):
        async with asyncio.timeout(120):  # a safety net
            producer = asyncio.create_task(produce())
            await tally.until(lambda: len(tally.runs) >= 60, 30)
            t_kill = time.monotonic()
            confirmed_before = set(stats.confirmed)
            last_second = {i for i in confirmed_before if stats.confirmed[i] > t_kill - 1.0}
            backlog = len(confirmed_before - set(tally.runs))
            await asyncio.to_thread(victim.stop, kill=True)
            await asyncio.to_thread(cluster.wait_ok)  # a replica serves its slots now
            t_over = time.monotonic()
            await producer
            # what the promoted replica has runs; wait for every task (a lost one never
            # would: the deadline ends the wait, and it is counted below)
            try:
                await tally.until(lambda: tally.lost(range(n)) == 0, 30)
            except TimeoutError:
                pass
            await asyncio.gather(
                *(collect(h, i, stats) for i, h in handles.items() if tally.runs[i])
            )
    left = await sizes(url, queues)
    lost = tally.lost(range(n))
    lost_before = sum(1 for i in confirmed_before if tally.runs[i] == 0)
    report(
        "cluster master killed, replica promoted (no persistence)",
        N=n,
        lost=f"{lost}/{n}",
        extra=f"{tally.extra(range(n))}/{n}",
        confirmed_before_kill=len(confirmed_before),
        queued_at_kill=backlog,
        lost_of_confirmed_before_kill=f"{lost_before}/{len(confirmed_before)}",
        failover=f"{t_over - t_kill:.2f}s",
        recovery=fmt(tally.first_after(t_over)),
        send_errors=dict(stats.send_errors),
        wait_errors=dict(stats.wait_errors),
        left_in_queues=left,
    )
    assert backlog > 0, "nothing was queued at the kill: the row was not exercised"
    assert lost_before <= len(last_second)
    assert lost == lost_before, "something sent after the failover was lost"
    assert left == [0, 0, 0]


def spread_masters(cluster: PrivateCluster, prefix: str) -> list[str]:
    """Three queue names served by three different masters."""
    keys = KeySpace(prefix)
    found: dict[int, str] = {}
    for n in range(1000):
        found.setdefault(cluster.master_of(keys.queue(f"q{n}") + "ready").port, f"q{n}")
        if len(found) == 3:
            return list(found.values())
    raise AssertionError("no queues on three masters")


async def test_a_node_down_holds_up_only_its_own_queues(tmp_path: Path) -> None:
    """A master down (before the cluster marks it failed: ``cluster-node-timeout`` is long
    here, 15 s by default in Redis) fails the claims of its queues only: a claim over
    queues on several masters goes on taking from the others, and its idle wait leaves
    the dead node's queue out."""
    with running_cluster(tmp_path / "cluster", node_timeout=60_000) as cluster:
        prefix = "cldown"
        queues = spread_masters(cluster, prefix)
        victim = cluster.master_of(KeySpace(prefix).queue(queues[0]) + "ready")
        url = cluster.url(prefix=prefix, operation_timeout=1, retries=1)
        broker = RedisClusterBroker(url)
        try:
            await broker.publish([msg_to(queues[0]), msg_to(queues[1])])
            await asyncio.to_thread(victim.stop, kill=True)
            async with asyncio.timeout(30):  # a safety net
                [got] = await broker.claim(
                    queues, limit=10, lease_seconds=30, owner="t", timeout=10
                )
                assert got.queue == queues[1]
                await got.ack()
                # idle: waits on the live queues; a publish to one of them wakes it
                claim = asyncio.ensure_future(
                    broker.claim(queues, limit=10, lease_seconds=30, owner="t", timeout=20)
                )
                late = msg_to(queues[2])
                await broker.publish([late])
                [woken] = await claim
                assert woken.id == late.id
                await woken.ack()
        finally:
            await broker.close()


def msg_to(queue: str) -> Outgoing:
    mid = uuid.uuid4().hex
    return Outgoing(id=mid, queue=queue, body=mid.encode())
