"""The app the CLI command tests load by name (``tests.cli_project:make_app``).

A factory, so each test gets an app on its own broker: ``AQT_CLI_BROKER`` (and
``AQT_CLI_BACKEND`` when set), which the test sets.
"""

from __future__ import annotations

import os

from aqueue import App, Queue


def make_app() -> App:
    app = App(
        "cliproj",
        broker=os.environ["AQT_CLI_BROKER"],
        backend=os.environ.get("AQT_CLI_BACKEND") or None,
    )
    if os.environ.get("AQT_CLI_ROUTES"):  # the routing settings name queues as well
        app.conf.update(
            task_queues=[Queue("celery"), Queue("declared")],
            task_routes={"cliproj.total": {"queue": "routed"}},
        )

    @app.task(name="cliproj.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="cliproj.fail")
    async def fail(key: str) -> None:
        raise KeyError(key)

    @app.task(name="cliproj.hi", queue="hi", time_limit=5.0)
    def hi() -> str:
        return "hi"

    @app.task(name="cliproj.total")
    async def total(values: list[int]) -> int:
        return sum(values)

    return app
