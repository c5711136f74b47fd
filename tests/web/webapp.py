"""The app the dashboard tests run: the celery101 seed's workflow tasks (day 6), a task
that fails, and one that runs until revoked. Its broker and backend come from
``AQT_WEB_BROKER`` / ``AQT_WEB_BACKEND`` (a process started by a test is told them)."""

from __future__ import annotations

import asyncio
import os

from aqueue import App

app = App(
    "webproj",
    broker=os.environ.get("AQT_WEB_BROKER", "memory://webproj"),
    backend=os.environ.get("AQT_WEB_BACKEND") or None,
)
app.conf.update(task_send_sent_event=True, event_include_arguments=True, result_extended=True)


@app.task(name="div")
async def div(x: float, y: float) -> float:
    return x / y


@app.task(name="mul")
async def mul(x: float, y: float) -> float:
    return x * y


@app.task(name="add")
async def add(x: float, y: float) -> float:
    return x + y


@app.task(name="diff-of-two-numbers")
async def sub(x: float, y: float) -> float:
    return x - y


@app.task(name="fail")
async def fail(key: str) -> None:
    raise KeyError(key)


@app.task(name="sleepy")
async def sleepy(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds
