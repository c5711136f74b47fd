"""SAQ's benchmark tasks and worker settings."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from redis.asyncio import Redis
from saq.queue.redis import RedisQueue

from benchmarks import counter
from benchmarks.config import IO_SLEEP, REDIS_URL

# SAQ's redis extra pins redis<8, whose pools were unbounded; redis-py 8 caps a pool at 100
# connections by default, fewer than SAQ's C blocking dequeues + upkeep + pub/sub need.
queue = RedisQueue(Redis.from_url(REDIS_URL, max_connections=10_000), name="bench-saq")


async def noop(ctx: dict[str, Any]) -> None:
    counter.tick()


async def sleep(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(IO_SLEEP)
    counter.tick()


settings = {
    "queue": queue,
    "functions": [noop, sleep],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "100")),
}
