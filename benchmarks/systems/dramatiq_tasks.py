"""dramatiq's benchmark actors (sync no-op; the sleep actor is async via AsyncIO)."""

from __future__ import annotations

import asyncio
import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO

from benchmarks import counter
from benchmarks.config import IO_SLEEP, REDIS_URL

RESULTS = os.environ.get("BENCH_RESULTS") == "1"
broker = RedisBroker(url=REDIS_URL, namespace="bench-dramatiq")
broker.add_middleware(AsyncIO())
if RESULTS:
    from dramatiq.results import Results
    from dramatiq.results.backends.redis import RedisBackend

    broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)


OPTIONS = {"store_results": True} if RESULTS else {}


@dramatiq.actor(actor_name="noop", **OPTIONS)
def noop() -> None:
    counter.tick()


@dramatiq.actor(actor_name="sleep", **OPTIONS)
async def sleep() -> None:
    await asyncio.sleep(IO_SLEEP)
    counter.tick()
