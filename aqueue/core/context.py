"""The running task's request, carried by a contextvar (safe for coroutines and threads)."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .task import Task


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """What a running task knows about its own message (Celery's ``self.request``)."""

    id: str
    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str
    #: executions of this task id so far, this one included (1 on the first run)
    attempt: int
    #: times ``retry()`` re-enqueued it (Celery's ``request.retries``)
    retries: int
    headers: dict[str, str]
    hostname: str | None = None
    eta: float | None = None
    expires: float | None = None
    priority: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    delivery_count: int = 1
    max_retries: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    #: the worker's event loop (sync tasks in threads reach the backend through it)
    loop: asyncio.AbstractEventLoop | None = dataclasses.field(default=None, repr=False)
    #: True when called in-process (``task(...)``), not from a worker
    called_directly: bool = False
    #: the exchange the producer published to ("": straight to ``queue``)
    exchange: str = ""
    #: the routing key it was published with
    routing_key: str = ""

    @property
    def delivery_info(self) -> dict[str, Any]:
        """Celery's ``request.delivery_info``: how the message got here."""
        return {
            "exchange": self.exchange,
            "routing_key": self.routing_key or self.queue,
            "priority": self.priority,
            "redelivered": self.delivery_count > 1,
        }


_current: contextvars.ContextVar[tuple[Task[Any, Any], Request] | None] = contextvars.ContextVar(
    "aqueue_current_task", default=None
)


def current_task() -> Task[Any, Any] | None:
    """The task running in this context (coroutine or thread), or ``None``."""
    entry = _current.get()
    return entry[0] if entry is not None else None


def current_request() -> Request | None:
    """The request of the task running in this context, or ``None``."""
    entry = _current.get()
    return entry[1] if entry is not None else None


def enter(task: Task[Any, Any], request: Request) -> contextvars.Token[Any]:
    """Mark ``task`` as running in this context; pass the token to :func:`leave`."""
    return _current.set((task, request))


def leave(token: contextvars.Token[Any]) -> None:
    """Undo :func:`enter`."""
    _current.reset(token)
