"""A Redis Sentinel failover during a drain loses no acknowledged publish, and the worker
resumes on the new master (issue 20).

Each test starts its own private setup (tests/faults/redis_sentinel.py): a master, its
replicas and three sentinels, stopped by PID. A producer publishes tasks one after another
(a publish that raised was not acknowledged: it sends the same task id again, which the
broker's dedupe makes safe) while a worker drains them; half-way, the master is replaced:

* planned: ``SENTINEL FAILOVER``, one replica;
* crash: ``kill -9`` of the master, two replicas (a crash leaves the new master one replica
  to confirm publishes with; with a single replica it would have none until the old master
  came back, and publishes would fail, unacknowledged, until then).

At the end every acknowledged task has its result (tasks may run more than once: a claim,
an ack or a result written to the old master after the switch is lost with it, and the
lease brings the task back). Publishes wait for one replica (``WAIT``, the default behind
Sentinel), so an acknowledged one is on the replica that is promoted. Printed (``-s``):
how long after the failover began the producer's publishes and the worker's results
resumed; docs/reliability.md records them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from aqueue import App, BrokerError

from .redis_sentinel import SentinelSetup, running_sentinels

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.redis]

BEFORE = 200  # tasks published before the failover begins
DURING = 100  # tasks published once it is over (more go while it happens)
WAIT_TIMEOUT = 90
LEASE = 3.0  # seconds: a task whose ack went to the old master runs again this soon


@dataclass
class Figures:
    acknowledged: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # publishes that raised (not acknowledged), sent again
    publish_resumed: float = 0.0  # seconds from the failover's start
    results_resumed: float = 0.0
    runs: dict[int, int] = field(default_factory=dict)
    total: int = 0  # tasks published


async def _drain_through_failover(
    setup: SentinelSetup, switch: Callable[[], tuple[int, int]]
) -> Figures:
    prefix = f"f{uuid.uuid4().hex[:8]}"
    url = setup.url(prefix=prefix)
    app = App(
        "failover",
        broker=url,
        backend=url,
        lease_seconds=LEASE,
        worker_shutdown_timeout=1.0,
    )
    figures = Figures()

    @app.task(name="failover.echo")
    async def echo(i: int) -> int:
        figures.runs[i] = figures.runs.get(i, 0) + 1
        await asyncio.sleep(0.02)  # the drain takes a while: the failover lands inside it
        return i

    async def publish(i: int) -> float:
        task_id = f"{prefix}-{i}"
        give_up = time.monotonic() + WAIT_TIMEOUT
        while True:
            try:
                await app.send_task("failover.echo", args=(i,), task_id=task_id)
            except BrokerError:  # IndeterminatePublish, PublishTimeout: not acknowledged
                figures.refused += 1
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.05)  # a short pause, not a tight loop
                continue
            figures.acknowledged[task_id] = i
            return time.monotonic()

    async with app.worker(concurrency=4):
        for i in range(BEFORE):
            await publish(i)
        # the drain is under way: the first task's result is in
        first = app.AsyncResult(f"{prefix}-0")
        assert await first.wait(timeout=30) == 0
        started = time.monotonic()
        started_wall = time.time()
        switching = asyncio.ensure_future(asyncio.to_thread(switch))
        i = BEFORE
        acked_at: list[float] = []
        while not switching.done():  # publishing goes on while the master is replaced
            acked_at.append(await publish(i))
            i += 1
        await switching  # the switch happened (raises if it did not within its timeout)
        switched_wall = time.time()
        after_switch = i
        for i in range(after_switch, after_switch + DURING):
            acked_at.append(await publish(i))
        figures.total = after_switch + DURING
        figures.publish_resumed = _first_after_gap(acked_at, started)
        # every acknowledged task's result, read from the new master
        done_after: list[float] = []
        for task_id, n in figures.acknowledged.items():
            handle = app.AsyncResult(task_id)
            assert await handle.wait(timeout=WAIT_TIMEOUT) == n, task_id
            done = handle.date_done.timestamp() if handle.date_done is not None else 0.0
            if done >= switched_wall:
                done_after.append(done - started_wall)
        # the first result the worker stored once every sentinel named the new master: the
        # worker running on it
        figures.results_resumed = min(done_after)
    await app.close()
    return figures


def _first_after_gap(acked_at: list[float], started: float) -> float:
    """Seconds from ``started`` to the publish that ended the longest pause between two
    acknowledged publishes (the failover's): when publishing resumed."""
    times = [started, *acked_at]
    gaps = [(b - a, b) for a, b in itertools.pairwise(times)]
    _, resumed = max(gaps)
    return resumed - started


def _report(name: str, figures: Figures) -> None:
    reran = sum(1 for n in figures.runs.values() if n > 1)
    print(
        f"\n{name}: {len(figures.acknowledged)} acknowledged, 0 lost; "
        f"{figures.refused} publish(es) raised and were sent again; "
        f"publishing resumed {figures.publish_resumed:.1f}s and results "
        f"{figures.results_resumed:.1f}s after the failover began; "
        f"{reran} task(s) ran more than once"
    )


@pytest.mark.parametrize(
    ("replicas", "switch", "name"),
    [
        pytest.param(1, SentinelSetup.failover, "SENTINEL FAILOVER", id="planned"),
        pytest.param(2, SentinelSetup.crash_master, "kill -9 of the master", id="crash"),
    ],
)
async def test_failover_during_a_drain(
    tmp_path: Path,
    replicas: int,
    switch: Callable[[SentinelSetup], tuple[int, int]],
    name: str,
) -> None:
    with running_sentinels(tmp_path / "sentinel", replicas=replicas) as setup:
        figures = await _drain_through_failover(setup, partial(switch, setup))
    assert len(figures.acknowledged) == figures.total
    assert set(figures.runs) == set(range(figures.total))
    _report(name, figures)
