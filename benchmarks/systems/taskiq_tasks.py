"""taskiq's benchmark tasks; BENCH_TASKIQ_BROKER picks redis (streams) or amqp (aio-pika)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from benchmarks import counter
from benchmarks.config import AMQP_URL, IO_SLEEP, REDIS_URL

RESULTS = os.environ.get("BENCH_RESULTS") == "1"
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "100"))
POOL = 100  # connections per pool: what the default (None) becomes in redis-py 8

broker: Any
if os.environ.get("BENCH_TASKIQ_BROKER", "redis") == "amqp":
    from taskiq_aio_pika import AioPikaBroker

    broker = AioPikaBroker(url=AMQP_URL, qos=CONCURRENCY)
else:
    from taskiq_redis import RedisStreamBroker

    broker = RedisStreamBroker(
        url=REDIS_URL, queue_name="bench-taskiq", max_connection_pool_size=POOL
    )

if RESULTS:
    from taskiq_redis import RedisAsyncResultBackend

    broker = broker.with_result_backend(
        RedisAsyncResultBackend(redis_url=REDIS_URL, max_connection_pool_size=POOL)
    )


@broker.task(task_name="bench.noop")
async def noop() -> None:
    counter.tick()


@broker.task(task_name="bench.sleep")
async def sleep() -> None:
    await asyncio.sleep(IO_SLEEP)
    counter.tick()
