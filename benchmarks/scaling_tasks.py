"""The scaling benchmark's task (:mod:`benchmarks.scaling`): a no-op whose result is stored."""

from __future__ import annotations

import os

from aqueue import App
from benchmarks import counter

app = App(
    "scale",
    broker=os.environ.get("BENCH_SCALING_BROKER", "memory://scale"),
    task_default_queue="bench-scale",
)


@app.task(name="bench.scale.noop")
async def noop() -> None:
    counter.tick()
