"""What every system adapter provides.

An adapter is used on two sides:

* in the orchestrator: ``worker()`` (the command line of one worker process),
  ``settings`` (written into the results and docs), ``unsupported`` (scenarios that
  are n/a, with the reason) and ``cleanup()`` (anything outside Redis DB 15);
* in a producer process (``python -m benchmarks.producer``): ``connect()``, the three
  enqueue modes, ``round_trip()`` and ``close()``. Sync libraries implement them as plain
  methods; the producer runs them outside the event loop.

The tasks each worker imports live in ``<system>_tasks.py`` next to the adapter; every
task calls :func:`benchmarks.counter.tick` when it is done.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from ..config import IO_SLEEP, REDIS_URL

PY = sys.executable


class NotApplicable(Exception):
    """The system has no way to do this (e.g. no bulk API); the reason is recorded."""


@dataclass
class WorkerSpec:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)


class System:
    """Base adapter. ``kind`` is ``"noop"`` or ``"sleep"`` (asyncio.sleep(0.01))."""

    name = "?"
    #: the system this one's ratio is computed against
    baseline = "aqueue"
    #: scenarios this system runs at all (others are not listed for it)
    scenarios: frozenset[str] = frozenset({"enqueue", "drain", "rtt", "io", "scale"})
    #: scenario -> reason, reported as n/a
    unsupported: dict[str, str] = {}
    #: every setting that differs from a default, or that matters, in words
    settings: dict[str, str] = {}
    #: whether the producer-side methods are coroutines
    is_async = True
    #: whether enqueue_bulk is a real bulk API (else ``fill`` uses bounded gathers)
    native_bulk = True

    def version(self) -> str:
        return ""

    def worker(self, *, concurrency: int, results: bool) -> WorkerSpec:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove state kept outside Redis DB 15 (RabbitMQ queues, SQLite files)."""

    def env(self, *, results: bool) -> dict[str, str]:
        """Environment for both workers and producers."""
        return {"BENCH_RESULTS": "1" if results else "0", "BENCH_REDIS_URL": REDIS_URL}

    # -- producer side -------------------------------------------------------------------

    def connect(self, *, results: bool) -> Awaitable[None] | None:
        return None

    def close(self) -> Awaitable[None] | None:
        return None

    def enqueue_one(self, n: int, kind: str) -> Awaitable[None] | None:
        """n tasks, each publish awaited before the next."""
        raise NotApplicable("no single-task publish")

    def enqueue_concurrent(self, n: int, kind: str) -> Awaitable[None] | None:
        """n publishes in flight at once (asyncio.gather)."""
        raise NotApplicable("no asyncio API: publishing blocks the calling thread")

    def enqueue_bulk(self, n: int, kind: str) -> Awaitable[None] | None:
        """n tasks through the library's own bulk/group publish."""
        raise NotApplicable("no bulk publish API")

    def round_trip(self) -> Awaitable[Any] | Any:
        """Publish one no-op task and wait for its stored result."""
        raise NotApplicable("no result API")


def sleep_seconds() -> float:
    return IO_SLEEP
