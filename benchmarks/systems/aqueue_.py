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
        if variant == "redis-events":
            self.name = "aqueue-events"
            self.scenarios = frozenset({"drain", "rtt"})
        self.baseline = "aqueue-amqp" if variant.startswith("amqp") else "aqueue"
        results = "stored for every task in every scenario, the drain included"
        if variant in ("redis", "redis-events"):
            # redis-events: the worker sends monitoring events (-E), nobody listening
            self.broker, self.backend = REDIS_URL, ""
        elif variant == "sqlite":
            self.broker, self.backend = f"sqlite:///{_SQLITE_DIR / 'bench.db'}", ""
            self.scenarios = frozenset({"drain", "rtt"})
        elif variant == "amqp":
            # round-trip results go to Redis DB 15 (as taskiq-amqp's); none in the drain
            self.broker, self.backend = AMQP_URL, REDIS_URL
            self.scenarios = frozenset({"drain", "rtt"})
            results = (
                "`ignore_result=True` unless the scenario needs results (stored in Redis DB 15)"
            )
        elif variant == "amqp-rpc":
            # the default setup: no backend= means rpc://, results to the sender's reply queue
            self.broker, self.backend = AMQP_URL, ""
            self.scenarios = frozenset({"drain", "rtt"})
            results = (
                "stored for every task over the default `rpc://` backend (no `backend=`). "
                "In the drain the producer that queued the tasks has exited before the worker "
                "starts (fire-and-forget), so every result is addressed to a reply queue that "
                "no longer exists"
            )
        elif variant == "amqp-redis":
            self.broker, self.backend = AMQP_URL, REDIS_URL
            self.scenarios = frozenset({"drain"})
            results = (
                "stored for every task in Redis DB 15 (`backend=redis://...`), the drain included"
            )
        else:
            raise ValueError(variant)
        self.unsupported = {}
        self.settings = {
            "broker": self.broker.replace("guest:guest@", ""),
            "worker": "`aqueue worker ... -c C -l warning` (one process; uvloop via the CLI)",
            "prefetch": "default (= concurrency)",
            "results": results,
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
        env["BENCH_AQUEUE_IGNORE_RESULT"] = "1" if self.variant == "amqp" and not results else "0"
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
                *(["-E"] if self.variant == "redis-events" else []),
            ]
        )

    def cleanup(self) -> None:
        if self.variant == "sqlite":
            shutil.rmtree(_SQLITE_DIR, ignore_errors=True)
        elif self.variant.startswith("amqp"):
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
