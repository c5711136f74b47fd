"""Closing an AMQP client whose owner never closed it, when the event loop ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

log = logging.getLogger("aqueue.amqp")


class LoopEndClose:
    """Awaits ``close()`` when the event loop ends while armed: the app was not closed.

    ``asyncio.run(main())`` whose ``main`` returns without ``await app.close()`` cancels every
    task, aiormq's reader and writer included, which tears the AMQP connections down
    mid-flight, then closes the loop. Left there, an aio-pika connection object that was
    never closed schedules a close task from its ``__del__`` whenever it is collected, on a
    loop about to stop ("Task was destroyed but it is pending!"). Armed, this closes the
    owner properly once the tasks are cancelled and before the loop closes: it is an async
    generator, and the loop finalizes every live one then (``shutdown_asyncgens``, asyncio
    and uvloop alike). The owner arms it on connecting and disarms it when closed.
    """

    def __init__(self, close: Callable[[], Awaitable[None]], timeout: float) -> None:
        self._close = close
        self._timeout = timeout
        self._hook: AsyncGenerator[None, None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self) -> None:
        """Close the owner when the running loop ends (idempotent)."""
        loop = asyncio.get_running_loop()
        if self._hook is not None and self._loop is loop:
            return
        self.disarm()
        hook = self._run()
        step: Any = hook.asend(None)  # the loop's first-iteration hook registers it
        try:
            step.send(None)  # runs to its ``yield`` without awaiting anything
        except StopIteration:
            pass
        self._hook, self._loop = hook, loop

    def disarm(self) -> None:
        """The owner was closed: finish the hook now, without a task (idempotent)."""
        hook, self._hook, self._loop = self._hook, None, None
        if hook is not None:
            step: Any = hook.aclose()
            try:
                step.send(None)
            except (StopIteration, RuntimeError):  # finished, or finishing right now
                pass

    async def _run(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self._hook is not None:  # still armed: the loop is ending
                self._hook = self._loop = None
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._close()
                except Exception as exc:  # best effort, the loop is going away
                    log.debug("closing at the end of the event loop failed: %r", exc)
