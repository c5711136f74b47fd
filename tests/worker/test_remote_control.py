"""Remote control and inspection of running workers (docs/fleet.md, "Inspect and control"):
every command through the broker's control topic, on every broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from aqueue import App
from aqueue.core.control import registry_of
from aqueue.core.errors import ConfigurationError, TaskFailed
from aqueue.core.protocols import ListsScheduled

FAST = {"worker_heartbeat_interval": 0.3, "worker_lost_timeout": 1.5}


class Gate:
    """Tasks that block until opened, and tell when they started."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started: list[str] = []
        self.changed = asyncio.Event()

    async def wait_started(self, n: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.started) < n:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def fleet_app(app: App) -> AsyncIterator[App]:
    app.conf.update(**FAST)
    yield app


def blocking_task(app: App, gate: Gate, name: str = "rc.block"):  # type: ignore[no-untyped-def]
    @app.task(name=name, bind=True)
    async def block(self, n: int) -> int:  # type: ignore[no-untyped-def]
        gate.started.append(self.request.id)
        gate.changed.set()
        await gate.open.wait()
        return n

    return block


async def test_ping_reaches_every_worker_and_destination_one(fleet_app: App) -> None:
    app = fleet_app
    async with app.worker(hostname="a@rc") as a, app.worker(hostname="b@rc"):
        t0 = time.monotonic()
        # the registry says two workers live: collecting ends when both answered (without
        # a registry, RabbitMQ with memory:// results here, at the limit given)
        limit = None if await registry_of(app) is not None else 2
        assert await app.control.inspect(timeout=30, limit=limit).ping() == {
            "a@rc": {"ok": "pong"},
            "b@rc": {"ok": "pong"},
        }
        assert time.monotonic() - t0 < 30
        one = None if limit is None else 1
        assert await app.control.inspect(["b@rc"], timeout=30, limit=one).ping() == {
            "b@rc": {"ok": "pong"}
        }
        # a worker id is a destination too
        assert await app.control.ping([a.owner], timeout=30, limit=one) == [
            {"a@rc": {"ok": "pong"}}
        ]


async def test_active_and_reserved_list_the_right_tasks(fleet_app: App) -> None:
    app = fleet_app
    gate = Gate()
    block = blocking_task(app, gate)
    handles = [await block.delay(i) for i in range(3)]
    async with app.worker(hostname="w@rc", concurrency=1, prefetch=3):
        await gate.wait_started(1)
        inspect = app.control.inspect(timeout=10, limit=1)
        # reserved: the two claimed behind the running one (the worker claims them soon)
        async with asyncio.timeout(10):
            while len((await inspect.reserved()).get("w@rc", [])) < 2:
                await asyncio.sleep(0.05)
        active = (await inspect.active())["w@rc"]
        reserved = (await inspect.reserved())["w@rc"]
        assert [t["id"] for t in active] == gate.started
        assert active[0]["name"] == "rc.block" and active[0]["hostname"] == "w@rc"
        assert active[0]["time_start"] and active[0]["acknowledged"]
        assert active[0]["args"] is None  # arguments hidden unless worker_inspect_arguments
        assert sorted(t["id"] for t in reserved) == sorted(
            h.id for h in handles if h.id not in gate.started
        )
        assert all(t["time_start"] is None for t in reserved)
        gate.open.set()
        assert sorted([await h.wait(timeout=20) for h in handles]) == [0, 1, 2]
        assert (await inspect.active())["w@rc"] == []


async def test_arguments_are_shown_when_asked(fleet_app: App) -> None:
    app = fleet_app
    app.conf.update(worker_inspect_arguments=True)
    gate = Gate()
    block = blocking_task(app, gate)
    handle = await block.delay(41)
    async with app.worker(hostname="w@rc"):
        await gate.wait_started(1)
        [info] = (await app.control.inspect(timeout=10, limit=1).active())["w@rc"]
        assert info["args"] == "[41]"
        gate.open.set()
        assert await handle.wait(timeout=20) == 41


async def test_scheduled_lists_tasks_waiting_for_their_eta(fleet_app: App) -> None:
    app = fleet_app

    @app.task(name="rc.later")
    async def later() -> None:
        return None

    handle = await later.apply_async(countdown=600)
    async with app.worker(hostname="w@rc"):
        scheduled = (await app.control.inspect(timeout=10, limit=1).scheduled())["w@rc"]
    if not isinstance(app.broker, ListsScheduled):
        assert scheduled == []  # RabbitMQ's delay queues cannot be read without taking
        return
    [entry] = scheduled
    assert entry["request"]["id"] == handle.id
    assert entry["request"]["name"] == "rc.later"
    assert 590 < entry["eta"] - time.time() <= 600


