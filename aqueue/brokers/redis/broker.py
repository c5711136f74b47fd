"""The Redis broker: sorted sets, hashes and Lua scripts, one round trip per batch.

See docs/brokers/redis.md for the key layout and the delivery guarantees in plain words.
Every key of a queue shares the hash tag ``{q:<queue>}``; the scripts and their layouts are
in :mod:`.scripts`, settlement in :mod:`.delivery`, the blocking claim in :mod:`.wait`, the
shared limits in :mod:`.throttle`, the topics (control, replies, events) in :mod:`.topics`.
What the broker shares with the result backend (settings, connection guard, script
running, key space) is :mod:`aqueue.transports.redis`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from aqueue.core.errors import (
    BrokerError,
    ConfigurationError,
    IndeterminatePublish,
    PublishTimeout,
)
from aqueue.core.protocols import (
    Capabilities,
    DeadLetter,
    Delivery,
    Lease,
    Outgoing,
)
from aqueue.transports.redis import redispy
from aqueue.transports.redis.clients import LazySyncClient, Link
from aqueue.transports.redis.coalesce import Coalescer
from aqueue.transports.redis.guard import guarded
from aqueue.transports.redis.keys import KeySpace, StoresRecords
from aqueue.transports.redis.registry import Listed, RedisRegistry
from aqueue.transports.redis.scripts import (
    NotSent,
    ReplicasMissing,
    ScriptCall,
    command,
    pack_fields,
    run_scripts,
    run_scripts_on,
    run_scripts_once,
    run_scripts_sync,
)
from aqueue.transports.redis.settings import RedisSettings, parse_settings

from .delivery import HeldLease, RedisDelivery, Settler
from .scripts import (
    CLAIM,
    MAX_BATCH,
    PURGE,
    PURGE_DEAD,
    RENEW,
    REPLAY,
    SETTLE,
    SIZE,
    Claimed,
    ClaimReply,
    QueueKeys,
    SettleOp,
    flags,
    parse_dead_letter,
    publish_calls,
)
from .throttle import RedisThrottle
from .topics import RedisTopics
from .wait import BlockingClaim

__all__ = ["RedisBroker"]

T = TypeVar("T")

log = logging.getLogger("aqueue.broker.redis")

#: messages per publish flush (several chunks, one pipeline)
PUBLISH_BATCH = 5000
#: delayed / expired messages moved back to ready per queue per claim
MOVE_BATCH = 1000
#: messages purged per PURGE call
_PURGE_BATCH = MAX_BATCH


class RedisBroker:
    """A :class:`~aqueue.core.protocols.Broker` on Redis >= 6.2.

    Args:
        url: ``redis://[:password@]host[:port][/db]``, ``rediss://...``,
            ``unix:///path/to/socket?db=N``, or a master behind Redis Sentinel:
            ``redis+sentinel://[:password@]host1:26379,host2:26379/<master>[/db]`` (or
            Celery's ``sentinel://host1:26379;sentinel://host2:26379`` with
            ``master_name``); query parameters may carry the options below.
        **options: ``prefix`` (key prefix, default ``"aqueue"``), ``dedupe_ttl`` (seconds an
            enqueued id is refused again, default 86400; 0 disables), ``dead_letter_limit``
            (per queue, default 10000), ``socket_timeout``, ``socket_connect_timeout``,
            ``health_check_interval``, ``operation_timeout``, ``retries``, and the redis-py
            options of :mod:`aqueue.transports.redis.settings` (``db``, ``client_name``,
            ``ssl_ca_certs``, ...), passed on.

    Raises:
        ConfigurationError: the URL or an option is malformed or unknown (checked here,
            before any connection).
    """

    capabilities = Capabilities(
        delayed_delivery=True, priorities=True, dead_letters=True, shared=True, leases=True
    )
    #: whether it speaks to a Redis Cluster (:class:`~.cluster.RedisClusterBroker`)
    on_cluster = False

    def __init__(self, url: str, **options: Any) -> None:
        self._settings = parse_settings(url, options, what="redis broker")
        if self._settings.cluster != self.on_cluster:
            raise ConfigurationError(
                f"redis broker: {self._settings.redacted!r} is a Redis Cluster: use "
                "RedisClusterBroker (make_broker and App pick it for redis+cluster://)"
                if self._settings.cluster
                else f"redis broker: {self._settings.redacted!r} is one server, not a "
                "cluster: RedisClusterBroker takes redis+cluster://host:port[,host:port...]"
            )
        self._link = Link(self._settings, BrokerError)
        self._sync = LazySyncClient(self._settings)
        self._keys = KeySpace(self._settings.prefix)
        self._queues: dict[str, QueueKeys] = {}
        self._settler = Settler(self._settings, self._link, self._queue_keys, self._keys)
        self._publisher: Coalescer[Outgoing, bool] = Coalescer(self._flush_publishes, PUBLISH_BATCH)
        self._throttle = RedisThrottle(self._settings, self._link.get, self._sync)
        #: its worker registry (:class:`~aqueue.core.protocols.KeepsWorkers`)
        self.worker_registry = RedisRegistry(
            self._settings,
            self._keys,
            self._sync.get,
            self._link.get,
            BrokerError,
            self._release_listed,
        )
        # the result backend's record key head and tail, when claims read the stored records
        self._record_keys: tuple[str, str] = ("", "")
        # a connection of its own for a publish made while no other is in flight (a
        # lone ``delay()``): no coalescing hop, no pool checkout; None until first used
        self._lone: redispy.Connection | None = None
        self._lone_busy = False
        # whether a waiting claim can be ended early with CLIENT UNBLOCK (an ACL may deny it)
        self._unblockable = True
        # hand-backs of cancelled claims still in progress; close() waits for them
        self._background: set[asyncio.Future[Any]] = set()
        # a blocking wait never outlives the socket timeout, so a blocked read is never
        # mistaken for a dead connection
        self._max_block = max(0.05, min(5.0, self._settings.socket_timeout / 2))
        # WAIT after each publish for this many replicas (None: none), within wait_timeout
        self._confirm = self._settings.confirm
        #: control, replies and events (:class:`~aqueue.core.protocols.KeepsTopics`): one
        #: stream per topic, read on connections of their own, or on a cluster through the
        #: pooled cluster client (see :mod:`.topics`)
        self.topics = RedisTopics(self._settings, self._keys, self._link.get, self._max_block)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"<{name} {self._settings.redacted} prefix={self._settings.prefix!r}>"

    @property
    def settings(self) -> RedisSettings:
        """The URL and options, parsed (its repr never shows a password)."""
        return self._settings

    def _queue_keys(self, queue: str) -> QueueKeys:
        """The queue's keys, all in the hash tag ``{q:<queue>}``."""
        keys = self._queues.get(queue)
        if keys is None:
            keys = self._queues[queue] = QueueKeys(self._keys.queue(queue))
        return keys

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the connection pool and check the server answers; idempotent."""
        await self._link.connect()

    async def close(self) -> None:
        """Flush pending settlements and close every connection; idempotent."""
        await self.settled()
        for pending in (self._publisher, self._settler):
            try:
                await pending.drain()
            except Exception:  # their callers got the error already
                log.debug("pending calls failed during close", exc_info=True)
        await self.topics.close()
        lone, self._lone = self._lone, None
        if lone is not None:
            await redispy.disconnect(lone)
        await self._link.close()
        await asyncio.to_thread(self._sync.close)

    async def settled(self) -> None:
        """Return once cancelled claims' scripts have answered and what they took has been
        handed back (:class:`~aqueue.core.protocols.SettlesInBackground`)."""
        # cancelled claims' scripts first, then the hand-backs they started
        for _ in range(2):
            if self._background:
                limit = self._settings.operation_timeout
                await asyncio.wait(set(self._background), timeout=limit)

    # -- publish ------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Store messages in one round trip; ``False`` for an id already known.

        An id is refused while it is queued, delayed or in flight, and for ``dedupe_ttl``
        seconds after it was enqueued (so a completed task is not enqueued again by a
        retried ``delay()``). If the connection fails mid-way, raises
        :class:`~aqueue.core.errors.IndeterminatePublish`: re-sending the same ids is safe.
        """
        if not messages:
            return []
        if len(messages) == 1 and not self._lone_busy and self._publisher.idle:
            # nothing else in flight: send it now, on a connection of its own
            return await self._publish_lone(messages[0])
        if len(messages) > 1:
            # a batch already (delay_many, a group): one pipeline per PUBLISH_BATCH
            stored: list[bool] = []
            for start in range(0, len(messages), PUBLISH_BATCH):
                stored += await self._flush_publishes(list(messages[start : start + PUBLISH_BATCH]))
            return stored
        # Concurrent publishes (many delay() calls at once) share one round trip.
        return [await self._publisher.submit(messages[0]) is True]

    async def _publish_lone(self, message: Outgoing) -> list[bool]:
        calls, _ = publish_calls([message], self._queue_keys, self._settings.dedupe_ttl)
        self._lone_busy = True  # from here on, concurrent publishes are coalesced
        try:
            client = await self._link.get()
            if self._lone is None:
                self._lone = redispy.new_connection(client)
            conn = self._lone
            replies = await self._guard_publish(
                lambda: run_scripts_on(conn, calls, confirm=self._confirm)
            )
        finally:
            self._lone_busy = False
        return [replies[0][0] == 1]

    async def _flush_publishes(self, messages: list[Outgoing]) -> list[bool]:
        calls, spans = publish_calls(messages, self._queue_keys, self._settings.dedupe_ttl)
        client = await self._link.get()
        replies = await self._guard_publish(
            lambda: run_scripts_once(client, calls, confirm=self._confirm)
        )
        return flags(spans, replies, len(messages))

    async def _guard_publish(self, call: Callable[[], Awaitable[T]]) -> T:
        # Never re-sent automatically: a reply lost to a broken connection leaves the outcome
        # unknown (IndeterminatePublish), and only the caller may decide to send again.
        # Behind Sentinel, a publish that certainly did not run (no master reachable yet,
        # or the server it reached is a replica now) is sent again until the deadline: a
        # failover takes seconds, and the master it ends with takes the publish.
        settings = self._settings
        once: Callable[[], Awaitable[T]]
        once = partial(_until_sent, call) if settings.sentinel is not None else call
        if self._confirm is not None:
            # only a publish that WAITs for replicas can miss them
            once = partial(_confirmed, settings, once)
        return await guarded(
            settings,
            "publish",
            once,
            error=BrokerError,
            timeout_error=PublishTimeout,
            connection_error=IndeterminatePublish,
        )

    # -- claim --------------------------------------------------------------------------

    def bind_records(self, backend: object) -> bool:
        """Make every claim also return the claimed tasks' stored result records.

        Only possible when ``backend`` stores its records in Redis, on the same server and
        database (:class:`~aqueue.transports.redis.keys.StoresRecords`: the Redis result
        backend): the claim script then reads them (``RedisDelivery.prior``), and the
        worker saves the separate lookup it makes per batch for revocations and finished
        duplicates. Returns whether the records are now read inline.
        """
        if not isinstance(backend, StoresRecords):
            return False
        records = backend.record_keys
        if records.server != self._settings.url:
            return False
        self._record_keys = (records.head, records.tail)
        return True

    async def claim(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        lease_seconds: float,
        owner: str,
        timeout: float,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due messages, highest priority first, earlier queues first.

        One script call claims the batch. When nothing is due, waits on the queues'
        notification lists (``BLPOP``) until a publish or hand-back arrives, the next
        delayed message is due, the next lease expires, or ``timeout`` runs out: no
        polling. The wait and the claim that follows it travel together (see
        :meth:`_wait_and_claim`), so a woken worker holds its messages without another
        round trip. ``owner`` is not stored; the lease token identifies the holder.
        """
        if limit <= 0 or not queues:
            return []
        # Lua's unpack() takes at most ~8000 values; a bigger batch gains nothing anyway
        limit = min(limit, MAX_BATCH)
        queues = list(dict.fromkeys(queues))
        keys: list[str] = []
        notify: list[str] = []
        for queue in queues:
            queue_keys = self._queue_keys(queue)
            keys += queue_keys.claim
            notify.append(queue_keys.notify)
        args: list[str | bytes | int | float] = [
            limit,
            repr(float(lease_seconds)),
            MOVE_BATCH,
            *self._record_keys,
        ]
        client = await self._link.get()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        reply = await self._claim_once(client, queues, keys, args)
        while True:
            if reply.claimed:
                return self._deliveries(queues, reply.claimed)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            block = min(remaining, self._max_block)
            if reply.wake_ms >= 0:
                block = min(block, reply.wake_ms / 1000)
            # BLPOP's timeout has millisecond resolution; zero would mean "forever"
            block = max(block, 0.001)
            reply = await self._wait_and_claim(client, queues, notify, block, keys, args)
            if self._link.client is not client:
                self._hand_back_claimed(queues, reply.claimed)
                raise BrokerError(f"the broker on {self._settings.redacted} was closed")

    async def _claim_once(
        self,
        client: redispy.AsyncClient,
        queues: list[str],
        keys: list[str],
        args: list[str | bytes | int | float],
    ) -> ClaimReply:
        call = asyncio.ensure_future(
            guarded(
                self._settings,
                "claim",
                lambda: run_scripts(client, [(CLAIM, keys, args)]),
                error=BrokerError,
            )
        )
        try:
            [reply] = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The script may have claimed messages already: once it answers, hand them
            # back uncounted so a cancelled claim costs nobody a lease timeout. close()
            # waits for this, so a stopping worker does not strand them.
            self._track(call)
            call.add_done_callback(partial(self._hand_back, queues))
            raise
        return ClaimReply.parse(reply)

    async def _wait_and_claim(
        self,
        client: redispy.AsyncClient,
        queues: list[str],
        notify: list[str],
        block: float,
        keys: list[str],
        args: list[str | bytes | int | float],
    ) -> ClaimReply:
        """``BLPOP`` on the notification lists and the claim script, in one round trip.

        Both are written at once on one connection: Redis runs the claim the moment the
        wait ends (a wake-up token, or the timeout), so a woken worker gets its messages
        in the reply to its wait. The claim is cancel-safe as in :meth:`_claim_once`: the
        exchange is shielded, a cancelled wait is ended early with ``CLIENT UNBLOCK``, and
        whatever the claim then took is handed back uncounted.
        """
        exchange = BlockingClaim(
            self._settings, client, notify, block, keys, args, unblockable=self._unblockable
        )
        call = asyncio.ensure_future(
            guarded(
                self._settings,
                "claim (wait)",
                exchange.run,
                error=BrokerError,
                deadline=self._settings.operation_timeout + block,
            )
        )
        if not self._unblockable:
            # No CLIENT UNBLOCK (an ACL without CLIENT): a cancelled wait drops its
            # connection, which ends it on the server before the claim runs, unless the
            # wait had just ended; what that claim took then returns when its lease expires.
            return await self._claimed(call, exchange, client, queues, keys, args)
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            self._track(call)
            call.add_done_callback(partial(self._hand_back_wait, queues))
            unblock = asyncio.ensure_future(exchange.unblock(call))
            self._track(unblock)
            unblock.add_done_callback(_log_failure)
            raise
        return await self._claimed(call, exchange, client, queues, keys, args)

    async def _claimed(
        self,
        call: asyncio.Future[list[Any] | None],
        exchange: BlockingClaim,
        client: redispy.AsyncClient,
        queues: list[str],
        keys: list[str],
        args: list[str | bytes | int | float],
    ) -> ClaimReply:
        reply = await call
        if exchange.client_id_refused and self._unblockable:
            self._unblockable = False
            log.info(
                "CLIENT ID is not allowed on %s: waits end by reconnecting", self._settings.redacted
            )
        if reply is None:  # the claim script was not loaded (a restarted server)
            return await self._claim_once(client, queues, keys, args)
        return ClaimReply.parse(reply)

    def _track(self, future: asyncio.Future[Any]) -> None:
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    def _hand_back(self, queues: list[str], call: asyncio.Future[list[Any]]) -> None:
        """Hand back what a cancelled claim (``run_scripts``: ``[reply]``) took."""
        if not call.cancelled() and call.exception() is None:
            [reply] = call.result()
            self._hand_back_claimed(queues, ClaimReply.parse(reply).claimed)

    def _hand_back_wait(self, queues: list[str], call: asyncio.Future[list[Any] | None]) -> None:
        """Hand back what the claim of a cancelled wait took (``None``: it did not run)."""
        if not call.cancelled() and call.exception() is None:
            reply = call.result()
            if reply is not None:
                self._hand_back_claimed(queues, ClaimReply.parse(reply).claimed)

    def _hand_back_claimed(self, queues: list[str], claimed: list[Claimed]) -> None:
        if not claimed:
            return
        self._release_unsent(self._deliveries(queues, claimed))

    def _release_unsent(self, deliveries: list[Delivery]) -> None:
        """Release ``deliveries`` (claimed, never handed to the caller) in the background,
        uncounted; :meth:`close` waits for it, and a failure is logged."""
        if not deliveries:
            return
        task = asyncio.ensure_future(
            asyncio.gather(*(d.release(executed=False) for d in deliveries))
        )
        self._track(task)
        task.add_done_callback(_log_failure)

    def _deliveries(self, queues: list[str], claimed: list[Claimed]) -> list[Delivery]:
        settler = self._settler
        return [
            RedisDelivery(
                settler,
                HeldLease(id=c.id.decode(), queue=queues[c.queue_index], token=c.token),
                c.body,
                c.delivery_count,
                c.record,
            )
            for c in claimed
        ]

    # -- renew --------------------------------------------------------------------------

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        """Extend leases in one round trip and return the ones that were lost.

        Blocking and thread-safe: it runs on its own synchronous connection pool so a
        heartbeat thread keeps leases alive while the event loop is blocked.

        A lease is lost when someone else claimed the message since (its lease had
        expired), or settled it. One that expired without anybody claiming it is taken
        back. One its own holder settled meanwhile (the renewal raced the ack, for example
        behind a slow or frozen server) is not lost, and is not extended either.

        Raises:
            BrokerError: Redis could not be reached; the leases' fate is unknown.
        """
        if not leases:
            return []
        by_queue: dict[str, list[int]] = defaultdict(list)
        for index, lease in enumerate(leases):
            by_queue[lease.queue].append(index)
        calls: list[ScriptCall] = []
        spans: list[list[int]] = []
        for queue, indexes in by_queue.items():
            keys = self._queue_keys(queue).renew
            for start in range(0, len(indexes), MAX_BATCH):
                chunk = indexes[start : start + MAX_BATCH]
                fields: list[bytes | str] = []
                for i in chunk:
                    fields += (leases[i].id, str(leases[i].token))
                args: list[str | bytes | int | float] = [repr(float(lease_seconds))]
                args += pack_fields(fields)
                calls.append((RENEW, keys, args))
                spans.append(chunk)
        try:
            replies = run_scripts_sync(self._sync.get(), calls)
        except Exception as exc:
            raise BrokerError(
                f"renew on {self._settings.redacted} failed: {self._settings.describe(exc)}"
            ) from None
        settled = self._settler.settled
        lost: list[Lease] = []
        for indexes, reply in zip(spans, replies, strict=True):
            for n in reply:  # 1-based positions in the call's chunk
                lease = leases[indexes[int(n) - 1]]
                if not settled(lease):
                    lost.append(lease)
        return lost

    # -- inspection ---------------------------------------------------------------------

    async def size(self, queue: str) -> int:
        """Messages in ``queue``: ready, delayed and in flight (not dead letters)."""
        keys = self._queue_keys(queue).size
        client = await self._link.get()
        [n] = await guarded(
            self._settings,
            "size",
            lambda: run_scripts(client, [(SIZE, keys, [])]),
            error=BrokerError,
        )
        return int(n)

    async def peek_head(self, queue: str) -> bytes | None:
        """The ready message the next claim of ``queue`` would take (``PeeksHead``): the
        lowest score of the ready set, and its body (two reads)."""
        keys = self._queue_keys(queue)
        client = await self._link.get()

        async def read() -> bytes | None:
            ids = await command(client, "ZRANGE", keys.ready, 0, 0)
            if not ids:
                return None
            body = await command(client, "HGET", keys.body, ids[0])
            return None if body is None else bytes(body)

        return await guarded(self._settings, "peek_head", read, error=BrokerError)

    async def scheduled(self, queue: str, limit: int) -> list[tuple[float, bytes]]:
        """Messages of ``queue`` waiting for their ETA, soonest first (``ListsScheduled``):
        the delayed set and the bodies of its first ``limit`` ids (two reads; a message
        that left the set in between is skipped)."""
        keys = self._queue_keys(queue)
        client = await self._link.get()

        async def read() -> list[tuple[float, bytes]]:
            pairs = await command(client, "ZRANGE", keys.delayed, 0, limit - 1, "WITHSCORES")
            if pairs and not isinstance(pairs[0], tuple | list):  # raw replies alternate
                pairs = list(zip(pairs[::2], pairs[1::2], strict=True))
            if not pairs:
                return []
            bodies = await command(client, "HMGET", keys.body, *[member for member, _ in pairs])
            return [
                (float(score), bytes(body))
                for (_, score), body in zip(pairs, bodies, strict=True)
                if body is not None
            ]

        return await guarded(self._settings, "scheduled", read, error=BrokerError)

    async def count_ids(self, queue: str, suffix: str) -> int:
        """Messages of ``queue`` whose id ends with ``suffix`` (``CountsIds``).

        Scans the queue's ready, delayed and in-flight sets (``ZSCAN ... MATCH``): a
        command for inspection, not for a hot path.
        """
        keys = self._queue_keys(queue)
        pattern = "*" + "".join("\\" + c if c in "*?[]\\" else c for c in suffix)
        client = await self._link.get()

        async def scan() -> int:
            total = 0
            for key in (keys.ready, keys.delayed, keys.inflight):
                cursor: bytes | int = 0
                while True:
                    cursor, members = await command(
                        client, "ZSCAN", key, cursor, "MATCH", pattern, "COUNT", 1000
                    )
                    # redis-py pairs them as (member, score); raw replies alternate
                    paired = bool(members) and isinstance(members[0], tuple | list)
                    total += len(members) if paired else len(members) // 2
                    if int(cursor) == 0:
                        break
            return total

        return await guarded(self._settings, "count_ids", scan, error=BrokerError)

    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (and their dedupe markers)."""
        keys = self._queue_keys(queue).purge
        client = await self._link.get()
        total = 0
        while True:
            removed = await guarded(
                self._settings,
                "purge",
                lambda: run_scripts(client, [(PURGE, keys, [_PURGE_BATCH])]),
                error=BrokerError,
            )
            if not removed[0]:
                return total
            total += int(removed[0])

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters (of ``queue``, or of every queue), newest first."""
        if limit <= 0:
            return []
        client = await self._link.get()

        async def read() -> list[DeadLetter]:
            if queue is None:
                members = await command(client, "SMEMBERS", self._keys.dead_queues)
                names = sorted(m.decode() for m in members)
            else:
                names = [queue]
            if not names:
                return []
            pipe = client.pipeline(transaction=False)
            for name in names:
                command(pipe, "LRANGE", self._queue_keys(name).dead, 0, limit - 1)
            lists = await pipe.execute()
            letters = [
                parse_dead_letter(name, raw)
                for name, entries in zip(names, lists, strict=True)
                for raw in entries
            ]
            letters.sort(key=lambda letter: letter.at, reverse=True)
            return letters[:limit]

        return await guarded(self._settings, "dead_letters", read, error=BrokerError)

    def _release_listed(self, listed: Listed) -> int:
        """Hand back a lost worker's leases, as ``release(executed=True)``, fenced by their
        tokens (one SETTLE call per queue); return how many were still its own."""
        by_queue: dict[str, list[bytes | str]] = defaultdict(list)
        for queue, id_, token in listed:
            by_queue[queue] += (SettleOp.RELEASE, id_, str(token), "1", "")
        calls: list[ScriptCall] = [
            (
                SETTLE,
                self._queue_keys(queue).settle,
                [self._settings.dead_letter_limit, *pack_fields(fields)],
            )
            for queue, fields in by_queue.items()
        ]
        try:
            replies = run_scripts_sync(self._sync.get(), calls)
        except Exception as exc:
            raise BrokerError(
                f"handing back a lost worker's leases on {self._settings.redacted} failed: "
                f"{self._settings.describe(exc)}"
            ) from None
        return sum(int(flag) for reply in replies for flag in reply)

    # -- dead letters (aqueue.core.protocols.ReplaysDeadLetters) ---------------------------

    async def replay_dead_letter(self, letter: DeadLetter, message: Outgoing) -> bool:
        """Remove ``letter``'s entry and enqueue ``message`` as new, in one script."""
        keys = self._queue_keys(letter.queue)
        client = await self._link.get()

        async def replay() -> bool:
            entries = await command(client, "LRANGE", keys.dead, 0, -1)
            for raw in entries:
                found = parse_dead_letter(letter.queue, raw)
                if (found.id, found.at, found.reason) == (letter.id, letter.at, letter.reason):
                    args: list[str | bytes | int | float] = [
                        raw,
                        message.id,
                        message.body,
                        message.priority,
                    ]
                    [done] = await run_scripts(client, [(REPLAY, keys.replay, args)])
                    return bool(done)
            return False

        return await guarded(self._settings, "replay", replay, error=BrokerError)

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue`` (or of every queue); how many."""
        client = await self._link.get()

        async def purge() -> int:
            if queue is None:
                members = await command(client, "SMEMBERS", self._keys.dead_queues)
                names = [m.decode() for m in members]
            else:
                names = [queue]
            # one script per queue: counted and deleted at once (no MULTI, which redis-py's
            # cluster client refuses before 8)
            calls: list[ScriptCall] = [
                (PURGE_DEAD, [self._queue_keys(name).dead], []) for name in names
            ]
            return sum(int(n) for n in await run_scripts(client, calls)) if calls else 0

        return await guarded(self._settings, "purge_dead_letters", purge, error=BrokerError)

    # -- shared throttle (aqueue.core.protocols.SharedThrottle) ------------------------------

    async def reserve_rate(self, key: str, limit: float, period: float) -> float:
        """Reserve the next rate slot for ``key`` across all workers; return its unix time."""
        return await self._throttle.reserve_rate(key, limit, period)

    async def reset_rate(self, key: str) -> None:
        """Forget the rate slots reserved for ``key`` (its rate changed)."""
        await self._throttle.reset_rate(key)

    async def acquire_slot(self, key: str, holder: str, limit: int, lease_seconds: float) -> bool:
        """Take one of ``limit`` leased slots of ``key`` for ``holder``; ``False`` if full."""
        return await self._throttle.acquire_slot(key, holder, limit, lease_seconds)

    async def release_slot(self, key: str, holder: str) -> None:
        """Give a slot back."""
        await self._throttle.release_slot(key, holder)

    def renew_slots(self, slots: Sequence[tuple[str, str]], lease_seconds: float) -> None:
        """Extend slot leases of ``(key, holder)`` pairs. Blocking and thread-safe."""
        self._throttle.renew_slots(slots, lease_seconds)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("handing back a cancelled claim failed: %s", task.exception())


async def _until_sent(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, made again after a short pause for as long as it raises ``NotSent`` (it
    did not run); the caller's deadline ends it."""
    pause = 0.05
    while True:
        try:
            return await call()
        except NotSent:
            log.debug("publish not sent (failover in progress?): trying again")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)


async def _confirmed(settings: RedisSettings, call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, a :class:`ReplicasMissing` turned into :class:`IndeterminatePublish`."""
    try:
        return await call()
    except ReplicasMissing as exc:
        # stored, maybe run, but a failover now could lose it: the outcome is not known
        # for sure, and re-sending is safe (dedupe)
        raise IndeterminatePublish(
            f"publish on {settings.redacted}: {settings.describe(exc)}"
        ) from None
