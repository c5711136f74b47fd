"""aqueue's benchmark tasks; the broker comes from BENCH_AQUEUE_BROKER."""

from __future__ import annotations

import asyncio
import os

from aqueue import App
from benchmarks import counter
from benchmarks.config import IO_SLEEP, REDIS_URL

# On Redis and SQLite, results are stored in every scenario, the drain included: aqueue's
# targets there are set with acks, leases and result storage on. On RabbitMQ (aqueue-amqp,
# results in Redis DB 15) only where the scenario needs them, as for taskiq-amqp; the
# aqueue-amqp-rpc and aqueue-amqp-redis rows store them in every scenario.
_BROKER = os.environ.get("BENCH_AQUEUE_BROKER", REDIS_URL)
IGNORE = os.environ.get("BENCH_AQUEUE_IGNORE_RESULT") == "1"
QUEUE = "bench-aqueue"
app = App(
    "bench",
    broker=_BROKER,
    backend=os.environ.get("BENCH_AQUEUE_BACKEND") or None,
    task_default_queue=QUEUE,
)


@app.task(name="bench.noop", ignore_result=IGNORE)
async def noop() -> None:
    counter.tick()


@app.task(name="bench.sleep", ignore_result=IGNORE)
async def sleep() -> None:
    await asyncio.sleep(IO_SLEEP)
    counter.tick()
