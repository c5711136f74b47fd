"""Schedules in the SQLite file of the app's result backend.

Two tables: ``aq_beat_entries`` (one row per app and entry: its spec, whether it comes from
code, paused, since when, and the leader's state) and ``aq_beat_apps`` (per app: the
version bumped on every change of an entry, and the lease: holder and expiry). Each
operation is one ``BEGIN IMMEDIATE`` transaction, so the lease check and the write it
guards cannot interleave with another process's. Lease expiry is read on the schedulers'
clocks: the processes sharing a SQLite file share a machine, and so its clock.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping

from aqueue.core.errors import BackendError
from aqueue.transports.sqlite.store import SQLiteStore

from .store import PutOutcome, RemoveOutcome, Snapshot, StoredEntry

__all__ = ["SQLiteBeatStore"]

log = logging.getLogger("aqueue.beat")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aq_beat_entries (
        app TEXT NOT NULL,
        name TEXT NOT NULL,
        spec BLOB NOT NULL,
        code INTEGER NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        since INTEGER NOT NULL,
        state BLOB,
        PRIMARY KEY (app, name)
    )""",
    """CREATE TABLE IF NOT EXISTS aq_beat_apps (
        app TEXT PRIMARY KEY,
        version INTEGER NOT NULL DEFAULT 0,
        holder TEXT,
        expires_at REAL
    )""",
)

_ENSURE_APP = "INSERT OR IGNORE INTO aq_beat_apps (app, version) VALUES (?, 0)"
_BUMP = "UPDATE aq_beat_apps SET version = version + 1 WHERE app = ?"
_ENTRY = "SELECT spec, code, paused FROM aq_beat_entries WHERE app = ? AND name = ?"
_DELETE = "DELETE FROM aq_beat_entries WHERE app = ? AND name = ?"


class SQLiteBeatStore:
    """A :class:`~aqueue.beat.store.BeatStore` in a SQLite file (the backend's URL)."""

    def __init__(self, url: str, app_name: str) -> None:
        self._store = SQLiteStore.for_url(
            url, SCHEMA, {}, error=BackendError, logger=log, owner="beat store"
        )
        self._app = app_name

    def __repr__(self) -> str:
        return f"<SQLiteBeatStore {self._store.path} app={self._app!r}>"

    async def connect(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def acquire(self, holder: str, seconds: float, now: float) -> bool:
        app = self._app

        def op(conn: sqlite3.Connection) -> bool:
            conn.execute(_ENSURE_APP, (app,))
            taken = conn.execute(
                "UPDATE aq_beat_apps SET holder = ?, expires_at = ? WHERE app = ? AND "
                "(holder IS NULL OR holder = ? OR expires_at <= ?)",
                (holder, now + seconds, app, holder, now),
            )
            return taken.rowcount == 1

        return await self._store.write(op)

    async def release(self, holder: str) -> None:
        app = self._app

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE aq_beat_apps SET holder = NULL, expires_at = NULL "
                "WHERE app = ? AND holder = ?",
                (app, holder),
            )

        await self._store.write(op)

    async def version(self) -> int:
        app = self._app

        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT version FROM aq_beat_apps WHERE app = ?", (app,)).fetchone()
            return int(row[0]) if row else 0

        return await self._store.read(op)

    async def snapshot(self) -> Snapshot:
        app = self._app

        def op(conn: sqlite3.Connection) -> Snapshot:
            conn.execute("BEGIN")  # one consistent read of both tables
            try:
                head = conn.execute(
                    "SELECT version, holder, expires_at FROM aq_beat_apps WHERE app = ?", (app,)
                ).fetchone()
                rows = conn.execute(
                    "SELECT name, spec, code, paused, since, state FROM aq_beat_entries "
                    "WHERE app = ?",
                    (app,),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            entries = {
                name: StoredEntry(bytes(spec), bool(code), bool(paused), int(since), state)
                for name, spec, code, paused, since, state in rows
            }
            version, holder = (int(head[0]), head[1]) if head else (0, None)
            return Snapshot(version, entries, holder)

        return await self._store.read(op)

    async def sync_code(self, specs: Mapping[str, bytes], since: int) -> list[str]:
        app = self._app
        wanted = dict(specs)

        def op(conn: sqlite3.Connection) -> list[str]:
            conn.execute(_ENSURE_APP, (app,))
            changed: list[str] = []
            stored = {
                name: (bytes(spec), bool(code))
                for name, spec, code in conn.execute(
                    "SELECT name, spec, code FROM aq_beat_entries WHERE app = ?", (app,)
                )
            }
            for name, (_, code) in stored.items():
                if code and name not in wanted:
                    conn.execute(_DELETE, (app, name))
                    changed.append(name)
            for name, spec in wanted.items():
                old = stored.get(name)
                if old is None:
                    conn.execute(
                        "INSERT INTO aq_beat_entries (app, name, spec, code, since) "
                        "VALUES (?, ?, ?, 1, ?)",
                        (app, name, spec, since),
                    )
                elif old != (spec, True):
                    conn.execute(
                        "UPDATE aq_beat_entries SET spec = ?, code = 1 WHERE app = ? AND name = ?",
                        (spec, app, name),
                    )
                else:
                    continue
                changed.append(name)
            if changed:
                conn.execute(_BUMP, (app,))
            return changed

        return await self._store.write(op)

    async def put(self, name: str, spec: bytes, since: int, *, replace: bool) -> PutOutcome:
        app = self._app

        def op(conn: sqlite3.Connection) -> PutOutcome:
            conn.execute(_ENSURE_APP, (app,))
            row = conn.execute(_ENTRY, (app, name)).fetchone()
            if row is not None and row[1]:
                return "code"
            if row is not None and not replace:
                return "exists"
            if row is None:
                conn.execute(
                    "INSERT INTO aq_beat_entries (app, name, spec, code, since) "
                    "VALUES (?, ?, ?, 0, ?)",
                    (app, name, spec, since),
                )
            else:
                conn.execute(
                    "UPDATE aq_beat_entries SET spec = ? WHERE app = ? AND name = ?",
                    (spec, app, name),
                )
            conn.execute(_BUMP, (app,))
            return "added" if row is None else "replaced"

        return await self._store.write(op)

    async def remove(self, name: str) -> RemoveOutcome:
        app = self._app

        def op(conn: sqlite3.Connection) -> RemoveOutcome:
            row = conn.execute(_ENTRY, (app, name)).fetchone()
            if row is None:
                return "missing"
            if row[1]:
                return "code"
            conn.execute(_DELETE, (app, name))
            conn.execute(_BUMP, (app,))
            return "removed"

        return await self._store.write(op)

    async def set_paused(self, name: str, paused: bool) -> bool:
        app = self._app

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(_ENTRY, (app, name)).fetchone()
            if row is None:
                return False
            if bool(row[2]) != paused:
                conn.execute(
                    "UPDATE aq_beat_entries SET paused = ? WHERE app = ? AND name = ?",
                    (int(paused), app, name),
                )
                conn.execute(_BUMP, (app,))
            return True

        return await self._store.write(op)

    async def record(self, holder: str, name: str, state: bytes, now: float) -> bool:
        app = self._app

        def op(conn: sqlite3.Connection) -> bool:
            stored = conn.execute(
                "UPDATE aq_beat_entries SET state = ? WHERE app = ? AND name = ? AND EXISTS "
                "(SELECT 1 FROM aq_beat_apps WHERE app = ? AND holder = ? AND expires_at > ?)",
                (state, app, name, app, holder, now),
            )
            return stored.rowcount == 1

        return await self._store.write(op)
