"""Prometheus metrics, parsed with prometheus-client's own parser: a worker's (the middleware
and signal receivers of ``WorkerMetrics``) and the fleet's (``metrics_app``, scraped over
ASGI), each checked against what ran."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aqueue import App, Task, TaskFailed
from aqueue.contrib.prometheus import FleetMetrics, MetricsApp, WorkerMetrics, metrics_app
from aqueue.core.protocols import PeeksHead

from ..conftest import app_with_shared_results

#: brokers the fleet view is checked on (the worker's counts do not depend on the broker)
KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq+redis", marks=[pytest.mark.rabbitmq, pytest.mark.redis]),
]


@pytest.fixture(params=KINDS)
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    # on RabbitMQ the results and the worker registry live in Redis
    async with app_with_shared_results(request, request.param, tmp_path, "obs") as the_app:
        yield the_app


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels (the parser is the reference)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def tasks_of(app: App) -> dict[str, Task[Any, Any]]:
    """An ok task, a failing one and one that retries once, on ``app``."""
    tries: dict[str, int] = {}

    @app.task(name="obs.ok")
    async def ok(x: int) -> int:
        return x * 2

    @app.task(name="obs.boom")
    async def boom() -> None:
        raise ValueError("no")

    @app.task(name="obs.flaky", bind=True)
    async def flaky(self: Task[[str], str], key: str) -> str:
        tries[key] = tries.get(key, 0) + 1
        if tries[key] == 1:
            raise self.retry(countdown=0)
        return "done"

    return {"ok": ok, "boom": boom, "flaky": flaky}


async def run_the_mix(app: App, t: dict[str, Task[Any, Any]]) -> None:
    """3 successes, 1 failure, 1 retry then success, 1 dead letter (an unknown task)."""
    handles = [await t["ok"].delay(i) for i in range(3)]
    bad = await t["boom"].delay()
    flaky = await t["flaky"].delay("k")
    unknown = await app.send_task("obs.nobody", args=(1,))
    for h in handles:
        await h.wait(timeout=15)
    assert await flaky.wait(timeout=15) == "done"
    for h in (bad, unknown):
        with pytest.raises(TaskFailed):
            await h.wait(timeout=15)


# -- a worker's metrics -----------------------------------------------------------------------


async def test_worker_metrics_count_what_the_worker_ran(app: App) -> None:
    t = tasks_of(app)
    metrics = WorkerMetrics(app).install()
    seen_in_flight: list[float | None] = []

    @app.task(name="obs.look")
    async def look() -> None:  # scrapes from inside a running task: it is in flight
        seen_in_flight.append(
            value(
                parse(generate_latest(metrics.registry).decode()), "aqueue_worker_tasks_in_flight"
            )
        )

    try:
        async with app.worker(concurrency=7) as w:
            running = parse(generate_latest(metrics.registry).decode())
            await run_the_mix(app, t)
            await (await look.delay()).wait(timeout=15)
            # settled (ack, signals) after the result is stored: wait for the last count
            await until(
                lambda: (
                    value(scrape(metrics), "aqueue_tasks_total", task="obs.look", state="SUCCESS")
                    == 1
                )
            )
        stopped = scrape(metrics)
    finally:
        metrics.uninstall()
    assert w.concurrency == 7
    assert value(running, "aqueue_worker_up") == 1
    assert value(running, "aqueue_worker_concurrency") == 7
    assert value(stopped, "aqueue_worker_up") == 0
    assert seen_in_flight == [1]
    assert value(stopped, "aqueue_worker_tasks_in_flight") == 0
    s = stopped
    assert value(s, "aqueue_tasks_total", task="obs.ok", state="SUCCESS") == 3
    assert value(s, "aqueue_tasks_total", task="obs.boom", state="FAILURE") == 1
    assert value(s, "aqueue_tasks_total", task="obs.flaky", state="RETRY") == 1
    assert value(s, "aqueue_tasks_total", task="obs.flaky", state="SUCCESS") == 1
    assert value(s, "aqueue_task_retries_total", task="obs.flaky") == 1
    assert value(s, "aqueue_tasks_total", task="obs.nobody", state="REJECTED") == 1
    assert value(s, "aqueue_dead_letters_total", queue="celery", reason="unknown_task") == 1
    # the runtime histogram: one observation per attempt of each body
    assert value(s, "aqueue_task_runtime_seconds_count", task="obs.ok") == 3
    assert value(s, "aqueue_task_runtime_seconds_count", task="obs.flaky") == 2
    assert value(s, "aqueue_task_runtime_seconds_bucket", task="obs.ok", le="+Inf") == 3
    total = value(s, "aqueue_task_runtime_seconds_sum", task="obs.ok")
    assert total is not None and 0 <= total < 5
    # uninstalled: nothing more is counted, and the app has no middleware left
    assert app.middleware == []
    async with app.worker():
        await (await t["ok"].delay(9)).wait(timeout=15)
    assert value(scrape(metrics), "aqueue_tasks_total", task="obs.ok", state="SUCCESS") == 3


def scrape(metrics: WorkerMetrics | FleetMetrics) -> Samples:
    return parse(generate_latest(metrics.registry).decode())


async def until(done: Callable[[], bool], timeout: float = 15.0) -> None:
    """Await a condition that another task makes true (checked each loop turn, bounded)."""
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)


async def test_worker_metrics_ignore_another_apps_tasks(app: App) -> None:
    other = App("other", broker=f"memory://o{uuid.uuid4().hex[:12]}")
    metrics = WorkerMetrics(other).install()
    try:

        @app.task(name="obs.mine")
        async def mine() -> int:
            return 1

        async with app.worker():
            await (await mine.delay()).wait(timeout=15)
    finally:
        metrics.uninstall()
        await other.close()
    assert value(scrape(metrics), "aqueue_tasks_total", task="obs.mine", state="SUCCESS") is None


# -- the fleet's /metrics ---------------------------------------------------------------------


async def get_metrics(asgi: MetricsApp) -> tuple[httpx.Response, Samples]:
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
        response = await client.get("/metrics")
    return response, parse(response.text)


#: what run_the_mix leaves in the fleet's event-fed counters: (metric, task, state) -> count
COUNTED: dict[tuple[str, str, str | None], float] = {
    ("aqueue_fleet_tasks_total", "obs.ok", "SUCCESS"): 3,
    ("aqueue_fleet_tasks_total", "obs.nobody", "REJECTED"): 1,
    ("aqueue_fleet_tasks_total", "obs.boom", "FAILURE"): 1,
    ("aqueue_fleet_tasks_total", "obs.flaky", "RETRY"): 1,
    ("aqueue_fleet_tasks_total", "obs.flaky", "SUCCESS"): 1,
    ("aqueue_fleet_task_retries_total", "obs.flaky", None): 1,
    ("aqueue_fleet_task_runtime_seconds_count", "obs.ok", None): 3,
}


def counts_of(samples: Samples) -> dict[tuple[str, str, str | None], float | None]:
    return {
        (name, task, state): value(
            samples, name, task=task, **({} if state is None else {"state": state})
        )
        for name, task, state in COUNTED
    }


async def test_metrics_app_scrapes_queues_workers_dead_letters_and_task_counts(app: App) -> None:
    t = tasks_of(app)

    @app.task(name="obs.later", queue="later")
    async def later() -> None: ...

    # a dead-lettered unknown task was never received: its name comes from task-sent
    app.conf.update(task_send_sent_event=True)
    asgi = metrics_app(app)
    try:
        await asgi.start()  # counts what finishes from now on
        first_sent = time.time()
        for _ in range(4):
            await later.delay()  # no worker consumes "later": they wait there
        async with app.worker(task_events=True, concurrency=5, hostname="obsw@%h") as w:
            await run_the_mix(app, t)
            response, live = await get_metrics(asgi)
            # the counts come from the event stream, in its own time (batched per worker,
            # the last batch may come after the results): await every one asserted below
            async with asyncio.timeout(15):
                while counts_of(live) != COUNTED:
                    _, live = await get_metrics(asgi)
                    await asyncio.sleep(0.05)
    finally:
        await asgi.close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert value(live, "aqueue_queue_messages", queue="later") == 4
    assert value(live, "aqueue_queue_messages", queue="celery") == 0
    # how long the message next in line has waited (on brokers that can read it)
    age = value(live, "aqueue_queue_oldest_message_age_seconds", queue="later")
    if isinstance(app.broker, PeeksHead):
        assert age is not None and 0 < age <= time.time() - first_sent + 0.5
        assert value(live, "aqueue_queue_oldest_message_age_seconds", queue="celery") == 0
    else:
        assert age is None  # RabbitMQ cannot show a message without taking it
    assert value(live, "aqueue_queue_dead_letters", queue="celery") == 1
    assert value(live, "aqueue_queue_dead_letters", queue="later") == 0
    assert value(live, "aqueue_fleet_worker_up", worker=w.hostname) == 1
    assert value(live, "aqueue_fleet_worker_concurrency", worker=w.hostname) == 5
    assert value(live, "aqueue_fleet_worker_held_messages", worker=w.hostname) is not None
    assert counts_of(live) == COUNTED
    # a worker that stopped gracefully leaves the registry
    _, after = await get_metrics(asgi)
    assert value(after, "aqueue_fleet_worker_up", worker=w.hostname) is None


async def test_metrics_app_answers_only_get(app: App) -> None:
    asgi = metrics_app(app, events=False)
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
        assert (await client.post("/metrics")).status_code == 405
        head = await client.head("/metrics")
    assert head.status_code == 200 and head.content == b""
