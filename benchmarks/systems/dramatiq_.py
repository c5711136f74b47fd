"""dramatiq on Redis: threads, sync producer API."""

from __future__ import annotations

from typing import Any

from .base import PY, System, WorkerSpec


class DramatiqSystem(System):
    name = "dramatiq"
    is_async = False
    unsupported = {
        "enqueue-concurrent": "no asyncio API: send() blocks the calling thread",
    }
    settings = {
        "broker": "`RedisBroker(url, namespace='bench-dramatiq')`, default middleware "
        "+ AsyncIO (for the async sleep actor) + Results(RedisBackend) for round trip",
        "worker": "`dramatiq tasks -p 1 -t C` (a supervisor process + one worker process "
        "with C threads)",
        "prefetch": "default (2 x threads per consumer)",
        "results": "store_results=True only when the scenario needs results",
        "serializer": "json (default)",
        "I/O task": "`async def` actor awaiting asyncio.sleep(0.01) via the AsyncIO "
        "middleware (each of the C threads waits on the shared event loop)",
        "bulk": "`group(noop.message() for _ in range(n)).run()`",
        "round trip": "`noop.send().get_result(block=True, timeout=10_000)`",
    }

    def version(self) -> str:
        from importlib.metadata import version

        return version("dramatiq")

    def worker(self, *, concurrency: int, results: bool) -> WorkerSpec:
        return WorkerSpec(
            [
                PY,
                "-m",
                "dramatiq",
                "benchmarks.systems.dramatiq_tasks",
                "-p",
                "1",
                "-t",
                str(concurrency),
            ]
        )

    def connect(self, *, results: bool) -> None:
        from . import dramatiq_tasks

        self._t: Any = dramatiq_tasks

    def _actor(self, kind: str) -> Any:
        return self._t.noop if kind == "noop" else self._t.sleep

    def enqueue_one(self, n: int, kind: str) -> None:
        actor = self._actor(kind)
        for _ in range(n):
            actor.send()

    def enqueue_bulk(self, n: int, kind: str) -> None:
        from dramatiq import group

        actor = self._actor(kind)
        group(actor.message() for _ in range(n)).run()

    def round_trip(self) -> Any:
        return self._t.noop.send().get_result(block=True, timeout=10_000)
