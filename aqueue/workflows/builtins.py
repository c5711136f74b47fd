"""Tasks every app registers for workflows: the chord deadline, collect, map and starmap."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ..core.canvas import MAP_TASK, STARMAP_TASK

if TYPE_CHECKING:
    from ..core.app import App
    from .engine import Engine

CHORD_DEADLINE_TASK: Final = "aqueue.chord_deadline"
#: the body of a group with callbacks: its value is the group's list, its links the group's
COLLECT_TASK: Final = "aqueue.collect"


async def _call(app: App, name: str, args: Sequence[Any]) -> Any:
    task = app.get_task(name)  # a registry lookup: nothing is imported by name
    if task.is_async:
        value = task(*args)
        return await value if inspect.isawaitable(value) else value
    return await asyncio.to_thread(task, *args)


def register(app: App, engine: Engine) -> None:
    """Register the workflow tasks on ``app``."""

    @app.task(name=CHORD_DEADLINE_TASK, ignore_result=True)
    async def chord_deadline(chord_id: str) -> None:
        await engine.deadline(chord_id)

    @app.task(name=COLLECT_TASK)
    async def collect(values: list[Any]) -> list[Any]:
        return values

    @app.task(name=MAP_TASK)
    async def xmap(task: str, items: list[Any]) -> list[Any]:
        return [await _call(app, task, (item,)) for item in items]

    @app.task(name=STARMAP_TASK)
    async def xstarmap(task: str, items: list[list[Any]]) -> list[Any]:
        return [await _call(app, task, item) for item in items]
