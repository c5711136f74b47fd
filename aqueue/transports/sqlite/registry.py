"""A worker registry in a SQLite file (:class:`~aqueue.core.protocols.WorkerRegistry`),
shared by the SQLite broker (which also hands back a lost worker's claimed rows, by their
``owner``) and the SQLite result backend (which holds the registry for a broker that keeps
none: RabbitMQ).

One row per worker in ``aq_workers``: its info (JSON), last heartbeat, how many leases it
held, whether a live worker found it lost, and when the row is dropped if no beat comes.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence

import msgspec

from aqueue.core.protocols import Lease, WorkerInfo, WorkerSeen

from .store import SQLiteStore

log = logging.getLogger("aqueue.sqlite.registry")

TABLE = """CREATE TABLE IF NOT EXISTS aq_workers (
    id TEXT PRIMARY KEY,
    info BLOB NOT NULL,
    seen REAL NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    keep_until REAL NOT NULL
)"""

_BEAT = (
    "INSERT INTO aq_workers (id, info, seen, held, lost, keep_until) VALUES (?, ?, ?, ?, 0, ?)"
    " ON CONFLICT (id) DO UPDATE SET info = excluded.info, seen = excluded.seen,"
    " held = excluded.held, lost = 0, keep_until = excluded.keep_until"
)
_LAPSED = "SELECT id FROM aq_workers WHERE lost = 0 AND seen < ?"
_MARK_LOST = "UPDATE aq_workers SET lost = 1 WHERE id = ?"
_DROP = "DELETE FROM aq_workers WHERE keep_until < ?"
_LEAVE = "DELETE FROM aq_workers WHERE id = ?"
_WORKERS = "SELECT info, seen, held, lost FROM aq_workers ORDER BY id"

#: hands back the rows a lost worker (by id) had claimed, in the reap's transaction
Release = Callable[[sqlite3.Connection, str], int]


class SQLiteRegistry:
    """The registry's reads and writes on ``store`` (blocking ones on its side connection)."""

    def __init__(self, store: SQLiteStore, release: Release | None = None) -> None:
        self._store = store
        self._release = release

    def beat(self, info: WorkerInfo, leases: Sequence[Lease], keep: float) -> None:
        """Upsert the worker's row (claims store their owner: the leases are only counted)."""
        now = time.time()
        row = (info.id, msgspec.json.encode(info), now, len(leases), now + keep)
        self._store.side(lambda conn: conn.execute(_BEAT, row))

    def reap(self, lost_after: float) -> list[str]:
        """Mark workers silent for ``lost_after`` seconds lost and hand back what they had
        claimed, in one transaction (so exactly one reaper does it)."""

        def op(conn: sqlite3.Connection) -> tuple[list[str], int]:
            now = time.time()
            conn.execute(_DROP, (now,))
            lapsed = [row[0] for row in conn.execute(_LAPSED, (now - lost_after,))]
            released = 0
            for worker_id in lapsed:
                conn.execute(_MARK_LOST, (worker_id,))
                if self._release is not None:
                    released += self._release(conn, worker_id)
            return lapsed, released

        lapsed, released = self._store.side(op)
        if lapsed:
            log.info("%d lost worker(s): %d message(s) handed back", len(lapsed), released)
        return lapsed

    def leave(self, worker_id: str) -> None:
        """Delete the worker's row."""
        self._store.side(lambda conn: conn.execute(_LEAVE, (worker_id,)))

    async def workers(self) -> list[WorkerSeen]:
        """Every row."""

        def op(conn: sqlite3.Connection) -> list[WorkerSeen]:
            return [
                WorkerSeen(msgspec.json.decode(info, type=WorkerInfo), seen, held, bool(lost))
                for info, seen, held, lost in conn.execute(_WORKERS)
            ]

        return await self._store.read(op)
