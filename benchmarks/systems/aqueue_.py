"""aqueue on Redis, SQLite (producer and worker in separate processes) or RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..config import AMQP_URL, REDIS_URL
from .base import PY, System, WorkerSpec

_SQLITE_DIR = Path(tempfile.gettempdir()) / f"aqueue-bench-{os.getuid()}"


class AqueueSystem(System):
    is_async = True
    native_bulk = True  # enqueue_bulk is Task.delay_many

    def __init__(self, variant: str = "redis") -> None:
        self.variant = variant
        self.name = "aqueue" if variant == "redis" else f"aqueue-{variant}"
        self.baseline = "aqueue-amqp" if variant == "amqp" else "aqueue"
        if variant == "redis":
            self.broker, self.backend = REDIS_URL, ""
        elif variant == "sqlite":
            self.broker, self.backend = f"sqlite:///{_SQLITE_DIR / 'bench.db'}", ""
            self.scenarios = frozenset({"drain", "rtt"})
        else:
            # no result store on RabbitMQ: round-trip results go to Redis DB 15
            self.broker, self.backend = AMQP_URL, REDIS_URL
            self.scenarios = frozenset({"drain", "rtt"})
        self.unsupported = {}
        self.settings = {
            "broker": self.broker.replace("guest:guest@", ""),
            "worker": "`aqueue worker ... -c C -l warning` (one process; uvloop via the CLI)",
            "prefetch": "default (= concurrency)",
            "results": (
                "`ignore_result=True` unless the scenario needs results (stored in Redis DB 15)"
                if variant == "amqp"
                else "stored for every task in every scenario, the drain included"
            ),
            "serializer": "msgpack (default)",
            "acks": "acks_late=True (default, at-least-once with 30 s renewed leases)",
            "bulk": "`await noop.delay_many([() for _ in range(n)])` (every message built, "
            "checked and encoded before any I/O, then published in chunks of 5,000)",
            "round trip": "`await (await noop.delay()).wait(timeout=10)`",
        }
        self._tasks: Any = None

    def version(self) -> str:
        from importlib.metadata import version

        return version("aqueue")

    def env(self, *, results: bool) -> dict[str, str]:
        env = super().env(results=results)
        env["BENCH_AQUEUE_BROKER"] = self.broker
        env["BENCH_AQUEUE_BACKEND"] = self.backend
        if self.variant == "sqlite":
            _SQLITE_DIR.mkdir(parents=True, exist_ok=True)
        return env

    def worker(self, *, concurrency: int, results: bool) -> WorkerSpec:
        return WorkerSpec(
            [
                PY,
                "-m",
                "aqueue.cli",
                "worker",
                "benchmarks.systems.aqueue_tasks:app",
                "-c",
                str(concurrency),
                "-l",
                "warning",
            ]
        )

    def cleanup(self) -> None:
        if self.variant == "sqlite":
            shutil.rmtree(_SQLITE_DIR, ignore_errors=True)
        elif self.variant == "amqp":
            from ._amqp import delete_queues

            # aqueue's RabbitMQ broker prefixes its queues with "aqueue."
            delete_queues(["aqueue.bench-aqueue", "aqueue.bench-aqueue.dlq", "bench-aqueue"])

    # -- producer ----------------------------------------------------------------------

    async def connect(self, *, results: bool) -> None:
        from . import aqueue_tasks

        self._tasks = aqueue_tasks
        await aqueue_tasks.app.connect()

    async def close(self) -> None:
        await self._tasks.app.close()

    def _task(self, kind: str) -> Any:
        return self._tasks.noop if kind == "noop" else self._tasks.sleep

    async def enqueue_one(self, n: int, kind: str) -> None:
        task = self._task(kind)
        for _ in range(n):
            await task.delay()

    async def enqueue_concurrent(self, n: int, kind: str) -> None:
        task = self._task(kind)
        await asyncio.gather(*(task.delay() for _ in range(n)))

    async def enqueue_bulk(self, n: int, kind: str) -> None:
        await self._task(kind).delay_many([() for _ in range(n)])

    async def round_trip(self) -> Any:
        return await (await self._tasks.noop.delay()).wait(timeout=10)
