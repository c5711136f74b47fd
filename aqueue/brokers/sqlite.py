"""``sqlite://``: the embedded broker, one file shared by any number of processes.

Every message is one row of ``aq_messages``. Whether a row can be claimed is read from
``lease_until`` alone, so both partial indexes stay small and every claim is an index seek:

* ``lease_until = 0``: ready (index ``aq_messages_ready``, by priority then due time);
* ``lease_until > 0`` and ``owner IS NULL``: delayed until ``lease_until``;
* ``lease_until > 0`` and ``owner`` set: claimed, leased until ``lease_until``.

Each claim first moves rows whose ``lease_until`` has passed (due delayed messages, expired
leases) back to ready, then takes the best ready rows in one ``UPDATE ... RETURNING``. Settling
matches on id *and* ``token``, a counter bumped by every claim and never reset, so a holder
whose lease was taken over cannot touch the message again. See ``docs/brokers/sqlite.md``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from aqueue.brokers.sqlite_topics import SCHEMA as TOPICS_SCHEMA
from aqueue.brokers.sqlite_topics import SQLiteTopics
from aqueue.brokers.wakeup import Wakeup
from aqueue.core.errors import BrokerError
from aqueue.core.protocols import (
    DEAD_LETTER_BODY_LIMIT,
    BaseDelivery,
    Capabilities,
    DeadLetter,
    Delivery,
    Lease,
    Outgoing,
)
from aqueue.transports.sqlite.registry import TABLE as REGISTRY_TABLE
from aqueue.transports.sqlite.registry import SQLiteRegistry
from aqueue.transports.sqlite.store import SQLiteStore

log = logging.getLogger("aqueue.broker.sqlite")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aq_messages (
        id TEXT PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        due REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0,
        owner TEXT,
        deliveries INTEGER NOT NULL DEFAULT 0,
        token INTEGER NOT NULL DEFAULT 0,
        body BLOB NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS aq_messages_ready
        ON aq_messages (queue, priority DESC, due) WHERE lease_until = 0""",
    """CREATE INDEX IF NOT EXISTS aq_messages_timed
        ON aq_messages (queue, lease_until) WHERE lease_until > 0""",
    # body: the message's first DEAD_LETTER_BODY_LIMIT bytes; size: its whole length (NULL
    # in rows written before bodies were cut, whose body is whole)
    """CREATE TABLE IF NOT EXISTS aq_dead_letters (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        queue TEXT NOT NULL,
        reason TEXT NOT NULL,
        body BLOB NOT NULL,
        at REAL NOT NULL,
        size INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS aq_dead_letters_at ON aq_dead_letters (at)",
    "CREATE INDEX IF NOT EXISTS aq_dead_letters_queue ON aq_dead_letters (queue, at)",
    REGISTRY_TABLE,
    *TOPICS_SCHEMA,
)

_INSERT = (
    "INSERT OR IGNORE INTO aq_messages (id, queue, priority, due, lease_until, body)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# Bounded so one claim never turns into a long transaction when many ETAs fall due at once.
_PROMOTE_BATCH = 1000
_PROMOTE = (
    "UPDATE aq_messages SET lease_until = 0 WHERE rowid IN (SELECT rowid FROM aq_messages"
    " WHERE queue = ? AND lease_until > 0 AND lease_until <= ? LIMIT ?)"
)
_CLAIM = (
    "UPDATE aq_messages SET lease_until = ?, owner = ?, deliveries = deliveries + 1,"
    " token = token + 1 WHERE rowid IN (SELECT rowid FROM aq_messages"
    " WHERE queue = ? AND lease_until = 0 ORDER BY priority DESC, due LIMIT ?)"
    " RETURNING id, body, deliveries, token, priority, due"
)
#: the ready row the next claim takes (the claim's own order): the fleet's metrics
_HEAD = (
    "SELECT body FROM aq_messages WHERE queue = ? AND lease_until = 0"
    " ORDER BY priority DESC, due LIMIT 1"
)
#: delayed rows (no owner) not yet due, by due time: ``inspect scheduled``
_SCHEDULED = (
    "SELECT lease_until, body FROM aq_messages WHERE queue = ? AND lease_until > ?"
    " AND owner IS NULL ORDER BY lease_until LIMIT ?"
)
_NEXT_TIMED = "SELECT MIN(lease_until) FROM aq_messages WHERE queue = ? AND lease_until > 0"
_ANY_READY = "SELECT 1 FROM aq_messages WHERE queue = ? AND lease_until = 0 LIMIT 1"
_ACK = "DELETE FROM aq_messages WHERE id = ? AND token = ?"
_RELEASE = (
    "UPDATE aq_messages SET lease_until = 0, owner = NULL,"
    " deliveries = MAX(deliveries - ?, 0) WHERE id = ? AND token = ?"
)
_REQUEUE = (
    "UPDATE aq_messages SET body = ?, due = ?, lease_until = ?, owner = NULL, deliveries = 0"
    " WHERE id = ? AND token = ?"
)
#: files made before aq_dead_letters had a size column get it (see SQLiteStore's columns)
COLUMNS = (("aq_dead_letters", "size", "INTEGER"),)
# the body's first bytes and its size (length() and substr() of a BLOB count bytes;
# substr() of an empty BLOB is NULL, hence only for bodies that are too long)
_DEAD = (
    "INSERT INTO aq_dead_letters (id, queue, reason, body, size, at)"
    " SELECT id, queue, :reason,"
    " CASE WHEN length(body) > :limit THEN substr(body, 1, :limit) ELSE body END,"
    " length(body), :at FROM aq_messages WHERE id = :id AND token = :token"
)
# owner IS NOT NULL: a released or requeued message has no holder left to renew it.
_RENEW = "UPDATE aq_messages SET lease_until = ? WHERE id = ? AND token = ? AND owner IS NOT NULL"
_SIZE = (
    "SELECT (SELECT COUNT(*) FROM aq_messages WHERE queue = ? AND lease_until = 0)"
    " + (SELECT COUNT(*) FROM aq_messages WHERE queue = ? AND lease_until > 0)"
)
_COUNT_IDS = "SELECT COUNT(*) FROM aq_messages WHERE queue = ? AND substr(id, -?) = ?"
_PURGE_READY = "DELETE FROM aq_messages WHERE queue = ? AND lease_until = 0"
# Delayed rows, and claimed rows whose lease has run out (no live holder).
_PURGE_TIMED = (
    "DELETE FROM aq_messages WHERE queue = ? AND lease_until > 0"
    " AND (owner IS NULL OR lease_until <= ?)"
)
_DEAD_ALL = (
    "SELECT id, queue, reason, body, at, COALESCE(size, length(body)) FROM aq_dead_letters"
    " ORDER BY at DESC, seq DESC LIMIT ?"
)
_DEAD_QUEUE = (
    "SELECT id, queue, reason, body, at, COALESCE(size, length(body)) FROM aq_dead_letters"
    " WHERE queue = ? ORDER BY at DESC, seq DESC LIMIT ?"
)

# a lost owner's claimed rows (delayed rows have no owner): ready again, the claim counted
_RELEASE_OWNER = (
    "UPDATE aq_messages SET lease_until = 0, owner = NULL WHERE owner = ? AND lease_until > 0"
)

_FIND_DEAD = (
    "SELECT seq FROM aq_dead_letters WHERE id = ? AND queue = ? AND at = ? AND reason = ?"
    " ORDER BY seq DESC LIMIT 1"
)
_QUEUED = "SELECT 1 FROM aq_messages WHERE id = ?"
_DROP_DEAD = "DELETE FROM aq_dead_letters WHERE seq = ?"
_PURGE_DEAD_ALL = "DELETE FROM aq_dead_letters"
_PURGE_DEAD_QUEUE = "DELETE FROM aq_dead_letters WHERE queue = ?"

#: claimed rows (queue, id, body, deliveries, token), next timed row, PRAGMA data_version
_ClaimResult = tuple[list[tuple[str, str, bytes, int, int]], float | None, int]


class SQLiteDelivery(BaseDelivery):
    """A message claimed from a :class:`SQLiteBroker`; settle it exactly one way."""

    __slots__ = ("_broker", "_settled")

    def __init__(
        self, broker: SQLiteBroker, queue: str, id: str, body: bytes, deliveries: int, token: int
    ) -> None:
        super().__init__(Lease(id, queue, token), body, deliveries)
        self._broker = broker
        self._settled = False

    async def ack(self) -> bool:
        """Delete the message. ``False`` if the lease had been taken over."""
        params = (self.id, self.lease.token)
        return await self._settle(lambda conn: conn.execute(_ACK, params).rowcount > 0)

    async def release(self, *, executed: bool) -> bool:
        """Make the message claimable at once.

        Args:
            executed: whether it started running; if not, this claim does not count towards
                the poison limit (the delivery count goes back down).
        """
        params = (0 if executed else 1, self.id, self.lease.token)
        return await self._settle(
            lambda conn: conn.execute(_RELEASE, params).rowcount > 0, wake=True
        )

    async def requeue(self, body: bytes, *, eta: float | None) -> bool:
        """Replace the body, due at ``eta`` (or now), with the delivery count reset to 0."""
        id_, token = self.id, self.lease.token

        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            due = now if eta is None else eta
            params = (body, due, due if due > now else 0, id_, token)
            return conn.execute(_REQUEUE, params).rowcount > 0

        return await self._settle(op, wake=True)

    async def dead_letter(self, reason: str) -> bool:
        """Move the message to ``aq_dead_letters`` with ``reason``, in one transaction."""
        id_, token = self.id, self.lease.token

        def op(conn: sqlite3.Connection) -> bool:
            params = {
                "reason": reason,
                "limit": DEAD_LETTER_BODY_LIMIT,
                "at": time.time(),
                "id": id_,
                "token": token,
            }
            if conn.execute(_DEAD, params).rowcount == 0:
                return False
            conn.execute(_ACK, (id_, token))
            return True

        return await self._settle(op)

    async def _settle(self, op: Callable[[sqlite3.Connection], bool], wake: bool = False) -> bool:
        if self._settled:
            return False
        done = await self._broker._store.write(op)
        if done:
            self._settled = True
            if wake:
                self._broker._notify()
        else:
            log.info(
                "lost the lease on %s (token %d): settlement refused", self.id, self.lease.token
            )
        return done


class SQLiteBroker:
    """Broker on a SQLite file: ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.

    Many processes may open the same file; each claim is one ``BEGIN IMMEDIATE``
    transaction, so no message is claimed twice while its lease holds.

    Args:
        url: the file, in SQLAlchemy's form.
        **options: ``busy_timeout`` (seconds SQLite waits for a lock, 5),
            ``lock_timeout`` (seconds a locked transaction is retried before
            :class:`~aqueue.core.errors.BrokerError`, 60), ``poll_min`` / ``poll_max``
            (seconds between checks for new messages while waiting, 0.005 / 0.1),
            ``topic_poll`` (seconds between checks while a topic subscription waits, 0.1).
    """

    capabilities = Capabilities(
        delayed_delivery=True, priorities=True, dead_letters=True, shared=True, leases=True
    )

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self._poll_min = float(options.pop("poll_min", 0.005))
        self._poll_max = float(options.pop("poll_max", 0.1))
        topic_poll = float(options.pop("topic_poll", 0.1))
        self._store = SQLiteStore.for_url(
            url,
            SCHEMA,
            options,
            columns=COLUMNS,
            error=BrokerError,
            logger=log,
            owner="SQLiteBroker",
        )
        self.path = self._store.path
        #: its worker registry (:class:`~aqueue.core.protocols.KeepsWorkers`)
        self.worker_registry = SQLiteRegistry(self._store, _release_owner)
        #: control, replies and events (:class:`~aqueue.core.protocols.KeepsTopics`): rows
        #: of ``aq_topics``, polled by subscriptions (see :mod:`.sqlite_topics`)
        self.topics = SQLiteTopics(self._store, topic_poll)
        self._wakeup = Wakeup()
        # Bumped on every in-process change that can make a message claimable; a claim that
        # saw it move while it was looking retries at once instead of sleeping.
        self._changes = 0
        self._handing_back: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<SQLiteBroker {self.path}>"

    async def connect(self) -> None:
        """Open the file (WAL mode) and create the tables; idempotent."""
        await self._store.open()

    async def close(self) -> None:
        """Finish queued writes (and hand back cancelled claims), then close; idempotent."""
        if self._handing_back:
            await asyncio.gather(*self._handing_back, return_exceptions=True)
        await self.topics.close()
        await self._store.close()

    def _notify(self) -> None:
        self._changes += 1
        self._wakeup.notify()

    async def publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Insert all messages in one transaction; ``False`` for ids already present."""
        if not messages:
            return []
        batch = list(messages)

        def op(conn: sqlite3.Connection) -> list[bool]:
            now = time.time()
            execute = conn.execute
            out: list[bool] = []
            for m in batch:
                due = now if m.eta is None else m.eta
                row = (m.id, m.queue, m.priority, due, due if due > now else 0, m.body)
                out.append(execute(_INSERT, row).rowcount == 1)
            return out

        added = await self._store.write(op)
        if any(added):
            self._notify()
        return added

    async def claim(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        lease_seconds: float,
        owner: str,
        timeout: float,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due messages: earlier queues first, then priority, then due.

        Waits up to ``timeout`` seconds. SQLite cannot notify other processes, so waiting
        polls ``PRAGMA data_version`` (a read that takes no lock) at an interval that starts
        at ``poll_min`` after activity and doubles to ``poll_max`` while idle; it also wakes
        when the next delayed message falls due, and at once for publishes in this process.
        """
        if limit <= 0 or not queues:
            return []
        names = list(dict.fromkeys(queues))
        deadline = time.monotonic() + timeout
        claim_op = _claim_op(names, limit, lease_seconds, owner)
        interval = self._poll_min
        while True:
            changes = self._changes
            rows, next_at, version = await self._store.write(claim_op, self._hand_back)
            if rows:
                return [SQLiteDelivery(self, q, i, b, d, t) for q, i, b, d, t in rows]
            while True:  # wait until something may be claimable, then claim again
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if self._changes != changes:
                    interval = self._poll_min
                    break
                wait = min(remaining, interval)
                if next_at is not None:
                    wait = min(wait, next_at - time.time())
                if wait > 0:
                    await self._wakeup.wait(wait)
                if self._changes != changes:
                    interval = self._poll_min
                    break
                if next_at is not None and time.time() >= next_at:
                    break
                seen, ready, later = await self._store.read(_probe_op(names, version))
                if seen == version:
                    interval = min(interval * 2, self._poll_max)
                    continue
                version, next_at, interval = seen, later, self._poll_min
                if ready:
                    break

    def _hand_back(self, result: _ClaimResult) -> None:
        """A claim whose caller was cancelled (shutdown) committed anyway: release its rows
        at once, uncounted, instead of letting them wait out their lease."""
        held = [(id_, token) for _, id_, _, _, token in result[0]]
        if not held:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(_RELEASE, [(1, id_, token) for id_, token in held])

        task = asyncio.get_running_loop().create_task(self._store.write(op))
        self._handing_back.add(task)
        task.add_done_callback(self._handed_back)

    def _handed_back(self, task: asyncio.Task[None]) -> None:
        self._handing_back.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.warning("could not hand back cancelled claims: %s", task.exception())
        else:
            self._notify()

    # -- dead letters (aqueue.core.protocols.ReplaysDeadLetters) ---------------------------

    async def replay_dead_letter(self, letter: DeadLetter, message: Outgoing) -> bool:
        """Delete ``letter``'s row and insert ``message`` as ready, in one transaction."""

        def op(conn: sqlite3.Connection) -> bool:
            found = conn.execute(
                _FIND_DEAD, (letter.id, letter.queue, letter.at, letter.reason)
            ).fetchone()
            if found is None or conn.execute(_QUEUED, (message.id,)).fetchone():
                return False
            row = (message.id, letter.queue, message.priority, time.time(), 0, message.body)
            conn.execute(_INSERT, row)
            conn.execute(_DROP_DEAD, (found[0],))
            return True

        done: bool = await self._store.write(op)
        if done:
            self._notify()
        return done

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue`` (or all); how many."""

        def op(conn: sqlite3.Connection) -> int:
            if queue is None:
                return conn.execute(_PURGE_DEAD_ALL).rowcount
            return conn.execute(_PURGE_DEAD_QUEUE, (queue,)).rowcount

        count: int = await self._store.write(op)
        return count

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        """Extend ``leases`` to ``lease_seconds`` from now; return those that were lost.

        Blocking and thread-safe: runs on its own connection so that neither a blocked event
        loop nor a queue of writes on the main connection can delay it.
        """
        if not leases:
            return []
        wanted = list(leases)

        def op(conn: sqlite3.Connection) -> list[Lease]:
            until = time.time() + lease_seconds
            execute = conn.execute
            return [
                lease
                for lease in wanted
                if execute(_RENEW, (until, lease.id, lease.token)).rowcount == 0
            ]

        lost = self._store.side(op)
        if lost:
            log.info("%d of %d leases were lost before renewal", len(lost), len(wanted))
        return lost

    async def size(self, queue: str) -> int:
        """Messages in ``queue``: ready, delayed and in flight."""
        count: int = await self._store.read(
            lambda conn: conn.execute(_SIZE, (queue, queue)).fetchone()[0]
        )
        return count

    async def peek_head(self, queue: str) -> bytes | None:
        """The ready message the next claim of ``queue`` would take (``PeeksHead``)."""
        row: tuple[bytes] | None = await self._store.read(
            lambda conn: conn.execute(_HEAD, (queue,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def scheduled(self, queue: str, limit: int) -> list[tuple[float, bytes]]:
        """Messages of ``queue`` waiting for their ETA, soonest first (``ListsScheduled``)."""
        rows: list[tuple[float, bytes]] = await self._store.read(
            lambda conn: conn.execute(_SCHEDULED, (queue, time.time(), limit)).fetchall()
        )
        return [(float(due), bytes(body)) for due, body in rows]

    async def count_ids(self, queue: str, suffix: str) -> int:
        """Messages of ``queue`` whose id ends with ``suffix`` (``CountsIds``)."""
        if not suffix:
            return await self.size(queue)
        count: int = await self._store.read(
            lambda conn: conn.execute(_COUNT_IDS, (queue, len(suffix), suffix)).fetchone()[0]
        )
        return count

    async def purge(self, queue: str) -> int:
        """Delete ready and delayed messages (and expired claims); in-flight ones stay."""

        def op(conn: sqlite3.Connection) -> int:
            ready = conn.execute(_PURGE_READY, (queue,)).rowcount
            return ready + conn.execute(_PURGE_TIMED, (queue, time.time())).rowcount

        count: int = await self._store.write(op)
        return count

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first, optionally of one queue."""

        def op(conn: sqlite3.Connection) -> list[DeadLetter]:
            if queue is None:
                cursor = conn.execute(_DEAD_ALL, (limit,))
            else:
                cursor = conn.execute(_DEAD_QUEUE, (queue, limit))
            return [DeadLetter(*row) for row in cursor]

        return await self._store.read(op)


def _release_owner(conn: sqlite3.Connection, owner: str) -> int:
    count: int = conn.execute(_RELEASE_OWNER, (owner,)).rowcount
    return count


def _claim_op(
    queues: list[str], limit: int, lease_seconds: float, owner: str
) -> Callable[[sqlite3.Connection], _ClaimResult]:
    def op(conn: sqlite3.Connection) -> _ClaimResult:
        now = time.time()
        until = now + lease_seconds
        execute = conn.execute
        rows: list[tuple[str, str, bytes, int, int]] = []
        for queue in queues:
            execute(_PROMOTE, (queue, now, _PROMOTE_BATCH))
            got = execute(_CLAIM, (until, owner, queue, limit - len(rows))).fetchall()
            if got:
                # RETURNING comes back in no particular order.
                got.sort(key=lambda r: (-r[4], r[5]))
                rows.extend((queue, r[0], r[1], r[2], r[3]) for r in got)
                if len(rows) >= limit:
                    break
        if rows:
            return rows, None, 0
        return [], _next_timed(execute, queues), execute("PRAGMA data_version").fetchone()[0]

    return op


def _probe_op(
    queues: list[str], version: int
) -> Callable[[sqlite3.Connection], tuple[int, bool, float | None]]:
    """A lock-free look: has anyone committed since ``version``, and is anything claimable?"""

    def op(conn: sqlite3.Connection) -> tuple[int, bool, float | None]:
        execute = conn.execute
        seen: int = execute("PRAGMA data_version").fetchone()[0]
        if seen == version:
            return seen, False, None
        if any(execute(_ANY_READY, (queue,)).fetchone() for queue in queues):
            return seen, True, None
        next_at = _next_timed(execute, queues)
        return seen, next_at is not None and next_at <= time.time(), next_at

    return op


def _next_timed(execute: Callable[..., sqlite3.Cursor], queues: list[str]) -> float | None:
    """When the earliest delayed message falls due or lease runs out, across ``queues``."""
    times = [execute(_NEXT_TIMED, (queue,)).fetchone()[0] for queue in queues]
    return min((t for t in times if t is not None), default=None)
