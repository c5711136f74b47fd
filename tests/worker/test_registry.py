"""The worker registry: workers list themselves, leave on stop, and a lost one's leases are
handed back by a live worker at once, never a live one's (docs/fleet.md)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from aqueue import App
from aqueue.core.errors import ConfigurationError
from aqueue.core.presence import Presence, new_worker_id, worker_info
from aqueue.core.protocols import KeepsWorkers, WorkerRegistry

from ..conftest import delete_redis_prefix, make_url, prefix_of

#: short enough for a quick test, long enough that a loaded machine never misses a beat
FAST = {"worker_heartbeat_interval": 0.3, "worker_lost_timeout": 1.5}


def registry_or_skip(app: App) -> WorkerRegistry:
    broker = app.broker
    if not isinstance(broker, KeepsWorkers):
        pytest.skip(f"{type(broker).__name__} keeps no worker registry")
    return broker.worker_registry


async def test_workers_are_listed_with_their_info_and_leave_on_stop(app: App) -> None:
    if not isinstance(app.broker, KeepsWorkers):
        with pytest.raises(ConfigurationError, match="keeps no worker registry"):
            await app.control.workers()
        return
    worker = app.worker(queues=["celery", "other"], concurrency=3, hostname="reg@test")
    await worker.start()
    try:
        [seen] = await app.control.workers()
        assert seen.info.id == worker.owner
        assert seen.info.hostname == "reg@test"
        assert seen.info.pid == os.getpid()
        assert seen.info.queues == ("celery", "other")
        assert seen.info.concurrency == 3
        assert seen.info.versions["aqueue"]
        assert not seen.missing
        assert time.time() - seen.last_seen < 5
        assert seen.to_dict()["hostname"] == "reg@test"
    finally:
        await worker.stop()
    assert await app.control.workers() == []


async def test_a_silent_workers_leases_are_handed_back_at_once(app: App) -> None:
    registry = registry_or_skip(app)
    app.conf.update(**FAST)
    runs: list[int] = []

    @app.task(name="reg.once")
    async def once() -> str:
        runs.append(1)
        return "ran"

    handle = await once.delay()
    # a worker that claimed the task, beat once, and died (its lease would last a minute)
    dead_id = new_worker_id("dead@test")
    [held] = await app.broker.claim(["celery"], limit=1, lease_seconds=60, owner=dead_id, timeout=5)
    await asyncio.to_thread(
        registry.beat, worker_info(dead_id, "dead@test", ["celery"], 1), [held.lease], 3600
    )
    silent_at = time.monotonic()
    async with app.worker(hostname="live@test") as live:
        assert await handle.wait(timeout=20) == "ran"
        recovered = time.monotonic() - silent_at
        # marked lost before its leases were handed back (one script / transaction)
        assert {w.info.id: w.lost for w in await registry.workers()}[dead_id]
        listed = {w.info.id: w for w in await app.control.workers()}
        assert listed[dead_id].missing and not listed[live.owner].missing
        assert [w.info.id for w in await app.control.workers()][-1] == dead_id  # missing last
    print(f"\nsilent worker's task ran again after {recovered:.2f}s (lost timeout 1.5s)")
    assert runs == [1]
    assert await held.ack() is False  # the dead holder's late ack is fenced
    assert recovered < 30  # never the 60 s lease


async def test_a_live_worker_keeps_a_task_longer_than_the_lost_timeout(app: App) -> None:
    registry_or_skip(app)
    app.conf.update(**FAST)
    runs: list[int] = []

    @app.task(name="reg.long")
    async def long() -> str:
        runs.append(1)
        await asyncio.sleep(3 * FAST["worker_lost_timeout"])
        return "done"

    async with app.worker(hostname="a@test") as a, app.worker(hostname="b@test") as b:
        assert await (await long.delay()).wait(timeout=30) == "done"
        assert a.presence is not None and b.presence is not None
        assert a.presence.reaped == [] and b.presence.reaped == []
        assert not any(w.missing for w in await app.control.workers())
    assert runs == [1]


def test_the_lost_timeout_must_leave_room_for_missed_beats() -> None:
    app = App("reg", broker="memory://reg-conf", worker_heartbeat_interval=2.0)
    with pytest.raises(ConfigurationError, match="worker_lost_timeout"):
        app.worker()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("store", ["redis", "sqlite"])
async def test_on_rabbitmq_the_result_backend_keeps_the_registry(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A RabbitMQ connection is its lease (its messages come back when it drops): the
    registry only lists workers, and lives in the result backend."""
    url = make_url("rabbitmq", tmp_path)
    request.getfixturevalue("_rabbit_prefixes").append(prefix_of(url))
    backend = make_url(store, tmp_path)
    app = App("reg", broker=url, backend=backend)
    app.conf.update(**FAST)
    try:
        async with app:
            worker = app.worker(hostname="rabbit@test")
            await worker.start()
            try:
                [seen] = await app.control.workers()
                assert seen.info.id == worker.owner and not seen.missing
            finally:
                await worker.stop()
            assert await app.control.workers() == []
    finally:
        if store == "redis":
            delete_redis_prefix(prefix_of(backend))


