"""Tasks for the subprocess worker tests. The app reads its URL from AQUEUE_BROKER_URL."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from aqueue import App, Task

app = App("proc")


def _mark(name: str, text: str) -> None:
    """Append a line to a file in AQUEUE_TEST_DIR: how the test observes executions."""
    with Path(os.environ["AQUEUE_TEST_DIR"], name).open("a") as f:
        f.write(text + "\n")


@app.task(bind=True)
async def slow(self: Task[[str, float], str], key: str, seconds: float) -> str:
    _mark(f"started-{key}", str(self.request.attempt))
    await asyncio.sleep(seconds)
    _mark(f"done-{key}", str(self.request.attempt))
    return f"{key}:{self.request.attempt}"


@app.task(bind=True)
async def gated(self: Task[[str], str], key: str) -> str:
    """``slow`` that runs until the test creates ``release-<key>``, not for a time a loaded
    machine can outlast: marks ``<attempt>`` in started-<key> and done-<key>."""
    _mark(f"started-{key}", str(self.request.attempt))
    release = Path(os.environ["AQUEUE_TEST_DIR"], f"release-{key}")
    while not release.exists():
        await asyncio.sleep(0.02)
    _mark(f"done-{key}", str(self.request.attempt))
    return f"{key}:{self.request.attempt}"


@app.task
def blocking(key: str, seconds: float) -> str:
    _mark(f"started-{key}", "1")
    time.sleep(seconds)
    return key


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def block_loop(key: str, seconds: float) -> str:
    """Blocks the worker's event loop itself (the mistake docs/reliability.md row 5 is about)."""
    _mark(f"started-{key}", "1")
    time.sleep(seconds)
    return key


@app.task
async def healthy(n: int) -> int:
    _mark(f"healthy-{n}", "1")
    return n


@app.task
async def poison() -> None:
    _mark("poison", "1")
    os._exit(1)  # kills the worker process on every attempt


@app.task(bind=True)
async def hold(self: Task[[str], str], key: str) -> str:
    """Runs until the test creates ``release-<key>`` (or the task is terminated)."""
    _mark(f"started-{key}", self.request.id)
    release = Path(os.environ["AQUEUE_TEST_DIR"], f"release-{key}")
    while not release.exists():
        await asyncio.sleep(0.02)
    return key


@app.task(bind=True)
async def slow_here(self: Task[[str, float], str], key: str, seconds: float) -> str:
    """``slow``, marking which process runs it: ``<attempt> <pid>``."""
    _mark(f"started-{key}", f"{self.request.attempt} {os.getpid()}")
    await asyncio.sleep(seconds)
    return f"{key}:{self.request.attempt}"
