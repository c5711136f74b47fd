"""Routed tasks reach exactly the workers that should get them, on every broker.

Two workers (two apps on the same broker and result store, as two processes would be)
consume different queues; each task records which worker ran it. Topic and direct exchanges
are RabbitMQ's own there and resolved on the producer elsewhere; what only RabbitMQ can do
(copies to several queues, broadcast) is tested on it and refused on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aqueue import (
    App,
    Broadcast,
    BrokerError,
    ConfigurationError,
    Exchange,
    Queue,
    RoutingError,
    Task,
)

#: per broker URL, (task name, worker) of every run, in this process
RAN: dict[str, list[tuple[str, str]]] = {}
#: (runs to wait for, future) of waiting tests
_WAITERS: list[tuple[int, asyncio.Future[None]]] = []


def route_by_argument(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: Any, task: Any = None
) -> dict[str, str] | None:
    """A router function: ``d.pick`` goes where its argument says."""
    if name == "d.pick":
        return {"queue": f"q{args[0]}"}
    return None


ROUTING: dict[str, Any] = {
    "task_queues": [
        Queue("qa", Exchange("jobs", "topic"), routing_key="a.#"),
        Queue("qb", Exchange("jobs", "topic"), routing_key="b.*"),
        Queue("qd", Exchange("direct-x"), routing_key="d.key"),
        Queue("celery"),
    ],
    "task_routes": [
        route_by_argument,
        {
            "d.glob.*": "qa",
            re.compile(r"d\.re\d+"): {"queue": "qb"},
            "d.topic_b": {"exchange": "jobs", "routing_key": "b.one"},
            "d.topic_a": {"queue": "qb", "routing_key": "a.x.y"},  # the key decides
        },
    ],
}


def define(app: App, tag: str) -> dict[str, Task[..., str]]:
    ran = RAN.setdefault(app.broker_url, [])

    def make(name: str) -> Task[..., str]:
        async def record(self: Task[..., str], *args: Any) -> str:
            ran.append((self.name, tag))
            for count, done in _WAITERS:
                if len(ran) >= count and not done.done():
                    done.set_result(None)
            return tag

        return app.task(name=name, bind=True)(record)

    names = ["d.glob.one", "d.re42", "d.pick", "d.topic_b", "d.topic_a", "d.direct", "d.plain"]
    return {n: make(n) for n in names}


@contextlib.asynccontextmanager
async def two_workers(
    app: App, queues_a: list[str], queues_b: list[str], **settings: Any
) -> AsyncIterator[tuple[App, dict[str, Task[..., str]]]]:
    """Worker A (on ``app``) and worker B (on a second app, as another process would be)."""
    app.conf.update(settings)
    other = App("tests", broker=app.broker_url, backend=app.conf.result_backend, **settings)
    other.conf.lease_seconds = app.conf.lease_seconds
    RAN.pop(app.broker_url, None)
    tasks = define(app, "A")
    define(other, "B")
    async with (
        other,
        app.worker(queues=queues_a, hostname="A@%h", concurrency=4),
        other.worker(queues=queues_b, hostname="B@%h", concurrency=4),
    ):
        yield other, tasks
    await _delete_exchanges(app, settings)


async def _delete_exchanges(app: App, settings: dict[str, Any]) -> None:
    broker = app.broker
    delete = getattr(broker, "delete_exchanges", None)  # RabbitMQ only (tests' cleanup)
    if delete is not None:
        names = {q.exchange.name for q in app.router().queues.values() if q.exchange}
        await delete(sorted(names))


def ran(app: App) -> list[tuple[str, str]]:
    return sorted(RAN.get(app.broker_url, []))


async def test_glob_regex_function_topic_and_direct_routes_reach_exactly_their_worker(
    app: App,
) -> None:
    async with two_workers(app, ["qa", "qd"], ["qb", "celery"], **ROUTING) as (_, t):
        results = {
            "glob": await t["d.glob.one"].delay(),
            "regex": await t["d.re42"].delay(),
            "function-a": await t["d.pick"].delay("a"),
            "function-b": await t["d.pick"].delay("b"),
            "topic-b": await t["d.topic_b"].delay(),
            "topic-a": await t["d.topic_a"].delay(),
            "direct": await t["d.direct"].apply_async(exchange="direct-x", routing_key="d.key"),
            "call-topic": await t["d.plain"].apply_async(exchange="jobs", routing_key="a"),
            "default": await t["d.plain"].delay(),
        }
        got = {k: await h.wait(timeout=15) for k, h in results.items()}
    assert got == {
        "glob": "A",
        "regex": "B",
        "function-a": "A",
        "function-b": "B",
        "topic-b": "B",
        "topic-a": "A",
        "direct": "A",
        "call-topic": "A",
        "default": "B",
    }
    # each ran once, on that worker only
    assert ran(app) == sorted(
        [
            ("d.glob.one", "A"),
            ("d.re42", "B"),
            ("d.pick", "A"),
            ("d.pick", "B"),
            ("d.topic_b", "B"),
            ("d.topic_a", "A"),
            ("d.direct", "A"),
            ("d.plain", "A"),
            ("d.plain", "B"),
        ]
    )


async def test_delayed_and_bulk_messages_follow_their_routes(app: App) -> None:
    async with two_workers(app, ["qa"], ["qb"], **ROUTING) as (_, t):
        delayed = await t["d.topic_b"].apply_async(countdown=0.3)
        many = await t["d.glob.one"].delay_many([(), (), ()])
        picked = await t["d.pick"].delay_many([("a",), ("b",)])  # a router function per item
        assert await delayed.wait(timeout=15) == "B"
        assert [await h.wait(timeout=15) for h in many] == ["A", "A", "A"]
        assert [await h.wait(timeout=15) for h in picked] == ["A", "B"]


async def test_a_key_matching_several_queues(app: App, broker_url: str) -> None:
    """RabbitMQ copies the message to every matching queue, and every copy runs; brokers
    without exchanges refuse it rather than pick one."""
    routing = {
        "task_queues": [
            Queue("qa", Exchange("fan", "topic"), routing_key="k.#"),
            Queue("qb", Exchange("fan", "topic"), routing_key="*.x"),
        ]
    }
    async with two_workers(app, ["qa"], ["qb"], **routing) as (_, t):
        if not broker_url.startswith("amqp"):
            with pytest.raises(RoutingError, match="matches queues qa, qb: only RabbitMQ copies"):
                await t["d.plain"].apply_async(exchange="fan", routing_key="k.x")
            assert ran(app) == []
            return
        handle = await t["d.plain"].apply_async(exchange="fan", routing_key="k.x")
        await handle.wait(timeout=15)
        await runs(app, 2)
    assert ran(app) == [("d.plain", "A"), ("d.plain", "B")]
    assert await app.broker.size("qa") == await app.broker.size("qb") == 0


async def test_broadcast_runs_once_on_every_worker(app: App, broker_url: str) -> None:
    """Celery's broadcast routing: each consuming worker gets its own queue."""
    routing = {
        "task_queues": [Broadcast("broadcast_tasks"), Queue("celery")],
        "task_routes": {"d.plain": {"queue": "broadcast_tasks", "exchange": "broadcast_tasks"}},
    }
    if not broker_url.startswith("amqp"):
        with pytest.raises(ConfigurationError, match=r"broadcast queue\(s\) broadcast_tasks need"):
            async with two_workers(app, ["broadcast_tasks"], ["celery"], **routing):
                pass
        with pytest.raises(RoutingError, match=r"fanout \(broadcast\) exchange: only RabbitMQ"):
            await app.send_task("d.plain")
        return
    both = ["celery", "broadcast_tasks"]
    async with two_workers(app, both, both, **routing) as (other, t):
        handles = [await t["d.plain"].delay() for _ in range(3)]
        await runs(app, 6)
        assert [await h.wait(timeout=15) in ("A", "B") for h in handles] == [True] * 3
        # nothing is left for either worker: each ran each task once
        assert await app.broker.size("broadcast_tasks") == 0
        assert await other.broker.size("broadcast_tasks") == 0
    assert ran(app) == [("d.plain", "A")] * 3 + [("d.plain", "B")] * 3


