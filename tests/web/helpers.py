"""Shared by the dashboard tests: waiting on the dashboard's model (never sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aqueue.web import Dashboard

#: the fields of the seed's ``curl /api/task/info/ID`` (celery101, day 6), in its order
SEED_FIELDS = [
    "uuid",
    "name",
    "state",
    "received",
    "sent",
    "started",
    "rejected",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "args",
    "kwargs",
    "eta",
    "expires",
    "retries",
    "worker",
    "result",
    "exception",
    "timestamp",
    "runtime",
    "traceback",
    "exchange",
    "routing_key",
    "clock",
    "client",
    "root",
    "root_id",
    "parent",
    "parent_id",
    "children",
]


async def until(
    board: Dashboard, check: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0
) -> None:
    """Wait until ``check()`` holds, looking again each time the model applies an event."""
    async with asyncio.timeout(timeout):
        while True:
            seen = board.state.changes
            verdict = check()
            if not isinstance(verdict, bool):
                verdict = await verdict
            if verdict:
                return
            await board.state.wait_change(seen, 1.0)


def task_state(board: Dashboard, task_id: str) -> str | None:
    task = board.state.tasks.get(task_id)
    return task.state if task is not None else None
