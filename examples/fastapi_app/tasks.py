"""The seed's day-4 workflow: ``div | mul | add | sub`` (celery101, "Designing workflows").

``(div.s(4, 2) | mul.s(3) | add.s(6) | sub.s(2))`` computes 4 / 2 * 3 + 6 - 2 = 10; each
step's value is the next step's first argument. ``STEP_SECONDS`` makes each step take that
long (the seed's tasks are "long-running"), so the status walk has something to show.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aqueue import App, Chain, chain

#: the order of the steps, and the names the API's JSON uses for them
STEPS = ("div", "mul", "add", "sub")


def create_queue(broker: str | None = None) -> App:
    """The aqueue app with the four tasks (broker: ``AQUEUE_BROKER_URL``, else the
    embedded SQLite file ``aqueue.db``)."""
    queue = App("day4", broker=broker)
    pause = float(os.environ.get("STEP_SECONDS", "0"))

    async def step() -> None:
        if pause:
            await asyncio.sleep(pause)

    @queue.task(name="day4.div")
    async def div(x: float, y: float) -> float:
        await step()
        return x / y

    @queue.task(name="day4.mul")
    async def mul(x: float, y: float) -> float:
        await step()
        return x * y

    @queue.task(name="day4.add")
    async def add(x: float, y: float) -> float:
        await step()
        return x + y

    @queue.task(name="day4.sub")
    async def sub(x: float, y: float) -> float:
        await step()
        return x - y

    return queue


def workflow(queue: App, job: dict[str, list[float]]) -> Chain[Any, Any]:
    """The day-4 chain with the day-7 way of passing arguments: ``job`` gives each step's
    own arguments, e.g. ``{"div": [4, 2], "mul": [3], "add": [6], "sub": [2]}``."""
    return chain(*(queue.tasks[f"day4.{name}"].s(*job[name]) for name in STEPS))
