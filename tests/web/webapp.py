"""The app the dashboard tests run: the celery101 seed's workflow tasks (day 6), a task
that fails, and one that sleeps until revoked. ``make_app`` gives a test its own; ``app``
is the one a process started by a test loads (``tests.web.webapp:app``), on
``AQT_WEB_BROKER`` / ``AQT_WEB_BACKEND``."""

from __future__ import annotations

import asyncio
import os

from aqueue import App


def make_app(broker: str, backend: str | None = None) -> App:
    app = App("webproj", broker=broker, backend=backend)
    # the producer's task-sent events, arguments in events, arguments kept with results
    # (the dashboard's retry needs them)
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

    return app


app = make_app(
    os.environ.get("AQT_WEB_BROKER", "memory://webproj"), os.environ.get("AQT_WEB_BACKEND") or None
)
