"""streaq on Redis (coredis, anyio)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .base import PY, System, WorkerSpec


class StreaqSystem(System):
    name = "streaq"
    is_async = True
    settings = {
        "worker": "`streaq run tasks:worker` (one process), "
        "`Worker(concurrency=C, anyio_kwargs={'use_uvloop': True})`",
        "prefetch": "default (prefetch = concurrency, buffer of 2 x C)",
        "results": "task ttl=0 (no result stored) unless the scenario needs results "
        "(then 5 min, the default)",
        "logging": "tasks registered with silent=True (default logs every task at INFO)",
        "serializer": "pickle (default)",
        "bulk": "`await worker.enqueue_many([noop.enqueue() for _ in range(n)])` (one pipeline)",
        "round trip": "`await (await noop.enqueue()).result(timeout=10)`",
    }

    def version(self) -> str:
        from importlib.metadata import version

        return version("streaq")

    def worker(self, *, concurrency: int, results: bool) -> WorkerSpec:
        return WorkerSpec(
            [PY, "-m", "streaq", "run", "benchmarks.systems.streaq_tasks:worker"],
            {"BENCH_CONCURRENCY": str(concurrency)},
        )

    async def connect(self, *, results: bool) -> None:
        from . import streaq_tasks

        self._t: Any = streaq_tasks
        self._stack = contextlib.AsyncExitStack()
        await self._stack.enter_async_context(streaq_tasks.worker)

    async def close(self) -> None:
        await self._stack.aclose()

    def _task(self, kind: str) -> Any:
        return self._t.noop if kind == "noop" else self._t.sleep

    async def enqueue_one(self, n: int, kind: str) -> None:
        task = self._task(kind)
        for _ in range(n):
            await task.enqueue()

    async def enqueue_concurrent(self, n: int, kind: str) -> None:
        task = self._task(kind)

        async def one() -> Any:
            return await task.enqueue()

        await asyncio.gather(*(one() for _ in range(n)))

    async def enqueue_bulk(self, n: int, kind: str) -> None:
        task = self._task(kind)
        await self._t.worker.enqueue_many([task.enqueue() for _ in range(n)])

    async def round_trip(self) -> Any:
        handle = await self._t.noop.enqueue()
        result = await handle.result(timeout=10)
        return result.result