async def test_registered_stats_queues_conf(fleet_app: App) -> None:
    app = fleet_app

    @app.task(name="rc.add", rate_limit="100/s")
    async def add(a: int, b: int) -> int:
        return a + b

    async with app.worker(hostname="w@rc", queues=["celery", "rc-other"], concurrency=7):
        assert await (await add.delay(2, 2)).wait(timeout=20) == 4
        inspect = app.control.inspect(timeout=10, limit=1)
        assert "rc.add" in (await inspect.registered())["w@rc"]
        assert "rc.add [rate_limit=100/s]" in (await inspect.registered("rate_limit"))["w@rc"]
        stats = (await inspect.stats())["w@rc"]
        assert stats["total"] == {"rc.add": 1}
        assert stats["succeeded"] == 1
        assert stats["pool"]["max-concurrency"] == 7
        assert stats["uptime"] >= 0 and stats["rusage"]["utime"] > 0
        assert [q["name"] for q in (await inspect.active_queues())["w@rc"]] == [
            "celery",
            "rc-other",
        ]
        conf = (await inspect.conf())["w@rc"]
        assert conf["worker_lost_timeout"] == 1.5
        assert "task_serializer" not in conf  # only what was set
        every = (await inspect.conf(with_defaults=True))["w@rc"]
        assert every["task_serializer"] == app.conf.task_serializer


async def test_unknown_command_and_bad_arguments_are_errors(fleet_app: App) -> None:
    app = fleet_app
    async with app.worker(hostname="w@rc"):
        [reply] = await app.control.broadcast("nonsense", reply=True, timeout=10, limit=1)
        assert "unknown command" in reply["w@rc"]["error"]
        [reply] = await app.control.broadcast(
            "pool_grow", {"x": 1}, reply=True, timeout=10, limit=1
        )
        assert "bad arguments" in reply["w@rc"]["error"]
        [reply] = await app.control.rate_limit("no.such.task", "1/s", timeout=10, limit=1)
        assert "unknown task" in reply["w@rc"]["error"]
        with pytest.raises(ConfigurationError, match="bad rate_limit"):
            await app.control.rate_limit("rc.any", "fast")


async def test_remote_control_can_be_turned_off(fleet_app: App) -> None:
    app = fleet_app
    app.conf.update(worker_enable_remote_control=False)
    async with app.worker(hostname="w@rc"):
        assert await app.control.inspect(timeout=0.5).ping() == {}


async def test_revoke_stops_a_claimed_task_before_it_starts(fleet_app: App) -> None:
    app = fleet_app
    gate = Gate()
    block = blocking_task(app, gate)
    first = await block.delay(1)
    second = await block.delay(2)
    async with app.worker(hostname="w@rc", concurrency=1, prefetch=2):
        await gate.wait_started(1)
        inspect = app.control.inspect(timeout=10, limit=1)
        async with asyncio.timeout(10):
            while not (await inspect.reserved()).get("w@rc"):
                await asyncio.sleep(0.05)
        waiting = second if gate.started == [first.id] else first
        await app.control.revoke(waiting.id)  # its claim checked the records before this
        async with asyncio.timeout(10):
            while (await inspect.reserved()).get("w@rc"):
                await asyncio.sleep(0.05)
        assert waiting.id in (await inspect.revoked())["w@rc"]
        gate.open.set()
        running = first if waiting is second else second
        assert await running.wait(timeout=20) in (1, 2)
        assert await waiting.state() == "REVOKED"
        assert len(gate.started) == 1  # the revoked one never ran


async def test_revoke_terminate_and_by_name(fleet_app: App) -> None:
    app = fleet_app
    gate = Gate()
    block = blocking_task(app, gate)
    other = blocking_task(app, gate, name="rc.other")
    h1 = await block.delay(1)
    h2 = await other.delay(2)
    async with app.worker(hostname="w@rc", concurrency=2):
        await gate.wait_started(2)
        replies = await app.control.revoke_by_name("rc.bl*", terminate=True, timeout=10, limit=1)
        assert replies[0]["w@rc"]["revoked"] == [h1.id]
        assert await h1.state() == "REVOKED"
        async with asyncio.timeout(10):
            while (await app.control.inspect(timeout=10, limit=1).active())["w@rc"] != [] and len(
                (await app.control.inspect(timeout=10, limit=1).active())["w@rc"]
            ) != 1:
                await asyncio.sleep(0.05)
        [left] = (await app.control.inspect(timeout=10, limit=1).active())["w@rc"]
        assert left["id"] == h2.id
        await app.control.revoke(h2.id, terminate=True)
        async with asyncio.timeout(10):
            while (await app.control.inspect(timeout=10, limit=1).active())["w@rc"]:
                await asyncio.sleep(0.05)
        assert await h2.state() == "REVOKED"


