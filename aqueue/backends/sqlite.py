"""``sqlite://`` result backend: records in the broker's file, fenced by attempt.

Table ``aq_results`` holds one row per task id. :meth:`SQLiteBackend.store` reads the stored
row and applies :func:`aqueue.core.states.supersedes` inside the same ``BEGIN IMMEDIATE``
transaction, so two processes cannot both pass the check. Every write gives the row a new
``version``; watchers in any process notice it by polling, watchers in this process are
woken at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aqueue.core.errors import BackendError
from aqueue.core.states import supersedes
from aqueue.transports.sqlite.registry import TABLE as REGISTRY_TABLE
from aqueue.transports.sqlite.registry import SQLiteRegistry
from aqueue.transports.sqlite.store import SQLiteStore

log = logging.getLogger("aqueue.backend.sqlite")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aq_results (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        record BLOB NOT NULL,
        expires_at REAL,
        version INTEGER NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS aq_results_expiry
        ON aq_results (expires_at) WHERE expires_at IS NOT NULL""",
    # chord members (idempotent set) and the fire-once marker; expired rows are swept by join
    """CREATE TABLE IF NOT EXISTS aq_chord_members (
        chord_id TEXT NOT NULL,
        member_id TEXT NOT NULL,
        expires_at REAL,
        PRIMARY KEY (chord_id, member_id)
    )""",
    """CREATE TABLE IF NOT EXISTS aq_chord_fired (
        chord_id TEXT PRIMARY KEY,
        expires_at REAL
    )""",
    REGISTRY_TABLE,
)

