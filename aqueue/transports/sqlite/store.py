"""One SQLite file, as the ``sqlite://`` broker and result backend both use it.

One :class:`SQLiteStore` owns one file's connection and the single thread that uses it, so
the event loop never blocks on SQLite. Writes submitted while the thread is busy are
committed together in one ``BEGIN IMMEDIATE`` transaction (group commit): many concurrent
acks or result stores cost one lock round and one WAL append instead of one each. A second,
lock-guarded connection serves blocking callers on other threads (lease renewal).

"database is locked" never loses work: SQLite's own busy handler waits ``busy_timeout``,
and past that the whole transaction is retried with backoff until ``lock_timeout``; only
then does the caller get an error, and nothing was written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aqueue.core.errors import AqueueError, ConfigurationError
from aqueue.core.urls import redact

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_URL_FORMS = "sqlite:///relative/path.db or sqlite:////absolute/path.db"


def sqlite_path(url: str) -> str:
    """The absolute file path named by a ``sqlite://`` URL (SQLAlchemy's convention).

    ``sqlite:///data/aq.db`` is relative to the current directory (resolved now, so a later
    ``chdir`` does not move the queue) and ``sqlite:////var/lib/aq.db`` is absolute.

    Raises:
        ConfigurationError: for any other form, including in-memory databases, which other
            processes (and the renewal connection) could not see.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme.lower() != "sqlite"
        or parts.netloc
        or parts.query
        or parts.fragment
        or not parts.path.startswith("/")
        or len(parts.path) < 2
    ):
        raise ConfigurationError(
            f"bad SQLite URL {redact(url)!r}: use {_URL_FORMS} (three slashes and a relative "
            "path, or four slashes and an absolute one)"
        )
    path = parts.path[1:]
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigurationError(
            f"{redact(url)!r}: an in-memory SQLite database cannot be shared between "
            f"connections; use memory:// or a file, {_URL_FORMS}"
        )
    return os.path.abspath(path)


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means another connection holds a lock (worth retrying)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SQLiteStore:
    """One SQLite file: a connection on a dedicated thread, plus one for other threads.

    Args:
        path: absolute file path.
        schema: ``CREATE ... IF NOT EXISTS`` statements, run once per connection.
        columns: ``(table, column, type)`` added to a table made before the column was in
            its ``CREATE`` statement (in the same transaction as the schema).
        error: the exception class callers see (BrokerError or BackendError).
        logger: where to report retries and odd setups.
        busy_timeout: seconds SQLite itself waits for a lock before reporting busy.
        lock_timeout: seconds a transaction is retried while the file stays locked.
    """

    @classmethod
    def for_url(
        cls,
        url: str,
        schema: Sequence[str],
        options: dict[str, Any],
        *,
        columns: Sequence[tuple[str, str, str]] = (),
        error: type[AqueueError],
        logger: logging.Logger,
        owner: str,
    ) -> SQLiteStore:
        """The store of a ``sqlite://`` URL, with ``busy_timeout`` and ``lock_timeout``
        taken from ``options``; whatever is left there is ignored (logged at debug level).

        ``owner`` (the broker or backend class name) is only for that log line.
        """
        store = cls(
            sqlite_path(url),
            schema,
            columns=columns,
            error=error,
            logger=logger,
            busy_timeout=float(options.pop("busy_timeout", 5.0)),
            lock_timeout=float(options.pop("lock_timeout", 60.0)),
        )
        if options:
            logger.debug("%s ignores options %s", owner, sorted(options))
        return store

    def __init__(
        self,
        path: str,
        schema: Sequence[str],
        *,
        columns: Sequence[tuple[str, str, str]] = (),
        error: type[AqueueError],
        logger: logging.Logger,
        busy_timeout: float = 5.0,
        lock_timeout: float = 60.0,
    ) -> None:
        self.path = path
        self._schema = tuple(schema)
        self._columns = tuple(columns)
        self._error = error
        self._log = logger
        self._busy_timeout = busy_timeout
        self._lock_timeout = lock_timeout
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._opened: concurrent.futures.Future[None] | None = None
        # The main connection lives in its thread's locals: a store reopened after close()
        # gets a new thread, and the old thread's jobs can only ever see the old connection.
        self._local = threading.local()
        # Group commit: writes queue here; at most one flush job waits in the executor.
        self._pending_lock = threading.Lock()
        self._pending: list[_Write] = []
        self._flush_queued = False
        # The connection for blocking callers on other threads (renew).
        self._side_lock = threading.Lock()
        self._side: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self) -> concurrent.futures.ThreadPoolExecutor:
        """Start the thread and queue the open job; later jobs run after it (FIFO)."""
        if self._opened is not None and self._opened.done() and self._opened.exception():
            # The last open failed (file missing, permissions): try again from scratch.
            assert self._executor is not None
            self._executor.shutdown(wait=False)
            self._executor = self._opened = None
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"aqueue-sqlite-{os.path.basename(self.path)}"
            )
            self._opened = self._executor.submit(self._open_main)
        return self._executor

    async def open(self) -> None:
        """Open the connection and create the tables; idempotent."""
        self._start()
        assert self._opened is not None
        await asyncio.wrap_future(self._opened)

    async def close(self) -> None:
        """Finish queued work, then close both connections; idempotent."""
        executor, self._executor, self._opened = self._executor, None, None
        if executor is not None:
            try:
                await asyncio.wrap_future(executor.submit(self._close_main))
            finally:
                executor.shutdown(wait=False)
        with self._side_lock:
            side, self._side = self._side, None
        if side is not None:
            side.close()

    def _open_main(self) -> None:
        self._local.conn = self._connect()

    def _close_main(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # the side connection moves between threads
                cached_statements=128,
            )
        except sqlite3.Error as exc:
            raise self._error(f"cannot open SQLite file {self.path}: {exc}") from exc
        try:
            # Switching to WAL needs a moment alone with the file; many processes starting
            # at once may find it busy, hence the retry.
            mode = self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                self._log.warning("SQLite file %s is not in WAL mode (%s)", self.path, mode)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._retry(lambda: self._transaction(conn, [self._create_schema]))
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        for statement in self._schema:
            conn.execute(statement)
        for table, column, kind in self._columns:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    # -- running statements ------------------------------------------------------------------

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` on the connection's thread, outside any explicit transaction."""
        executor = self._start()
        fut = executor.submit(self._run_read, op)
        return await asyncio.wrap_future(fut)

    def _run_read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._main()
        return self._retry(lambda: op(conn))

    async def write(
        self,
        op: Callable[[sqlite3.Connection], T],
        orphan: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``op`` inside a write transaction, possibly shared with other queued writes.

        Args:
            op: only touches the database (it may run again after a rollback).
            orphan: called on the loop with the result if the caller was cancelled while
                ``op`` committed anyway, to undo what nobody will see (claimed leases).
        """
        executor = self._start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._pending_lock:
            self._pending.append(_Write(op, loop, fut, orphan))
            submit = not self._flush_queued
            self._flush_queued = True
        if submit:
            executor.submit(self._flush)
        try:
            return await fut
        except asyncio.CancelledError:
            # Cancelled after the result arrived: _settle will not see it as orphaned.
            if orphan is not None and fut.done() and not fut.cancelled() and not fut.exception():
                orphan(fut.result())
            raise

    def _flush(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._flush_queued = False
        try:
            conn = self._main()
            values = self._retry(lambda: self._transaction(conn, [w.op for w in batch]))
            for w, value in zip(batch, values, strict=True):
                w.ok, w.value = True, value
        except Exception as exc:
            if len(batch) == 1 or _lock_exhausted(exc):
                for w in batch:
                    w.value = exc
            else:
                # One op failed for its own reasons: run each alone so the others still land.
                for w in batch:
                    self._run_alone(w)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Write]] = {}
        for w in batch:
            by_loop.setdefault(w.loop, []).append(w)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, items)

    def _run_alone(self, w: _Write) -> None:
        try:
            conn = self._main()
            w.value = self._retry(lambda: self._transaction(conn, [w.op]))[0]
            w.ok = True
        except Exception as exc:
            w.value = exc

    def side(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in a write transaction on the side connection. Blocking, thread-safe."""
        with self._side_lock:
            if self._side is None:
                self._side = self._connect()
            conn = self._side
            result: T = self._retry(lambda: self._transaction(conn, [op]))[0]
            return result

    def _main(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Only reachable on the store's thread after close() ran or open failed.
            raise self._error(f"SQLite file {self.path} is not open (see the earlier error)")
        return conn

    @staticmethod
    def _transaction(conn: sqlite3.Connection, ops: Sequence[Op]) -> list[Any]:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades
        # can fail with SQLITE_BUSY without the busy handler ever waiting.
        conn.execute("BEGIN IMMEDIATE")
        try:
            values = [op(conn) for op in ops]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the transaction already died
                    conn.execute("ROLLBACK")
            raise
        return values

    def _retry(self, call: Callable[[], T]) -> T:
        """``call()``, retried with jittered backoff while the file is locked."""
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.002
        attempts = 0
        while True:
            try:
                return call()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise self._error(f"SQLite error on {self.path}: {exc}") from exc
                attempts += 1
                if time.monotonic() + delay > deadline:
                    raise self._error(
                        f"SQLite file {self.path} stayed locked for {self._lock_timeout:g} s "
                        f"({attempts} attempts); nothing was written"
                    ) from exc
                if attempts == 1 or attempts % 20 == 0:
                    self._log.debug("SQLite file %s busy (%s); retrying", self.path, exc)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.1)
            except sqlite3.Error as exc:
                raise self._error(f"SQLite error on {self.path}: {exc}") from exc


def _lock_exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` is the give-up after ``lock_timeout`` (retrying ops alone won't help)."""
    cause = exc.__cause__
    return isinstance(cause, sqlite3.OperationalError) and is_busy(cause)


class _Write:
    """One queued write and, once run, its outcome."""

    __slots__ = ("fut", "loop", "ok", "op", "orphan", "value")

    def __init__(
        self,
        op: Op,
        loop: asyncio.AbstractEventLoop,
        fut: asyncio.Future[Any],
        orphan: Callable[[Any], None] | None,
    ) -> None:
        self.op = op
        self.loop = loop
        self.fut = fut
        self.orphan = orphan
        self.ok = False
        self.value: Any = None


def _settle(items: list[_Write]) -> None:
    for w in items:
        if w.fut.done():  # the caller was cancelled
            if w.ok and w.orphan is not None:
                w.orphan(w.value)
        elif w.ok:
            w.fut.set_result(w.value)
        else:
            w.fut.set_exception(w.value)
