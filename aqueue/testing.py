"""aqueue's pytest plugin: an app on ``memory://``, an embedded worker, ``drain()`` and a
virtual clock. Opt in with ``pytest -p aqueue.testing`` or, in a ``conftest.py``,
``pytest_plugins = ["aqueue.testing"]``; it registers no entry point, so installing aqueue
changes no one else's test run. Needs pytest-asyncio (the fixtures are async).

Fixtures:

- ``aqueue_app``: an :class:`~aqueue.App` on a ``memory://`` store of its own (one per test),
  connected, closed after the test. Override it in a ``conftest.py`` to test your own app.
- ``aqueue_worker``: an embedded worker on ``aqueue_app``, running during the test.
- ``aqueue_clock``: a :class:`VirtualTime` for ``aqueue_app`` (countdown, eta, retries, beat).

Helpers (also usable without the fixtures):

- :func:`drain`: runs every queued task, and what those tasks queue (workflow steps,
  retries that are due), to completion; re-raises the first task error in the test.
- :class:`VirtualTime`: ``await clock.advance(60)`` makes messages delayed by up to a minute
  due, and runs the wake-ups of a scheduler started with ``app.beat(clock=clock)``.

There is no eager mode (aqueue refuses ``task_always_eager``): ``await drain(app)`` after the
calls is the eager mode. It runs the tasks through the real worker (argument decoding, the
task's options, retries, results, workflow continuations) on an in-process store, in
milliseconds, where an eager mode would skip exactly the parts a test should see.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio

from aqueue import App, Worker, signals
from aqueue.beat.clock import VirtualClock
from aqueue.brokers.memory import store_for

__all__ = ["VirtualTime", "aqueue_app", "aqueue_clock", "aqueue_worker", "drain", "memory_app"]


def memory_app(name: str = "test", **settings: Any) -> App:
    """An App on a ``memory://`` store no other app shares (a unique name)."""
    return App(name, broker=f"memory://{name}-{uuid.uuid4().hex[:12]}", **settings)


class VirtualTime(VirtualClock):
    """A clock a test moves by hand, for the messages of a ``memory://`` app and for beat.

    ``await clock.advance(seconds)`` runs the wake-ups of schedulers started with
    ``app.beat(clock=clock)`` that fall due on the way (beat's own virtual clock), then
    makes every delayed message of the app's memory store (``countdown``, ``eta``, a retry's
    delay) that many seconds nearer: what was due within ``seconds`` is claimable at once.
    Nothing sleeps; ``drain(app)`` then runs what became due.
    """

    def __init__(self, app: App, start: float | None = None) -> None:
        super().__init__(time.time() if start is None else start)
        if not app.broker_url.startswith("memory://"):
            raise ValueError(f"VirtualTime moves memory:// stores only, not {app.broker_url}")
        self.app = app

    async def advance_to(self, moment: Any) -> None:
        before = self.now()
        await super().advance_to(moment)
        self._shift(self.now() - before)

    def _shift(self, seconds: float) -> None:
        """Bring every delayed message of the store ``seconds`` nearer."""
        if seconds <= 0:
            return
        store = store_for(self.app.broker_url)
        with store.lock:
            shifted = []
            for due, seq, id_ in store.delayed:
                entry = store.entries.get(id_)
                if entry is not None and entry.seq == seq:
                    entry.due = due - seconds
                shifted.append((due - seconds, seq, id_))
            heapq.heapify(shifted)
            store.delayed[:] = shifted
        store.wakeup.notify()

    def next_due(self) -> float | None:
        """Seconds until the store's next delayed message is due (None: none is delayed)."""
        store = store_for(self.app.broker_url)
        with store.lock:
            live = [
                due
                for due, seq, id_ in store.delayed
                if (entry := store.entries.get(id_)) is not None and entry.seq == seq
            ]
        return max(min(live) - time.time(), 0.0) if live else None


def _queues(app: App) -> list[str]:
    """Every queue of a memory store that holds a message, and the app's default queue."""
    names = {app.conf.task_default_queue}
    if app.broker_url.startswith("memory://"):
        store = store_for(app.broker_url)
        with store.lock:
            names.update(entry.queue for entry in store.entries.values())
    return sorted(names)


async def drain(
    app: App,
    *,
    clock: VirtualTime | None = None,
    queues: Sequence[str] | None = None,
    propagate: bool = True,
    timeout: float = 30.0,
    concurrency: int = 10,
) -> int:
    """Run what is queued on ``app``, and what those tasks queue, until nothing is left.

    A burst worker runs until no message is claimable and no task runs; workflow steps
    and due retries are messages too, so a chain runs to its end. With ``clock``, time then
    jumps to the next delayed message (a countdown, an eta, a retry's backoff) and the
    worker runs again, until nothing is delayed either: a task that retries forever ends in
    ``TimeoutError`` after ``timeout`` seconds. Without it, delayed messages stay queued.

    On a ``memory://`` app every queue holding a message is drained (``queues`` narrows
    it); elsewhere ``queues`` or the app's default queue. Returns the number of tasks that
    ended (succeeded or failed). With ``propagate`` the first task error (after retries) is
    raised here, as the exception object the task raised.
    """
    errors: list[BaseException] = []

    def failed(sender: Any, *, exception: BaseException, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            errors.append(exception)

    signals.task_failure.connect(failed)
    ended = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                worker = app.worker(
                    queues=list(queues) if queues else _queues(app),
                    burst=True,
                    concurrency=concurrency,
                    hostname=f"drain-{uuid.uuid4().hex[:8]}@test",
                )
                await worker.run()
                ended += worker.executor.succeeded + worker.executor.failed
                wait = clock.next_due() if clock is not None else None
                if clock is None or wait is None:
                    break
                await clock.advance(wait)
    finally:
        signals.task_failure.disconnect(failed)
    if errors and propagate:
        raise errors[0]
    return ended


# -- fixtures ------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def aqueue_app() -> AsyncIterator[App]:
    """An App on a ``memory://`` store of its own, connected; closed after the test."""
    app = memory_app()
    async with app:
        yield app


@pytest_asyncio.fixture
async def aqueue_worker(aqueue_app: App) -> AsyncIterator[Worker]:
    """An embedded worker on ``aqueue_app``'s default queue, running during the test."""
    async with aqueue_app.worker(concurrency=10, hostname="embedded@test") as worker:
        yield worker


@pytest.fixture
def aqueue_clock(aqueue_app: App) -> VirtualTime:
    """A virtual clock for ``aqueue_app``: ``await aqueue_clock.advance(60)``."""
    return VirtualTime(aqueue_app)
