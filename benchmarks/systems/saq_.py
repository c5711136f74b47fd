"""SAQ on Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from .base import PY, System, WorkerSpec


class SaqSystem(System):
    name = "saq"
    is_async = True
    unsupported = {"enqueue-bulk": "no bulk publish API (Queue.map waits for results)"}
    settings = {
        "worker": "`saq tasks.settings --quiet` run on uvloop (benchmarks/launch.py installs "
        "the policy; SAQ has no switch); concurrency=C",
        "results": "job ttl=-1 (nothing kept) unless the scenario needs results "
        "(then the default 600 s)",
        "serializer": "json (default)",
        "round trip": "`await queue.apply('noop', timeout=10, poll_interval=0.001)` (apply "
        "polls the job; the default 0.5 s interval would make every round trip >= 0.5 s)",
        "dequeue": "default: each of the C worker coroutines does its own BLMOVE",
        "pool": "`RedisQueue(Redis.from_url(url, max_connections=10_000))`: redis-py 8 caps "
        "pools at 100 by default (SAQ's extra pins redis<8, where they were unbounded); "
        "with 100 the worker's upkeep and result pub/sub fail with MaxConnectionsError",
    }

    def version(self) -> str:
        from importlib.metadata import version

        return version("saq")

    def worker(self, *, concurrency: int, results: bool) -> WorkerSpec:
        return WorkerSpec(
            [
                PY,
                "-m",
                "benchmarks.launch",
                "saq",
                "benchmarks.systems.saq_tasks.settings",
                "--quiet",
            ],
            {"BENCH_CONCURRENCY": str(concurrency)},
        )

    async def connect(self, *, results: bool) -> None:
        from . import saq_tasks

        self._queue: Any = saq_tasks.queue
        self._ttl = 600 if results else -1
        await self._queue.connect()

    async def close(self) -> None:
        await self._queue.disconnect()

    async def enqueue_one(self, n: int, kind: str) -> None:
        q, ttl = self._queue, self._ttl
        for _ in range(n):
            await q.enqueue(kind, ttl=ttl)

    async def enqueue_concurrent(self, n: int, kind: str) -> None:
        q, ttl = self._queue, self._ttl
        await asyncio.gather(*(q.enqueue(kind, ttl=ttl) for _ in range(n)))

    async def round_trip(self) -> Any:
        return await self._queue.apply("noop", timeout=10, poll_interval=0.001)
