"""Celery 5 on Redis: thread pool worker, sync producer API."""

from __future__ import annotations

from typing import Any

from .base import PY, System, WorkerSpec


class CelerySystem(System):
    name = "celery"
    is_async = False
    unsupported = {
        "enqueue-concurrent": "no asyncio API: delay() blocks the calling thread",
    }
    settings = {
        "broker / backend": "redis DB 15 (kombu Redis transport); result backend only for "
        "round trip",
        "worker": "`celery worker -P threads -c C --without-gossip --without-mingle "
        "--without-heartbeat -l WARNING` (one process; tasks are plain functions)",
        "prefetch": "worker_prefetch_multiplier=4 (default): 4 x C unacked messages",
        "results": "task_ignore_result=True unless the scenario needs results",
        "serializer": "json (default)",
        "acks": "acks on receipt (default task_acks_late=False)",
        "I/O task": "time.sleep(0.01) on the thread pool (Celery has no async tasks)",
        "bulk": "`group(noop.s() for _ in range(n)).apply_async()`",
        "round trip": "`noop.delay().get(timeout=10)` (Redis pub/sub result consumer)",
        "event loop": "n/a (threads)",
    }

    def version(self) -> str:
        from importlib.metadata import version

        return version("celery")

    def worker(self, *, concurrency: int, results: bool) -> WorkerSpec:
        return WorkerSpec(
            [
                PY,
                "-m",
                "celery",
                "-A",
                "benchmarks.systems.celery_tasks",
                "worker",
                "-P",
                "threads",
                "-c",
                str(concurrency),
                "-l",
                "WARNING",
                "-Q",
                "bench-celery",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )

    def connect(self, *, results: bool) -> None:
        from . import celery_tasks

        self._t: Any = celery_tasks

    def _task(self, kind: str) -> Any:
        return self._t.noop if kind == "noop" else self._t.sleep

    def enqueue_one(self, n: int, kind: str) -> None:
        task = self._task(kind)
        for _ in range(n):
            task.delay()

    def enqueue_bulk(self, n: int, kind: str) -> None:
        from celery import group

        task = self._task(kind)
        group(task.s() for _ in range(n)).apply_async()

    def round_trip(self) -> Any:
        return self._t.noop.delay().get(timeout=10)
