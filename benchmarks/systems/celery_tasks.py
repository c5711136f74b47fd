"""Celery's benchmark tasks (sync functions: Celery runs them on its thread pool)."""

from __future__ import annotations

import os
import time

from celery import Celery

from benchmarks import counter
from benchmarks.config import IO_SLEEP, REDIS_URL

RESULTS = os.environ.get("BENCH_RESULTS") == "1"
app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL if RESULTS else None)
app.conf.update(
    task_ignore_result=not RESULTS,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue="bench-celery",
)


@app.task(name="bench.noop")
def noop() -> None:
    counter.tick()


@app.task(name="bench.sleep")
def sleep() -> None:
    time.sleep(IO_SLEEP)
    counter.tick()
