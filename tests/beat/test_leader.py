"""Leader election on the real stores, in real time: one leader, a frozen leader fenced
out, a leader killed between publishing and recording. Each slot still runs once."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from datetime import datetime

import pytest

from aqueue import App, Task
from aqueue.beat import Beat, store_for

from .conftest import published
from .faults import FaultyStore, Killed

pytestmark = pytest.mark.slow

LEASE = 0.9


async def until(condition: Callable[[], bool], what: str, limit: float = 15.0) -> float:
    """Seconds until ``condition()`` holds (checked every 20 ms); fails after ``limit``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, f"{what}: not within {limit}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def contiguous(slots: list[str]) -> bool:
    moments = sorted(datetime.fromisoformat(s).timestamp() for s in slots)
    return all(b - a == 1 for a, b in itertools.pairwise(moments))


def make_app(url: str) -> App:
    app = App("leader", broker=url)
    app.conf.beat_schedule = {"tick": {"task": "leader.tick", "schedule": 1}}
    return app


async def test_one_leads_and_a_frozen_leader_is_fenced_out(store_url: str) -> None:
    app = make_app(store_url)
    async with app:
        faulty = FaultyStore(store_for(app))
        first = Beat(app, store=faulty, lease_seconds=LEASE, name="first")
        second = Beat(app, lease_seconds=LEASE, name="second")
        async with first:
            await until(lambda: first.is_leader, "first leads")
            async with second:
                await until(lambda: first.published >= 2, "first publishes")
                assert not second.is_leader and second.published == 0
                faulty.freeze()  # the leader stops dead, holding whatever it was doing
                taken = await until(lambda: second.is_leader, "second takes over")
                await until(lambda: second.published >= 2, "second publishes")
                faulty.thaw()  # the old leader wakes up past its lease
                await until(lambda: not first.is_leader, "first steps down")
                published_by_first = first.published
                await until(lambda: second.published >= 4, "second goes on")
                assert first.published == published_by_first
        print(f"\ntakeover after a freeze: {taken:.2f} s (lease {LEASE} s)")
        slots = [m.headers["beat-slot"] for m in await published(app)]
    assert len(slots) == len(set(slots)) and contiguous(slots)


async def test_a_leader_killed_between_publish_and_record(store_url: str) -> None:
    """Reliability row 25: two schedulers, one killed at fire time. Its successor publishes
    the slot again under the same id; the slot's task runs once."""
    app = make_app(store_url)
    runs: dict[str, int] = {}

    @app.task(name="leader.tick", bind=True)
    async def tick(self: Task[[], None]) -> None:
        slot = self.request.headers["beat-slot"]
        runs[slot] = runs.get(slot, 0) + 1

    async with app, app.worker(concurrency=10):
        faulty = FaultyStore(store_for(app))
        doomed = Beat(app, store=faulty, lease_seconds=LEASE, name="doomed")
        heir = Beat(app, lease_seconds=LEASE, name="heir")
        doomed_run = asyncio.create_task(doomed.run())
        await until(lambda: doomed.published >= 2, "the first leader publishes")
        async with heir:
            faulty.crash_on_record = True
            with pytest.raises(Killed):
                await doomed_run
            killed_at = time.monotonic()
            await until(lambda: heir.is_leader, "the heir takes over")
            taken = time.monotonic() - killed_at
            await until(lambda: heir.published >= 4, "the heir publishes")
        await until(lambda: len(runs) >= doomed.published + heir.published - 1, "all ran", 20)
        print(f"\ntakeover after a kill: {taken:.2f} s (lease {LEASE} s)")
    assert set(runs.values()) == {1}, runs
    assert contiguous(list(runs))
