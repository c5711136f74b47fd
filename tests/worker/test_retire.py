"""A worker's own limits (embedded, in-process): retiring after ``max_tasks_per_child``
messages or past ``max_memory_per_child``, ``exclude_queues``, the prefetch multiplier.

What `aqueue worker` does with a retired worker (it replaces its process) is tested with
real processes in test_cli_worker.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from aqueue import App, ConfigurationError, Worker
from aqueue.backends.memory import MemoryBackend
from aqueue.brokers.memory import MemoryBroker


def make_app() -> App:
    name = f"memory://retire-{uuid.uuid4().hex[:8]}"
    return App("retire", broker=MemoryBroker(name), backend=MemoryBackend(name), lease_seconds=60)


async def test_max_tasks_per_child_runs_exactly_that_many_then_retires() -> None:
    app = make_app()
    started: list[int] = []

    @app.task(name="r.work")
    async def work(i: int) -> int:
        started.append(i)
        await asyncio.sleep(0.01)
        return i

    async with app:
        handles = [await work.delay(i) for i in range(7)]
        worker = app.worker(concurrency=2, prefetch=10, max_tasks_per_child=3)
        async with asyncio.timeout(10):
            await worker.run()  # returns once retired: it stopped itself
        assert worker.retired == "max_tasks_per_child (3) reached"
        assert worker.claimed == 3 and worker.executor.succeeded == 3 and len(started) == 3
        assert [await h.wait(timeout=1) for h in handles[:3]] == [0, 1, 2]
        # the rest was never claimed: waiting, uncounted, for the next worker
        rest = await app.broker.claim(["celery"], limit=10, lease_seconds=5, owner="t", timeout=1)
        assert sorted(d.id for d in rest) == sorted(h.id for h in handles[3:])
        assert {d.delivery_count for d in rest} == {1}


async def test_max_memory_per_child_hands_back_what_waits_and_finishes_what_runs() -> None:
    app = make_app()
    ran: list[str] = []

    worker: Worker | None = None

    @app.task(name="r.long")
    async def long() -> str:
        # runs until the memory check (every second) has decided to retire the worker
        while worker is None or worker.retired is None:
            await asyncio.sleep(0.01)
        ran.append("long")
        return "done"

    @app.task(name="r.short")
    async def short() -> None:
        ran.append("short")

    async with app:
        first = await long.delay()
        waiting = [await short.delay() for _ in range(3)]
        # 1 KiB: any process is past it; one slot, so the short ones wait behind the long one
        worker = app.worker(concurrency=1, prefetch=4, max_memory_per_child=1)
        async with asyncio.timeout(20):
            await worker.run()
        assert worker.retired is not None and "max_memory_per_child 1 KiB" in worker.retired
        assert await first.wait(timeout=1) == "done"  # what ran, finished
        assert ran == ["long"]
        back = await app.broker.claim(["celery"], limit=10, lease_seconds=5, owner="t", timeout=1)
        assert sorted(d.id for d in back) == sorted(h.id for h in waiting)
        assert {d.delivery_count for d in back} == {1}  # handed back before starting


async def test_a_stop_while_retiring_applies_the_shutdown_timeout() -> None:
    app = make_app()
    release = asyncio.Event()

    @app.task(name="r.stuck")
    async def stuck() -> None:
        await release.wait()

    async with app:
        handle = await stuck.delay()
        worker = app.worker(concurrency=1, max_tasks_per_child=1, shutdown_timeout=0.2)
        await worker.start()
        async with asyncio.timeout(10):
            while worker.retired is None:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            worker.request_stop()  # SIGTERM, while the retirement waits for the task
            await worker.wait_stopped()
        assert time.monotonic() - t0 < 5
        # it was handed back: claimable at once
        [d] = await app.broker.claim(["celery"], limit=1, lease_seconds=5, owner="t", timeout=1)
        assert d.id == handle.id
        release.set()


def test_exclude_queues() -> None:
    app = make_app()
    assert app.worker(queues=["a", "b", "c"], exclude_queues=["b"]).queues == ["a", "c"]
    assert app.worker(exclude_queues=["other"]).queues == [app.conf.task_default_queue]
    with pytest.raises(ValueError, match="no queue left to consume: a excluded"):
        app.worker(queues=["a"], exclude_queues=["a"])


def test_prefetch_multiplier_is_per_concurrency_slot() -> None:
    app = make_app()
    assert app.worker(concurrency=3).prefetch == 3  # aqueue's default multiplier: 1
    app.conf.update(worker_prefetch_multiplier=4)
    assert app.worker(concurrency=3).prefetch == 12
    assert app.worker(concurrency=3, prefetch=5).prefetch == 5  # a count wins
    app.conf.update(worker_prefetch=7)
    assert app.worker(concurrency=3).prefetch == 7
    with pytest.raises(ConfigurationError, match="no unlimited prefetch"):
        app.conf.update(worker_prefetch_multiplier=0)


def test_limits_must_be_positive() -> None:
    app = make_app()
    with pytest.raises(ValueError, match="max_tasks_per_child must be at least 1"):
        app.worker(max_tasks_per_child=0)
    with pytest.raises(ValueError, match="max_memory_per_child must be at least 1"):
        app.worker(max_memory_per_child=-5)


async def test_a_stop_asked_for_while_retiring_is_for_good() -> None:
    # a SIGTERM (or `control shutdown`, or the supervisor's death) that comes while the
    # worker runs out its last tasks must stop the process, not be swallowed by the next
    # life `aqueue worker` would start (it then ran on until killed: a CI flake)
    from aqueue.runner import EXIT_OK, replaced

    app = make_app()
    release = asyncio.Event()

    @app.task(name="r.held")
    async def held(i: int) -> int:
        if i == 1:
            await release.wait()
        return i

    async with app:
        for i in range(2):
            await held.delay(i)
        worker = app.worker(concurrency=2, prefetch=2, max_tasks_per_child=2)
        running = asyncio.create_task(worker.run())
        async with asyncio.timeout(10):
            while worker.retired is None:  # both claimed: retiring, task 1 still held
                await asyncio.sleep(0.01)
            worker.request_stop()  # what the SIGTERM handler calls
            release.set()
            await running
        assert worker.retired is not None and worker.stop_requested
        assert not replaced(EXIT_OK, worker)
    plain = make_app()
    async with plain:
        retiring = plain.worker(max_tasks_per_child=1)
        retiring.retired = "max_tasks_per_child (1) reached"
        assert replaced(EXIT_OK, retiring)  # a retirement alone is replaced


async def test_a_retirement_that_hands_back_starts_nothing_more() -> None:
    # the slot the last running task frees must not start a waiting task that the
    # retirement is about to hand back (it did, now and then: a flaky memory-limit test)
    app = make_app()
    ran: list[str] = []
    worker: Worker | None = None

    @app.task(name="r.last")
    async def last() -> None:
        assert worker is not None
        worker._retire("limit reached", hand_back=True)  # what the memory watcher calls
        ran.append("last")

    @app.task(name="r.next")
    async def next_one() -> None:
        ran.append("next")

    async with app:
        await last.delay()
        waiting = [await next_one.delay() for _ in range(3)]
        worker = app.worker(concurrency=1, prefetch=4)
        async with asyncio.timeout(20):
            await worker.run()
        assert ran == ["last"]
        back = await app.broker.claim(["celery"], limit=10, lease_seconds=5, owner="t", timeout=1)
        assert sorted(d.id for d in back) == sorted(h.id for h in waiting)
