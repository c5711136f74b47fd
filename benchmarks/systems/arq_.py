"""arq on Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from .base import PY, System, WorkerSpec


class ArqSystem(System):
    name = "arq"
    is_async = True
    unsupported = {"enqueue-bulk": "no bulk publish API (enqueue_job per job)"}
    settings = {
        "worker": "`arq tasks.WorkerSettings` run on uvloop (benchmarks/launch.py installs "
        "the policy; arq has no switch)",
        "max_jobs": "C",
        "poll_delay": "0.01 s (default 0.5 s: arq polls its sorted set and sleeps in between, "
        "which would cap a drain near 1 000 tasks/s and a round trip at ~0.5 s)",
        "results": "keep_result=0 unless the scenario needs results (then 3600, the default)",
        "serializer": "pickle (default)",
        "round trip": "`await (await pool.enqueue_job('noop')).result(timeout=10, "
        "poll_delay=0.001)` (default poll_delay 0.5 s)",
        "pool": "`create_pool(RedisSettings(...))` defaults",
        "version note": "arq 0.28 declares redis<6; installed with --no-deps next to "
        "redis 8 (taskiq-redis needs redis>=8)",
    }

    def version(self) -> str:
        from importlib.metadata import version

        return version("arq")

    def worker(self, *, concurrency: int, results: bool) -> WorkerSpec:
        return WorkerSpec(
            [PY, "-m", "benchmarks.launch", "arq", "benchmarks.systems.arq_tasks.WorkerSettings"],
            {"BENCH_CONCURRENCY": str(concurrency)},
        )

    async def connect(self, *, results: bool) -> None:
        from arq import create_pool

        from . import arq_tasks

        self._q = arq_tasks.QUEUE
        self._pool: Any = await create_pool(arq_tasks.REDIS, default_queue_name=self._q)

    async def close(self) -> None:
        await self._pool.aclose()

    async def enqueue_one(self, n: int, kind: str) -> None:
        pool = self._pool
        for _ in range(n):
            await pool.enqueue_job(kind)

    async def enqueue_concurrent(self, n: int, kind: str) -> None:
        pool = self._pool
        await asyncio.gather(*(pool.enqueue_job(kind) for _ in range(n)))

    async def round_trip(self) -> Any:
        job = await self._pool.enqueue_job("noop")
        return await job.result(timeout=10, poll_delay=0.001)
