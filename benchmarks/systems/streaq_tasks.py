"""streaq's benchmark tasks and Worker."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from streaq import Worker

from benchmarks import counter
from benchmarks.config import IO_SLEEP, REDIS_URL

RESULTS = os.environ.get("BENCH_RESULTS") == "1"
TTL = timedelta(minutes=5) if RESULTS else 0  # ttl=0: no result stored

worker = Worker(
    redis_url=REDIS_URL,
    queue_name="bench-streaq",
    concurrency=int(os.environ.get("BENCH_CONCURRENCY", "100")),
    anyio_kwargs={"use_uvloop": True},
)


@worker.task(name="noop", silent=True, ttl=TTL)
async def noop() -> None:
    counter.tick()


@worker.task(name="sleep", silent=True, ttl=TTL)
async def sleep() -> None:
    await asyncio.sleep(IO_SLEEP)
    counter.tick()
