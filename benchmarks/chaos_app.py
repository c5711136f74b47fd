"""The app the chaos run's worker processes load (``benchmarks/chaos.py``).

Its broker comes from ``AQUEUE_BROKER_URL``. Every execution is recorded in an append-only
file of the worker process's own (``$CHAOS_DIR/exec-<pid>.log``): one ``os.write`` on an
``O_APPEND`` descriptor per line, so a line written before a ``kill -9`` is in the file (the
kernel holds it; no fsync is needed, the machine does not crash) and lines never interleave.

The task stores its result, as most tasks do (the broker's default result backend: the same
Redis server or SQLite file; ``rpc://`` on RabbitMQ): a redelivered task whose result was
stored is not run again, so the duplicates counted are the ones users would see.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from aqueue import App, Task

app = App("chaos")
_fd: int | None = None


def record(event: str, i: int, attempt: int) -> None:
    """``<event> <task number> <attempt> <unix time> <pid>``; S when it starts, D when done."""
    global _fd
    if _fd is None:
        path = Path(os.environ["CHAOS_DIR"], f"exec-{os.getpid()}.log")
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, f"{event} {i} {attempt} {time.time():.6f} {os.getpid()}\n".encode())


@app.task(name="chaos.work", bind=True)
async def work(self: Task[[int, float], None], i: int, seconds: float) -> None:
    record("S", i, self.request.attempt)
    await asyncio.sleep(seconds)
    record("D", i, self.request.attempt)
