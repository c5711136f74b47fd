"""Module-level tasks for the worker's process pool (children import them by name)."""

from __future__ import annotations

import hashlib
import os

from aqueue import App, offload

app = App("process-tasks", broker="memory://process-tasks")  # the tests set the URL


def _digest(rounds: int) -> str:
    value = b"x"
    for _ in range(rounds):
        value = hashlib.sha256(value).digest()
    return value.hex()[:12]


@app.task(offload="process")
def crunch(rounds: int) -> str:
    return _digest(rounds)


@app.task(offload="process")
def where() -> int:
    return os.getpid()


@app.task(offload="process")
def die() -> None:
    os._exit(1)


@app.task(offload="process", time_limit=0.5)
def spin() -> None:
    while True:
        pass


@app.task
async def mixed(rounds: int) -> str:
    return await offload(_digest, rounds)  # a CPU-bound section of an async task