async def test_rate_limit_and_time_limit_at_run_time(fleet_app: App) -> None:
    app = fleet_app

    @app.task(name="rc.tick")
    async def tick() -> float:
        return time.time()

    @app.task(name="rc.slow")
    async def slow() -> None:
        await asyncio.sleep(30)

    async with app.worker(hostname="w@rc"):
        [reply] = await app.control.rate_limit("rc.tick", "2/s", timeout=10, limit=1)
        assert "2/s" in reply["w@rc"]["ok"]
        handles = [await tick.delay() for _ in range(5)]
        times = sorted([await h.wait(timeout=30) for h in handles])
        # a burst of 2, then one every half second: the fifth runs >= 1.5 s after the first
        assert times[-1] - times[0] >= 1.4
        [reply] = await app.control.time_limit("rc.slow", soft=None, hard=0.3, timeout=10, limit=1)
        assert "hard=0.3" in reply["w@rc"]["ok"]
        handle = await slow.delay()
        with pytest.raises(TaskFailed, match=r"TimeLimitExceeded: time limit \(0\.3s\)"):
            await handle.wait(timeout=20)


async def test_add_and_cancel_consumer(fleet_app: App) -> None:
    app = fleet_app

    @app.task(name="rc.where", bind=True)
    async def where(self) -> str:  # type: ignore[no-untyped-def]
        return str(self.request.queue)

    async with app.worker(hostname="w@rc", queues=["celery"]) as worker:
        extra = await where.apply_async(queue="rc-extra")
        [reply] = await app.control.add_consumer("rc-extra", timeout=10, limit=1)
        assert "now consuming" in reply["w@rc"]["ok"]
        assert await extra.wait(timeout=20) == "rc-extra"
        assert worker.queues == ["celery", "rc-extra"]
        if await registry_of(app) is not None:
            [seen] = await app.control.workers()
            assert seen.info.queues == ("celery", "rc-extra")  # listed before the reply
        [reply] = await app.control.cancel_consumer("rc-extra", timeout=10, limit=1)
        assert "no longer consuming" in reply["w@rc"]["ok"]
        left = await where.apply_async(queue="rc-extra")
        assert await (await where.delay()).wait(timeout=20) == "celery"
        assert await app.broker.size("rc-extra") == 1
        assert await left.state() == "PENDING"
        [reply] = await app.control.cancel_consumer("celery", timeout=10, limit=1)
        assert "only queue" in reply["w@rc"]["error"]


async def test_commands_that_wait_for_the_registry_answer_within_the_default_timeout(
    app: App,
) -> None:
    """add_consumer and pool_grow reply once a heartbeat listed the change: with the
    default heartbeat interval (1 s) that must not take the caller's whole 1 s timeout."""
    assert app.conf.worker_heartbeat_interval == 1.0
    async with app.worker(hostname="w@rc", queues=["celery"]):
        assert list(await app.control.add_consumer("rc-extra")) == [
            {"w@rc": {"ok": "now consuming from 'rc-extra'"}}
        ]
        assert list(await app.control.pool_grow(1)) == [{"w@rc": {"ok": "pool will grow to 101"}}]


async def test_pool_grow_and_shrink(fleet_app: App) -> None:
    app = fleet_app
    gate = Gate()
    block = blocking_task(app, gate)
    async with app.worker(hostname="w@rc", concurrency=1, prefetch=4):
        [reply] = await app.control.pool_grow(2, timeout=10, limit=1)
        assert "grow to 3" in reply["w@rc"]["ok"]
        handles = [await block.delay(i) for i in range(3)]
        await gate.wait_started(3)  # three at once now
        stats = (await app.control.inspect(timeout=10, limit=1).stats())["w@rc"]
        assert stats["pool"]["max-concurrency"] == 3
        [reply] = await app.control.pool_shrink(2, timeout=10, limit=1)
        assert "shrink to 1" in reply["w@rc"]["ok"]
        gate.open.set()
        assert sorted([await h.wait(timeout=20) for h in handles]) == [0, 1, 2]
        gate.open.clear()
        more = [await block.delay(i) for i in range(2)]
        await gate.wait_started(4)
        # one slot now: the second is claimed (the worker claims it soon) and waits while
        # the first blocks
        inspect = app.control.inspect(timeout=10, limit=1)
        async with asyncio.timeout(10):
            while len((await inspect.reserved())["w@rc"]) != 1:
                await asyncio.sleep(0.05)
        assert len((await inspect.active())["w@rc"]) == 1
        assert len(gate.started) == 4
        gate.open.set()
        assert sorted([await h.wait(timeout=20) for h in more]) == [0, 1]
        [reply] = await app.control.pool_shrink(5, timeout=10, limit=1)
        assert "below 1" in reply["w@rc"]["error"]