_CURRENT = "SELECT state, attempt, expires_at, version FROM aq_results WHERE id = ?"
_PUT = (
    "INSERT OR REPLACE INTO aq_results (id, state, attempt, record, expires_at, version)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_GET = "SELECT record, version, expires_at FROM aq_results WHERE id = ?"
_FORGET = "DELETE FROM aq_results WHERE id = ?"
_SWEEP_BATCH = 500
_SWEEP = (
    "DELETE FROM aq_results WHERE rowid IN (SELECT rowid FROM aq_results"
    " WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)"
)
# Well under SQLite's limit on bound parameters (32766).
_CHUNK = 500


class _Watcher:
    """One ``watch()`` generator: an event, set from its own loop's thread only."""

    __slots__ = ("event", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def wake(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.event.set()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                self.loop.call_soon_threadsafe(self.event.set)


class SQLiteBackend:
    """Result backend on a SQLite file; the same URL as the broker shares its file.

    Args:
        url: ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.
        **options: ``busy_timeout`` (5) and ``lock_timeout`` (60) as for the broker,
            ``poll_interval`` (seconds between checks for writes by other processes while
            someone watches, 0.025), ``sweep_interval`` (seconds between deletions of
            expired rows, 60).
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self._poll_interval = float(options.pop("poll_interval", 0.025))
        self._sweep_interval = float(options.pop("sweep_interval", 60.0))
        self._store = SQLiteStore.for_url(
            url, SCHEMA, options, error=BackendError, logger=log, owner="SQLiteBackend"
        )
        self.path = self._store.path
        # the worker registry, for a broker that keeps none (RabbitMQ): lists workers and
        # marks lost ones; their messages come back when their broker connection drops
        #: its worker registry (:class:`~aqueue.core.protocols.KeepsWorkers`)
        self.worker_registry = SQLiteRegistry(self._store)
        self._watchers: dict[str, set[_Watcher]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._next_sweep = 0.0
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLiteBackend {self.path}>"

    async def connect(self) -> None:
        """Open the file (WAL mode) and create the table; idempotent."""
        self._closed = False
        await self._store.open()

    async def close(self) -> None:
        """Stop polling, end every ``watch()`` with BackendError, close; idempotent."""
        self._closed = True
        poller, self._poller = self._poller, None
        if poller is not None and not poller.done():
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        self._wake_all()
        await self._store.close()

    async def store(
        self, task_id: str, record: bytes, *, state: str, attempt: int, ttl: float | None
    ) -> bool:
        """Store ``record`` unless a later attempt, or a final state of this one, is stored.

        Returns:
            Whether it was stored. Watchers are woken when it was.
        """
        sweep = time.time() >= self._next_sweep
        if sweep:
            self._next_sweep = time.time() + self._sweep_interval

        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            if sweep:
                # Lazily, in small bites: expired rows are already invisible to readers.
                conn.execute(_SWEEP, (now, _SWEEP_BATCH))
            row = conn.execute(_CURRENT, (task_id,)).fetchone()
            version = time.time_ns()
            if row is not None:
                stored_state, stored_attempt, expires_at, stored_version = row
                live = expires_at is None or expires_at > now
                if live and not supersedes(attempt, stored_attempt, stored_state):
                    return False
                # Strictly newer even if the clock stepped back, so watchers see a change.
                version = max(version, stored_version + 1)
            expires = None if ttl is None else now + ttl
            conn.execute(_PUT, (task_id, state, attempt, record, expires, version))
            return True

        stored = await self._store.write(op)
        if stored:
            self._wake(task_id)
        else:
            log.info("refused a %s record for %s from attempt %d (fenced)", state, task_id, attempt)
        return stored

    async def get(self, task_id: str) -> bytes | None:
        """The stored record, or ``None`` if absent or expired."""
        found = await self._store.read(_get_op(task_id))
        return None if found is None else found[0]

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """The stored records of ``task_ids`` (``None`` where absent or expired)."""
        if not task_ids:
            return []
        found = await self._store.read(_get_many_op(list(task_ids)))
        return [found.get(t) for t in task_ids]

    async def watch(self, task_id: str) -> AsyncIterator[bytes]:
        """Yield the stored record (if any), then each newer one.

        Records stored in quick succession may be coalesced: a watcher always sees the latest,
        not necessarily every one in between.

        Raises:
            BackendError: when the backend is closed while watching.
        """
        watcher = _Watcher()
        # Registered before the first read, so a store in between is not missed.
        self._watchers.setdefault(task_id, set()).add(watcher)
        self._ensure_poller()
        read = _get_op(task_id)
        last: int | None = None
        try:
            while True:
                watcher.event.clear()
                if self._closed:
                    raise BackendError(f"{self!r} was closed while watching {task_id}")
                found = await self._store.read(read)
                if found is None:
                    last = None  # forgotten or expired: a later store is new again
                elif found[1] != last:
                    last = found[1]
                    yield found[0]
                await watcher.event.wait()
        finally:
            watchers = self._watchers.get(task_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[task_id]

    async def chord_join(
        self, chord_id: str, member_id: str, size: int, *, failed: bool, ttl: float | None
    ) -> bool:
        """Add a member to the chord's set; ``True`` for the one call that fires it."""
        expires = None if ttl is None else time.time() + ttl

        def op(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "INSERT OR IGNORE INTO aq_chord_members (chord_id, member_id, expires_at)"
                " VALUES (?, ?, ?)",
                (chord_id, member_id, expires),
            )
            if not failed:
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM aq_chord_members WHERE chord_id = ?", (chord_id,)
                ).fetchone()
                if count < size:
                    return False
            fired = conn.execute(
                "INSERT OR IGNORE INTO aq_chord_fired (chord_id, expires_at) VALUES (?, ?)",
                (chord_id, expires),
            ).rowcount
            if fired:  # the chord is settled: its member rows are no longer needed
                conn.execute("DELETE FROM aq_chord_members WHERE chord_id = ?", (chord_id,))
                conn.execute(
                    "DELETE FROM aq_chord_fired WHERE expires_at IS NOT NULL AND expires_at < ?",
                    (time.time(),),
                )
            return bool(fired)

        return await self._store.write(op)

    async def forget(self, task_id: str) -> None:
        """Delete the record."""
        await self._store.write(lambda conn: conn.execute(_FORGET, (task_id,)).rowcount)
        self._wake(task_id)

    def _wake(self, task_id: str) -> None:
        for watcher in list(self._watchers.get(task_id, ())):
            watcher.wake()

    def _wake_all(self) -> None:
        for watchers in list(self._watchers.values()):
            for watcher in list(watchers):
                watcher.wake()

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name=f"aqueue-sqlite-results-{self.path}"
            )

    async def _poll(self) -> None:
        """While anyone watches: notice writes by other connections, wake their watchers.

        One task per backend, one cheap read per tick (``PRAGMA data_version``), and one
        batched version query only when another connection has committed.
        """
        known: dict[str, int | None] = {}
        version: int | None = None
        while self._watchers and not self._closed:
            ids = list(self._watchers)
            fresh = [i for i in ids if i not in known]
            try:
                version, found = await self._store.read(_versions_op(ids, fresh, version))
            except BackendError as exc:
                log.warning("polling %s for results failed: %s", self.path, exc)
                await asyncio.sleep(self._poll_interval * 10)
                continue
            for task_id, seen in found.items():
                # A first sighting always wakes: the watcher's own read may predate a write.
                if task_id not in known or known[task_id] != seen:
                    known[task_id] = seen
                    self._wake(task_id)
            if len(known) > len(self._watchers):
                known = {i: v for i, v in known.items() if i in self._watchers}
            await asyncio.sleep(self._poll_interval)


def _get_op(task_id: str) -> Callable[[sqlite3.Connection], tuple[bytes, int] | None]:
    def op(conn: sqlite3.Connection) -> tuple[bytes, int] | None:
        row = conn.execute(_GET, (task_id,)).fetchone()
        if row is None or (row[2] is not None and row[2] <= time.time()):
            return None
        return row[0], row[1]

    return op


def _get_many_op(ids: list[str]) -> Callable[[sqlite3.Connection], dict[str, bytes]]:
    def op(conn: sqlite3.Connection) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        now = time.time()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT id, record, expires_at FROM aq_results WHERE id IN ({marks})",  # noqa: S608
                chunk,
            )
            for task_id, record, expires_at in rows:
                if expires_at is None or expires_at > now:
                    out[task_id] = record
        return out

    return op


def _versions_op(
    ids: list[str], fresh: list[str], version: int | None
) -> Callable[[sqlite3.Connection], tuple[int, dict[str, int | None]]]:
    """Current versions of ``ids`` if anyone committed since ``version``, else of ``fresh``."""

    def op(conn: sqlite3.Connection) -> tuple[int, dict[str, int | None]]:
        seen: int = conn.execute("PRAGMA data_version").fetchone()[0]
        targets = ids if seen != version else fresh
        found: dict[str, int | None] = dict.fromkeys(targets)
        now = time.time()
        for start in range(0, len(targets), _CHUNK):
            chunk = targets[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, version, expires_at FROM aq_results WHERE id IN ({marks})"  # noqa: S608
            for task_id, row_version, expires_at in conn.execute(sql, chunk):
                if expires_at is None or expires_at > now:
                    found[task_id] = row_version
        return seen, found

    return op
