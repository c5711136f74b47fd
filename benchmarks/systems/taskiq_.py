"""taskiq with taskiq-redis (RedisStreamBroker) or taskiq-aio-pika (RabbitMQ)."""

from __future__ import annotations

import asyncio
from typing import Any

from .base import PY, System, WorkerSpec


class TaskiqSystem(System):
    is_async = True

    def __init__(self, variant: str = "redis") -> None:
        self.variant = variant
        self.name = "taskiq" if variant == "redis" else "taskiq-amqp"
        self.baseline = "aqueue-amqp" if variant == "amqp" else "aqueue"
        if variant == "amqp":
            self.scenarios = frozenset({"drain", "rtt"})
        self.unsupported = {"enqueue-bulk": "no bulk publish API (kiq() per task)"}
        broker = (
            "`AioPikaBroker(url, qos=C)` (taskiq-aio-pika); results in Redis DB 15 "
            "(`RedisAsyncResultBackend`) for round trip"
            if variant == "amqp"
            else "`RedisStreamBroker(url, max_connection_pool_size=100)` (taskiq-redis "
            "README's default: streams + consumer group, acks)"
        )
        self.settings = {
            "broker": broker,
            "worker": "`taskiq worker tasks:broker --workers 1 --max-async-tasks C "
            "--log-level WARNING` (a supervisor process + one worker process; "
            "uvloop picked automatically)",
            "prefetch": "qos=C (AMQP prefetch count; default 10), --max-prefetch 0"
            if variant == "amqp"
            else "default (--max-prefetch 0; stream reads of xread_count=100)",
            "results": "no result backend unless the scenario needs results "
            "(`RedisAsyncResultBackend`, pool 100)",
            "acks": "--ack-type when_saved (default)",
            "round trip": "`await (await noop.kiq()).wait_result(check_interval=0.001)` "
            "(default check_interval 0.2 s polls; 1 ms so the poll is not what is measured)",
            "pool": "Redis pools max_connection_pool_size=100, written out: the default "
            "(None) also becomes 100 in redis-py 8; a BlockingConnectionPool waits up to 20 s "
            "for a connection",
        }
        self._t: Any = None

    def version(self) -> str:
        from importlib.metadata import version

        pkg = "taskiq-aio-pika" if self.variant == "amqp" else "taskiq-redis"
        return f"taskiq {version('taskiq')}, {pkg} {version(pkg)}"

    def env(self, *, results: bool) -> dict[str, str]:
        env = super().env(results=results)
        env["BENCH_TASKIQ_BROKER"] = self.variant
        return env

    def worker(self, *, concurrency: int, results: bool) -> WorkerSpec:
        return WorkerSpec(
            [
                PY,
                "-m",
                "taskiq",
                "worker",
                "benchmarks.systems.taskiq_tasks:broker",
                "--workers",
                "1",
                "--max-async-tasks",
                str(concurrency),
                "--log-level",
                "WARNING",
            ],
            {"BENCH_CONCURRENCY": str(concurrency)},
        )

    def cleanup(self) -> None:
        if self.variant == "amqp":
            from ._amqp import delete_queues

            delete_queues(["taskiq", "taskiq.dead_letter"])

    async def connect(self, *, results: bool) -> None:
        from . import taskiq_tasks

        self._t = taskiq_tasks
        await taskiq_tasks.broker.startup()

    async def close(self) -> None:
        await self._t.broker.shutdown()

    def _task(self, kind: str) -> Any:
        return self._t.noop if kind == "noop" else self._t.sleep

    async def enqueue_one(self, n: int, kind: str) -> None:
        task = self._task(kind)
        for _ in range(n):
            await task.kiq()

    async def enqueue_concurrent(self, n: int, kind: str) -> None:
        task = self._task(kind)
        await asyncio.gather(*(task.kiq() for _ in range(n)))

    async def round_trip(self) -> Any:
        handle = await self._t.noop.kiq()
        result = await handle.wait_result(check_interval=0.001, timeout=10)
        result.raise_for_error()
        return result.return_value
