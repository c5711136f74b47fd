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

    #: the chord this task completes a member of, as an opaque reference (set when
    #: ``self.add_to_chord()`` is allowed: not on a chain step before the last)
    chord: str | None = None
    #: what the task sent so far; made on its first send (see :func:`trail_of`)
    trail: Trail | None = dataclasses.field(default=None, repr=False)
    #: whether what it sends is recorded as its children (the task's ``trail`` option)
    keeps_trail: bool = True


@dataclasses.dataclass(slots=True)
class Trail:
    """What a running task sent: its children, and what it added to its chord.

    Made on the task's first send, so a task that sends nothing pays nothing for it.
    """

    #: result handles of what it sent, in order (stored with its result: Celery's ``trail``)
    children: list[Any] = dataclasses.field(default_factory=list)
    #: the shapes of what it added to its chord, in order (``self.add_to_chord()``)
    added: list[Any] = dataclasses.field(default_factory=list)
    #: ``self.add_to_chord()`` calls so far (each derives its ids from its number)
    add_calls: int = 0
    #: held while a chord addition is recorded, so the list stored last is the longest
    adding: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


def trail_of(request: Request) -> Trail:
    """The request's :class:`Trail`, made on first use.

    The one field of a (frozen) request set after it is made: only when the task sends.
    """
    trail = request.trail
    if trail is None:
        trail = Trail()
        object.__setattr__(request, "trail", trail)
    return trail


def record_child(request: Request | None, handle: Any) -> None:
    """Record ``handle`` (what a running task just sent) as a child of ``request``'s task
    (Celery's ``trail``), unless the task has ``trail=False``."""
    if request is not None and request.keeps_trail and not request.called_directly:
        trail_of(request).children.append(handle)


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
