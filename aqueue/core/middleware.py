"""App-level middleware: async code around every publish and every execution.

Subclass :class:`Middleware`, override what you need, and ``app.add_middleware(m)``. The
first added is the outermost. ``publish`` may replace the message (it is frozen: use
``msgspec.structs.replace(message, headers={...})``), e.g. to add trace context;
``execute`` wraps the call of the task (and sees its return value or exception).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .context import Request
from .message import MessageOut

PublishNext = Callable[[MessageOut], Awaitable[None]]
ExecuteNext = Callable[[], Awaitable[Any]]


class Middleware:
    """Pass-through defaults; override either method."""

    async def publish(self, message: MessageOut, call_next: PublishNext) -> None:
        """Around sending one message; call ``call_next(message)`` to send it."""
        await call_next(message)

    async def execute(self, request: Request, call_next: ExecuteNext) -> Any:
        """Around running one task in the worker; return what ``call_next()`` returns."""
        return await call_next()


def chain_publish(middlewares: Sequence[Middleware], last: PublishNext) -> PublishNext:
    """Compose publish middlewares around ``last``, first outermost."""
    handler = last
    for m in reversed(middlewares):
        handler = _bind_publish(m, handler)
    return handler


def _bind_publish(m: Middleware, nxt: PublishNext) -> PublishNext:
    async def call(message: MessageOut) -> None:
        await m.publish(message, nxt)

    return call


def chain_execute(
    middlewares: Sequence[Middleware], request: Request, last: ExecuteNext
) -> ExecuteNext:
    """Compose execute middlewares around ``last``, first outermost."""
    handler = last
    for m in reversed(middlewares):
        handler = _bind_execute(m, request, handler)
    return handler


def _bind_execute(m: Middleware, request: Request, nxt: ExecuteNext) -> ExecuteNext:
    async def call() -> Any:
        return await m.execute(request, nxt)

    return call
