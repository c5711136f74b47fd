"""Reading the event stream in tests: await what is expected, never sleep and hope."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from aqueue import App
from aqueue.core.events import Event, EventStream
from aqueue.core.protocols import KeepsTopics


def need_topics(app: App) -> None:
    """Skip (naming the broker) where the broker carries no topics yet."""
    if not isinstance(app.broker, KeepsTopics):
        pytest.skip(f"{type(app.broker).__name__} has no topics yet: it carries no events")


async def read_until(
    stream: EventStream, done: Callable[[list[Event]], bool], timeout: float = 15.0
) -> list[Event]:
    """Events from ``stream`` until ``done(events)`` (a TimeoutError after ``timeout``)."""
    got: list[Event] = []
    async with asyncio.timeout(timeout):
        while not done(got):
            got += await stream.next_batch(0.5)
    return got


def of(events: list[Event], task_id: str) -> list[Event]:
    """The events of one task, in stream order."""
    return [e for e in events if e.uuid == task_id]


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


def has(type_: str, task_id: str | None = None) -> Callable[[list[Event]], bool]:
    """``done`` for :func:`read_until`: an event of ``type_`` (of ``task_id``) came."""
    return lambda events: any(
        e.type == type_ and (task_id is None or e.uuid == task_id) for e in events
    )