async def test_broadcast_with_no_worker_listening_is_an_error(app: App, broker_url: str) -> None:
    if not broker_url.startswith("amqp"):
        pytest.skip("broadcast is RabbitMQ's (refusals: test_broadcast_runs_once_on_every_worker)")
    app.conf.update(task_queues=[Broadcast("nobody")])
    try:
        with pytest.raises(BrokerError, match=r"exchange 'nobody'.*no queue is bound to match"):
            await app.send_task("d.plain", queue="nobody")
    finally:
        await _delete_exchanges(app, {})


async def test_a_missing_queue_is_refused_when_configured(app: App) -> None:
    app.conf.update(task_queues=[Queue("celery")], task_create_missing_queues=False)
    with pytest.raises(RoutingError, match="queue 'elsewhere' is not in task_queues"):
        await app.send_task("d.plain", queue="elsewhere")
    assert await app.broker.size("elsewhere") == 0


async def runs(app: App, count: int, timeout: float = 15.0) -> None:
    """Wait until tasks ran ``count`` times in all (they record it in this process)."""
    if len(RAN.get(app.broker_url, [])) >= count:
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _WAITERS.append((count, done))
    try:
        async with asyncio.timeout(timeout):
            await done
    finally:
        _WAITERS.remove((count, done))


async def test_a_task_sees_how_it_was_routed(app: App, broker_url: str) -> None:
    """Celery's ``request.delivery_info``: on RabbitMQ the exchange it came through; the
    other brokers resolved it to the queue on the producer."""
    app.conf.update(task_queues=[Queue("qa", Exchange("jobs", "topic"), routing_key="a.#")])

    @app.task(name="d.info", bind=True)
    async def info(self: Task[..., dict[str, Any]]) -> dict[str, Any]:
        return self.request.delivery_info

    try:
        async with app.worker(queues=["qa"]):
            handle = await info.apply_async(exchange="jobs", routing_key="a.b", priority=3)
            got = await handle.wait(timeout=15)
    finally:
        await _delete_exchanges(app, {})
    exchange = "jobs" if broker_url.startswith("amqp") else ""
    assert got == {"exchange": exchange, "routing_key": "a.b", "priority": 3, "redelivered": False}
