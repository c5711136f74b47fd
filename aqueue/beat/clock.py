"""The scheduler's clock: the system's, or a virtual one that tests move by hand.

The scheduler reads the time and sleeps only through a :class:`Clock`, so a test can drive
months of slots, daylight-saving changes and downtime in milliseconds with a
:class:`VirtualClock`: ``await clock.advance(3600)`` runs every wake-up the scheduler asked
for within that hour, in order, each after the previous one finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "VirtualClock"]


@runtime_checkable
class Clock(Protocol):
    """Where the scheduler reads the time and sleeps."""

    def now(self) -> float:
        """Unix seconds."""

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        """Return at ``deadline`` (unix seconds), or as soon as ``wake`` is set."""


class SystemClock:
    """The system's clock (``time.time``)."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        delay = deadline - time.time()
        if delay <= 0 or wake.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await wake.wait()


class _Sleeper:
    __slots__ = ("deadline", "future")

    def __init__(self, deadline: float, future: asyncio.Future[object]) -> None:
        self.deadline = deadline
        self.future = future


class VirtualClock:
    """A clock that moves only when told to (a test hook).

    Args:
        start: the starting time (an aware datetime, or unix seconds).
    """

    def __init__(self, start: datetime | float) -> None:
        self._now = start.timestamp() if isinstance(start, datetime) else float(start)
        self._sleepers: list[_Sleeper] = []
        # tasks that returned from sleep_until and have not slept again (nor ended)
        self._busy: set[asyncio.Task[object]] = set()
        self._watched: set[asyncio.Task[object]] = set()
        self._quiet: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    def _event(self) -> asyncio.Event:
        if self._quiet is None:
            self._quiet = asyncio.Event()
            self._quiet.set()
        return self._quiet

    def _settled(self, task: asyncio.Task[object]) -> None:
        self._busy.discard(task)
        if not self._busy:
            self._event().set()

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._settled(task)
        if deadline <= self._now or wake.is_set():
            self._running(task)
            return
        sleeper = _Sleeper(deadline, asyncio.get_running_loop().create_future())
        self._sleepers.append(sleeper)
        woken: asyncio.Future[object] = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({sleeper.future, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)
            self._running(task)

    def _running(self, task: asyncio.Task[object]) -> None:
        self._busy.add(task)
        self._event().clear()
        if task not in self._watched:  # an ended task is settled
            self._watched.add(task)
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[object]) -> None:
        self._watched.discard(task)
        self._settled(task)

    async def settle(self) -> None:
        """Wait until every task that slept on this clock is asleep again (or ended)."""
        await self._event().wait()

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running each wake-up due on the way in order."""
        await self.advance_to(self._now + seconds)

    async def advance_to(self, moment: datetime | float) -> None:
        """Move time forward to ``moment``, running each wake-up due on the way in order."""
        target = moment.timestamp() if isinstance(moment, datetime) else float(moment)
        await self.settle()
        while True:
            due = [s for s in self._sleepers if s.deadline <= target and not s.future.done()]
            if not due:
                break
            first = min(due, key=lambda s: s.deadline)
            self._now = max(self._now, first.deadline)
            first.future.set_result(None)
            self._event().clear()  # the sleeper's task runs before it counts as settled
            await asyncio.sleep(0)
            await self.settle()
        self._now = max(self._now, target)
