"""The SQLite broker's :class:`~aqueue.core.protocols.Topics`: one table, ``aq_topics``.

Every message of every topic is a row ``(seq, topic, at, body)``; ``seq`` is
``AUTOINCREMENT``, so it only grows, and a row committed later always has a larger one
(SQLite has one writer at a time). A subscription remembers the last ``seq`` it read and
looks for larger ones of its topic: an index seek on ``(topic, seq)``. A publish inserts
its rows and trims the topic to its cap in the same transaction; reply topics'
rows older than a minute are deleted by publishes (at most once a second per process).

SQLite cannot notify another process (the CLI and the workers are separate processes), so
a waiting subscription polls every ``poll`` seconds (0.1 by default); a publish in the
same process wakes it at once. Reads and writes go through the broker's
:class:`~aqueue.transports.sqlite.store.SQLiteStore`, on its thread.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from aqueue.core.errors import SubscriptionClosed
from aqueue.core.protocols import REPLY_TOPIC_PREFIX
from aqueue.transports.sqlite.store import SQLiteStore

from .wakeup import Wakeup

__all__ = ["REPLY_TTL", "SCHEMA", "SQLiteSubscription", "SQLiteTopics"]

#: seconds a reply topic's rows are kept
REPLY_TTL = 60.0
#: how often (seconds at most) a process deletes the old rows of reply topics
_SWEEP_EVERY = 1.0
#: rows read per ``get`` at most (a subscriber far behind catches up in several)
_READ_LIMIT = 1000

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aq_topics (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        at REAL NOT NULL,
        body BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS aq_topics_topic ON aq_topics (topic, seq)",
)

_INSERT = "INSERT INTO aq_topics (topic, at, body) VALUES (?, ?, ?)"
# every row of the topic up to the newest one beyond the cap
_TRIM = (
    "DELETE FROM aq_topics WHERE topic = :topic AND seq <= (SELECT seq FROM aq_topics"
    " WHERE topic = :topic ORDER BY seq DESC LIMIT 1 OFFSET :cap)"
)
# reply topics are the index range ['reply.', 'reply/') ('/' follows '.')
_SWEEP = "DELETE FROM aq_topics WHERE topic >= ? AND topic < ? AND at < ?"
_REPLY_RANGE = (REPLY_TOPIC_PREFIX, REPLY_TOPIC_PREFIX[:-1] + chr(ord(REPLY_TOPIC_PREFIX[-1]) + 1))
_NEWEST = "SELECT MAX(seq) FROM aq_topics WHERE topic = ?"
_FIRST_SINCE = "SELECT MIN(seq) FROM aq_topics WHERE topic = ? AND at >= ?"
_READ = "SELECT seq, body FROM aq_topics WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?"


class SQLiteTopics:
    """Topics of one SQLite broker's file.

    Args:
        store: the broker's store (its thread, its transactions).
        poll: seconds between looks while a subscription waits.
    """

    def __init__(self, store: SQLiteStore, poll: float = 0.1) -> None:
        self._store = store
        self._poll = poll
        self._wakeup = Wakeup()
        self._swept = 0.0
        self._open: set[SQLiteSubscription] = set()

    async def publish(self, topic: str, bodies: Sequence[bytes], *, cap: int) -> None:
        """Insert ``bodies`` and trim ``topic`` to ``cap`` rows, in one transaction."""
        if not bodies:
            return
        rows = [(topic, time.time(), body) for body in bodies]
        trim = {"topic": topic, "cap": max(cap, 1)}
        sweep = time.monotonic() - self._swept >= _SWEEP_EVERY
        if sweep:
            self._swept = time.monotonic()

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT, rows)
            conn.execute(_TRIM, trim)
            if sweep:
                conn.execute(_SWEEP, (*_REPLY_RANGE, time.time() - REPLY_TTL))

        await self._store.write(op)
        self._wakeup.notify()

    async def subscribe(self, topic: str, *, since: float | None = None) -> SQLiteSubscription:
        """Note the topic's newest ``seq`` now (or the one before the first row at or after
        ``since``, when there is one)."""

        def op(conn: sqlite3.Connection) -> int:
            if since is not None:
                first = conn.execute(_FIRST_SINCE, (topic, since)).fetchone()[0]
                if first is not None:
                    return int(first) - 1
            newest = conn.execute(_NEWEST, (topic,)).fetchone()[0]
            return 0 if newest is None else int(newest)

        after = await self._store.read(op)
        sub = SQLiteSubscription(self._store, self._wakeup, topic, after, self._poll)
        self._open.add(sub)
        sub.on_close = self._open.discard
        return sub

    async def close(self) -> None:
        """Close the subscriptions still open (the broker is closing: a poll after that
        would open the file again)."""
        for sub in list(self._open):
            await sub.close()
        self._wakeup.notify()


class SQLiteSubscription:
    """A reader of one topic: the last ``seq`` it read, and a poll while it waits."""

    def __init__(
        self, store: SQLiteStore, wakeup: Wakeup, topic: str, after: int, poll: float
    ) -> None:
        self._store = store
        self._wakeup = wakeup
        self._topic = topic
        self._after = after
        self._poll = poll
        self._closed = False
        #: called once, by :meth:`close`
        self.on_close: Callable[[SQLiteSubscription], None] | None = None

    async def get(self, timeout: float) -> list[bytes]:
        """The next messages (at most 1000), or ``[]`` after ``timeout`` seconds of none."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed:
            rows = await self._store.read(partial(_read, (self._topic, self._after, _READ_LIMIT)))
            if rows:
                self._after = int(rows[-1][0])
                return [bytes(body) for _, body in rows]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            await self._wakeup.wait(min(left, self._poll))
        raise SubscriptionClosed(f"the subscription to topic {self._topic!r} is closed")

    async def close(self) -> None:
        """Stop reading (it holds nothing else); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.notify()  # a get waiting in this process returns now
        if self.on_close is not None:
            self.on_close(self)


def _read(params: tuple[str, int, int], conn: sqlite3.Connection) -> list[Any]:
    return conn.execute(_READ, params).fetchall()
