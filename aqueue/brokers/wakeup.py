"""Waking coroutines, possibly on other event loops, when an in-process broker changes."""

from __future__ import annotations

import asyncio
import threading


class Wakeup:
    """A thread-safe broadcast: ``wait()`` returns when ``notify()`` is called or on timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a ``notify()``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            self._waiters.add(entry)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation,
            # and a cancelled claim must stop at once (claims are cancel-safe)
            async with asyncio.timeout(max(timeout, 0.0)):
                await fut
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(entry)

    def notify(self) -> None:
        """Wake every waiter."""
        with self._lock:
            waiters = list(self._waiters)
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed
                pass


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
