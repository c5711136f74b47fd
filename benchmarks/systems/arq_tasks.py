"""arq's benchmark tasks and WorkerSettings."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func

from benchmarks import counter
from benchmarks.config import IO_SLEEP, REDIS_DB

RESULTS = os.environ.get("BENCH_RESULTS") == "1"
REDIS = RedisSettings(host="127.0.0.1", port=6379, database=REDIS_DB)
QUEUE = "bench-arq"


async def noop(ctx: dict[str, Any]) -> None:
    counter.tick()


async def sleep(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(IO_SLEEP)
    counter.tick()


class WorkerSettings:
    functions = [func(noop, name="noop"), func(sleep, name="sleep")]  # type: ignore[arg-type]
    redis_settings = REDIS
    queue_name = QUEUE
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "100"))
    keep_result = 3600 if RESULTS else 0
    poll_delay = 0.01  # default 0.5 s: arq polls its queue; see docs/benchmarks.md
