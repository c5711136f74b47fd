"""aqueue's benchmark tasks; the broker comes from BENCH_AQUEUE_BROKER."""

from __future__ import annotations

import asyncio
import os

from aqueue import App
from benchmarks import counter
from benchmarks.config import IO_SLEEP, REDIS_URL

RESULTS = os.environ.get("BENCH_RESULTS") == "1"
QUEUE = "bench-aqueue"
app = App(
    "bench",
    broker=os.environ.get("BENCH_AQUEUE_BROKER", REDIS_URL),
    backend=os.environ.get("BENCH_AQUEUE_BACKEND") or None,
    task_default_queue=QUEUE,
)


@app.task(name="bench.noop", ignore_result=not RESULTS)
async def noop() -> None:
    counter.tick()


@app.task(name="bench.sleep", ignore_result=not RESULTS)
async def sleep() -> None:
    await asyncio.sleep(IO_SLEEP)
    counter.tick()