async def test_a_changed_queue_list_is_listed_by_the_next_beat_not_the_one_after(
    app: App,
) -> None:
    """add_consumer replies once the registry lists the new queue. It waited for two beats,
    and the second came only at the next interval: a reply took more than the heartbeat
    interval (1.2 s at the default 1 s: later than the control client's 1 s timeout)."""
    registry = registry_or_skip(app)
    interval = 60.0  # no regular beat comes while the test runs
    presence = Presence(
        registry,
        worker_info(new_worker_id("reg@test"), "reg@test", ["celery"], 3),
        list,
        interval=interval,
        lost_after=3 * interval,
    )
    await asyncio.to_thread(presence.start)
    try:
        update = asyncio.to_thread(presence.update, queues=("celery", "more"), concurrency=3)
        await asyncio.wait_for(update, timeout=interval / 4)
        [seen] = await app.control.workers()
        assert seen.info.queues == ("celery", "more")
    finally:
        await asyncio.to_thread(presence.stop)


async def test_the_renewal_thread_leaves_a_lease_no_beat_listed_short(app: App) -> None:
    """A claim's lease is short until a heartbeat lists it, so a kill -9 before that still
    hands it back within seconds. The lease renewal thread renewed every held lease to the
    full lease, listed or not: a kill right after it left the task neither listed (the
    reaper passed it by) nor short, and it waited the whole lease (30 s; `make chaos`)."""
    registry_or_skip(app)
    app.conf.update(lease_seconds=30.0, **FAST)
    started = asyncio.Event()
    release = asyncio.Event()

    @app.task(name="reg.hold")
    async def hold() -> None:
        started.set()
        await release.wait()

    worker = app.worker(hostname="renew@test", concurrency=1)
    await worker.start()
    try:
        presence = worker.presence
        assert presence is not None and worker._claim_lease < worker.lease_seconds
        beat = presence._beat
        presence._beat = lambda: None  # type: ignore[method-assign]  # no beat lists it yet
        await hold.delay()
        async with asyncio.timeout(10):
            await started.wait()
        [held] = worker._held_leases()
        assert worker._leases_to_renew() == []  # short: the renewal thread leaves it
        presence._beat = beat  # type: ignore[method-assign]
        await asyncio.to_thread(presence.update, queues=("celery",), concurrency=1)
        assert worker._leases_to_renew() == [held]  # listed (and renewed by that beat)
    finally:
        release.set()
        await worker.stop()


async def test_a_stop_during_the_start_stops_what_the_start_went_on_to_start(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM just after "ready" arrives while the worker still registers itself: the stop
    waits for the start, then stops all of it. Before, the stop ran half way (the registry's
    heartbeat thread not started yet, so joining it raised) and the start went on to start
    the consumer after it: the worker never exited (its supervisor waited 30 s and more)."""
    registry_or_skip(app)
    entered, release = threading.Event(), threading.Event()
    register = Presence.start

    def registering_slowly(self: Presence) -> None:
        entered.set()
        release.wait(10)
        register(self)

    monkeypatch.setattr(Presence, "start", registering_slowly)
    worker = app.worker(hostname="early@test")
    starting = asyncio.create_task(worker.start())
    assert await asyncio.to_thread(entered.wait, 10)
    stopping = asyncio.create_task(worker.stop())
    # the stop has begun (it is waiting, or ran through before the fix) when the start is let go
    await asyncio.wait([stopping], timeout=0.2)
    release.set()
    async with asyncio.timeout(20):
        await starting
        await stopping
    assert worker.stopped
    assert await app.control.workers() == []  # it left the registry, and beats no more:
    assert not [t for t in threading.enumerate() if t.name == "aqueue-presence"]