async def test_shutdown_stops_the_worker_gracefully(fleet_app: App) -> None:
    app = fleet_app
    worker = app.worker(hostname="w@rc")
    await worker.start()
    [reply] = await app.control.shutdown(timeout=10, limit=1)
    assert reply == {"w@rc": {"ok": "shutting down"}}
    async with asyncio.timeout(20):
        await worker.wait_stopped()
    if app.broker.capabilities.leases or hasattr(app.broker, "worker_registry"):
        assert all(w.info.id != worker.owner for w in await _workers_or_empty(app))


async def _workers_or_empty(app: App) -> list:  # type: ignore[type-arg]
    try:
        return await app.control.workers()
    except ConfigurationError:
        return []


async def test_a_lower_rate_holds_at_once_for_a_backlog_slotted_at_the_old_one(
    fleet_app: App,
) -> None:
    app = fleet_app
    ran: list[float] = []
    enough = asyncio.Event()

    @app.task(name="rc.flow", rate_limit="50/s")
    async def flow() -> None:
        ran.append(time.time())
        if len(ran) >= 75:  # the burst of 50, then half a second at 50/s
            enough.set()

    for _ in range(300):  # six seconds' worth at 50/s: slots get reserved well ahead
        await flow.delay()
    async with app.worker(hostname="w@rc", concurrency=20):
        async with asyncio.timeout(30):
            await enough.wait()
        [reply] = await app.control.rate_limit("rc.flow", "5/s", timeout=10, limit=1)
        changed = time.time()
        assert "5/s" in reply["w@rc"]["ok"]
        async with asyncio.timeout(30):
            while time.time() < changed + 2.5:
                await asyncio.sleep(0.1)
    window = [t for t in ran if changed + 0.5 <= t < changed + 2.5]
    # 5/s for two seconds, plus a burst of 5: slots reserved at 50/s before the change
    # would give about 100 here
    assert len(window) <= 5 * 2 + 5 + 2, len(window)
    assert len(window) >= 5  # and the task still runs


async def test_enable_and_disable_events_remotely(fleet_app: App) -> None:
    app = fleet_app
    async with app.worker(hostname="w@rc") as worker:
        assert not worker.events.enabled
        [reply] = await app.control.enable_events(timeout=10, limit=1)
        assert reply == {"w@rc": {"ok": "task events enabled"}}
        assert worker.events.enabled
        [reply] = await app.control.disable_events(timeout=10, limit=1)
        assert reply == {"w@rc": {"ok": "task events disabled"}}
        assert not worker.events.enabled


async def test_add_consumer_follows_the_rules_of_a_starting_worker(fleet_app: App) -> None:
    from aqueue import Queue

    app = fleet_app
    app.conf.update(task_queues=[Queue("celery")], task_create_missing_queues=False)
    async with app.worker(hostname="w@rc") as worker:
        [reply] = await app.control.add_consumer("rc-undeclared", timeout=10, limit=1)
        assert "not in task_queues" in reply["w@rc"]["error"]
        assert worker.queues == ["celery"]


async def test_a_control_request_nested_too_deep_is_ignored(fleet_app: App) -> None:
    """A request whose arguments nest deeper than the recursion limit raised RecursionError
    out of the mailbox (only DecodeError was caught): the worker took no command after it."""
    from aqueue.core.protocols import KeepsTopics
    from aqueue.core.remote import CONTROL_CAP, CONTROL_TOPIC

    app = fleet_app
    deep = b'{"id":"x","command":"ping","arguments":{"a":' + b"[" * 200_000
    deep += b"]" * 200_000 + b"}}"
    async with app.worker(hostname="w@rc"):
        broker = app.broker
        assert isinstance(broker, KeepsTopics)
        await broker.topics.publish(CONTROL_TOPIC, [deep], cap=CONTROL_CAP)
        replies = await app.control.inspect(timeout=10, limit=1).ping()
        assert replies == {"w@rc": {"ok": "pong"}}
