"""The Redis broker: sorted sets, hashes and Lua scripts, one round trip per batch.

See docs/brokers/redis.md for the key layout and the delivery guarantees in plain words.
Every key of a queue shares the hash tag ``{q:<queue>}``; the scripts live in
:mod:`aqueue.brokers.redis_scripts`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any

import redis.asyncio as aioredis

from aqueue.core.errors import BrokerError, IndeterminatePublish, PublishTimeout
from aqueue.core.protocols import Capabilities, DeadLetter, Delivery, Lease, Outgoing

from . import redis_scripts as lua
from .redis_connection import (
    Coalescer,
    LazySyncClient,
    ScriptCall,
    command,
    guarded,
    pack_fields,
    run_scripts,
    run_scripts_on_checked,
    run_scripts_once,
    run_scripts_sync,
)
from .redis_delivery import HeldLease, RedisDelivery
from .redis_settings import parse_settings
from .redis_throttle import RedisThrottle
from .redis_wait import BlockingClaim

__all__ = ["RedisBroker", "RedisDelivery"]

log = logging.getLogger("aqueue.broker.redis")

#: messages per publish flush (several chunks, one pipeline)
_PUBLISH_BATCH = 5000
#: delayed / expired messages moved back to ready per queue per claim
_MOVE_BATCH = 1000
#: settle operations per SETTLE call and per flush
_SETTLE_BATCH = lua.MAX_BATCH
_PURGE_BATCH = lua.MAX_BATCH

# a settle operation: (op, lease, a, b); see redis_scripts.SETTLE
_Op = tuple[str, Lease, bytes | str, str]


class RedisBroker:
    """A :class:`~aqueue.core.protocols.Broker` on Redis >= 6.2.

    Args:
        url: ``redis://[:password@]host[:port][/db]``, ``rediss://...`` or
            ``unix:///path/to/socket?db=N``; query parameters may carry the options below.
        **options: ``prefix`` (key prefix, default ``"aqueue"``), ``dedupe_ttl`` (seconds an
            enqueued id is refused again, default 86400; 0 disables), ``dead_letter_limit``
            (per queue, default 10000), ``socket_timeout``, ``socket_connect_timeout``,
            ``health_check_interval``, ``operation_timeout``, ``retries``, and the redis-py
            options of :mod:`aqueue.brokers.redis_settings` (``db``, ``client_name``,
            ``ssl_ca_certs``, ...), passed on.

    Raises:
        ConfigurationError: the URL or an option is malformed or unknown (checked here,
            before any connection).
    """

    capabilities = Capabilities(
        delayed_delivery=True, priorities=True, dead_letters=True, shared=True, leases=True
    )

    def __init__(self, url: str, **options: Any) -> None:
        self._settings = parse_settings(url, options, what="redis broker")
        self._prefix = self._settings.prefix
        self._client: aioredis.Redis | None = None
        self._sync = LazySyncClient(self._settings)
        # Settlements made in the same loop tick (or while a batch is in flight) share one
        # script call per queue: per task that is a few Lua commands, not a round trip.
        self._settler: Coalescer[_Op, bool] = Coalescer(self._flush_settles, _SETTLE_BATCH)
        # Leases this broker's deliveries settled (or are settling), for as long as anybody
        # holds them: a renewal that finds one gone raced its own holder's ack, release,
        # requeue or dead letter, and must not report it lost (see renew).
        self._settled: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._publisher: Coalescer[Outgoing, bool] = Coalescer(
            self._flush_publishes, _PUBLISH_BATCH
        )
        self._throttle = RedisThrottle(self._settings, self._redis, self._sync)
        self._keys: dict[str, tuple[str, ...]] = {}
        # the result backend's key head and tail, when claims read the stored records
        self._record_keys: tuple[str, str] = ("", "")
        # a connection of its own for a publish made while no other is in flight (a
        # lone ``delay()``): no coalescing hop, no pool checkout; None until first used
        self._lone: Any = None
        self._lone_busy = False
        # whether a waiting claim can be ended early with CLIENT UNBLOCK (an ACL may deny it)
        self._unblockable = True
        # hand-backs of cancelled claims still in progress; close() waits for them
        self._background: set[asyncio.Future[Any]] = set()
        # a blocking wait never outlives the socket timeout, so a blocked read is never
        # mistaken for a dead connection
        self._max_block = max(0.05, min(5.0, self._settings.socket_timeout / 2))

    def __repr__(self) -> str:
        return f"<RedisBroker {self._settings.redacted} prefix={self._prefix!r}>"

    # -- keys -------------------------------------------------------------------------

    def _queue_keys(self, queue: str) -> tuple[str, ...]:
        """The queue's keys in QUEUE_KEYS order, all in the hash tag ``{q:<queue>}``."""
        keys = self._keys.get(queue)
        if keys is None:
            base = f"{self._prefix}:{{q:{queue}}}:"
            keys = tuple(base + name for name in lua.QUEUE_KEYS)
            self._keys[queue] = keys
        return keys

    @property
    def _dead_registry(self) -> str:
        """A set of the queues that have dead letters, for ``dead_letters(None)``."""
        return f"{self._prefix}:dead-queues"

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the connection pool and check the server answers; idempotent."""
        if self._client is not None:
            return
        client = self._settings.async_client()
        try:
            await guarded(
                self._settings,
                "connect",
                lambda: command(client, "PING"),
                error=BrokerError,
            )
        except BaseException:
            await client.aclose()
            raise
        if self._client is None:
            self._client = client
        else:  # a concurrent connect() won
            await client.aclose()

    async def close(self) -> None:
        """Flush pending settlements and close every connection; idempotent."""
        # cancelled claims' scripts first, then the hand-backs they started
        for _ in range(2):
            if self._background:
                limit = self._settings.operation_timeout
                await asyncio.wait(set(self._background), timeout=limit)
        for coalescer in (self._publisher, self._settler):
            try:
                await coalescer.drain()
            except Exception:  # their callers got the error already
                log.debug("pending calls failed during close", exc_info=True)
        client, self._client = self._client, None
        lone, self._lone = self._lone, None
        if lone is not None:
            await lone.disconnect()
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(self._sync.close)

    async def _redis(self) -> aioredis.Redis:
        if self._client is None:
            await self.connect()
        assert self._client is not None
        return self._client

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
            # a batch already (delay_many, a group): one pipeline per _PUBLISH_BATCH
            stored: list[bool] = []
            for start in range(0, len(messages), _PUBLISH_BATCH):
                stored += await self._flush_publishes(
                    list(messages[start : start + _PUBLISH_BATCH])
                )
            return stored
        # Concurrent publishes (many delay() calls at once) share one round trip.
        return [await self._publisher.submit(messages[0]) is True]

    async def _publish_lone(self, message: Outgoing) -> list[bool]:
        calls, _ = lua.publish_calls([message], self._queue_keys, self._settings.dedupe_ttl)
        self._lone_busy = True  # from here on, concurrent publishes are coalesced
        try:
            client = await self._redis()
            if self._lone is None:
                pool: Any = client.connection_pool  # redis-py's pool is unannotated
                self._lone = pool.make_connection()
            conn = self._lone
            replies = await guarded(
                self._settings,
                "publish",
                lambda: run_scripts_on_checked(conn, calls),
                error=BrokerError,
                timeout_error=PublishTimeout,
                connection_error=IndeterminatePublish,
            )
        finally:
            self._lone_busy = False
        return [replies[0][0] == 1]

    async def _flush_publishes(self, messages: list[Outgoing]) -> list[bool]:
        calls, spans = lua.publish_calls(messages, self._queue_keys, self._settings.dedupe_ttl)
        client = await self._redis()
        # Never re-sent automatically: a reply lost to a broken connection leaves the outcome
        # unknown (IndeterminatePublish), and only the caller may decide to send again.
        replies = await guarded(
            self._settings,
            "publish",
            lambda: run_scripts_once(client, calls),
            error=BrokerError,
            timeout_error=PublishTimeout,
            connection_error=IndeterminatePublish,
        )
        stored = [False] * len(messages)
        for chunk, reply in zip(spans, replies, strict=True):
            for i, flag in zip(chunk, reply, strict=True):
                stored[i] = flag == 1
        return stored

    # -- claim --------------------------------------------------------------------------

    def bind_records(self, backend: object) -> bool:
        """Make every claim also return the claimed tasks' stored result records.

        Only possible when ``backend`` is a Redis result backend on the same server and
        database: the claim script then reads them (``RedisDelivery.prior``), and the
        worker saves the separate lookup it makes per batch for revocations and finished
        duplicates. Returns whether the records are now read inline.
        """
        from aqueue.backends.redis import RedisBackend

        if not isinstance(backend, RedisBackend) or backend.server_url != self._settings.url:
            return False
        self._record_keys = backend.key_parts
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
        limit = min(limit, lua.MAX_BATCH)
        queues = list(dict.fromkeys(queues))
        keys: list[str] = []
        for queue in queues:
            keys += self._queue_keys(queue)[:8]
        notify = [self._queue_keys(queue)[7] for queue in queues]
        args: list[str | bytes | int | float] = [
            limit,
            repr(float(lease_seconds)),
            _MOVE_BATCH,
            *self._record_keys,
        ]
        client = await self._redis()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        reply = await self._claim_once(client, queues, keys, args)
        while True:
            wake_ms, count = int(reply[0]), int(reply[1])
            if count:
                return self._deliveries(queues, reply)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            block = min(remaining, self._max_block)
            if wake_ms >= 0:
                block = min(block, wake_ms / 1000)
            # BLPOP's timeout has millisecond resolution; zero would mean "forever"
            block = max(block, 0.001)
            reply = await self._wait_and_claim(client, queues, notify, block, keys, args)
            if self._client is not client:
                self._hand_back_reply(queues, reply)
                raise BrokerError(f"the broker on {self._settings.redacted} was closed")

    async def _claim_once(
        self,
        client: aioredis.Redis,
        queues: list[str],
        keys: list[str],
        args: list[str | bytes | int | float],
    ) -> list[Any]:
        call = asyncio.ensure_future(
            guarded(
                self._settings,
                "claim",
                lambda: run_scripts(client, [(lua.CLAIM, keys, args)]),
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
        return list(reply)

    async def _wait_and_claim(
        self,
        client: aioredis.Redis,
        queues: list[str],
        notify: list[str],
        block: float,
        keys: list[str],
        args: list[str | bytes | int | float],
    ) -> list[Any]:
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
        client: aioredis.Redis,
        queues: list[str],
        keys: list[str],
        args: list[str | bytes | int | float],
    ) -> list[Any]:
        reply = await call
        if exchange.client_id_refused and self._unblockable:
            self._unblockable = False
            log.info(
                "CLIENT ID is not allowed on %s: waits end by reconnecting", self._settings.redacted
            )
        if reply is None:  # the claim script was not loaded (a restarted server)
            return await self._claim_once(client, queues, keys, args)
        return reply

    def _track(self, future: asyncio.Future[Any]) -> None:
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    def _hand_back(self, queues: list[str], call: asyncio.Future[list[Any]]) -> None:
        """Hand back what a cancelled claim (``run_scripts``: ``[reply]``) took."""
        if not call.cancelled() and call.exception() is None:
            [reply] = call.result()
            self._hand_back_reply(queues, reply)

    def _hand_back_wait(self, queues: list[str], call: asyncio.Future[list[Any] | None]) -> None:
        """Hand back what the claim of a cancelled wait took (``None``: it did not run)."""
        if not call.cancelled() and call.exception() is None:
            reply = call.result()
            if reply is not None:
                self._hand_back_reply(queues, reply)

    def _hand_back_reply(self, queues: list[str], reply: list[Any]) -> None:
        if not int(reply[1]):
            return
        deliveries = self._deliveries(queues, reply)
        task = asyncio.ensure_future(
            asyncio.gather(*(d.release(executed=False) for d in deliveries))
        )
        self._track(task)
        task.add_done_callback(_log_failure)

    def _deliveries(self, queues: list[str], reply: list[Any]) -> list[Delivery]:
        out: list[Delivery] = []
        for j in range(2, len(reply), 6):
            queue = queues[int(reply[j])]
            message_id = reply[j + 1].decode()
            lease = HeldLease(id=message_id, queue=queue, token=int(reply[j + 4]))
            out.append(RedisDelivery(self, lease, reply[j + 2], int(reply[j + 3]), reply[j + 5]))
        return out

    # -- settle -------------------------------------------------------------------------

    async def _settle(self, op: _Op) -> bool:
        """Settle a lease (``op`` as in ``_flush_settles``); ``False`` if it had been lost."""
        lease = op[1]
        # marked before it can reach Redis: a renewal of the same lease may already be on
        # its way, and finds the message settled by this very holder
        self._settled.add(lease)
        done = await self._settler.submit(op)
        if not done:
            self._settled.discard(lease)  # really lost before: a renewal may say so
        return done

    async def _flush_settles(self, ops: list[_Op]) -> list[bool]:
        by_queue: dict[str, list[int]] = defaultdict(list)
        for index, (_, lease, _, _) in enumerate(ops):
            by_queue[lease.queue].append(index)
        calls: list[ScriptCall] = []
        spans: list[list[int]] = []
        dead_queues: list[str] = []
        for queue, indexes in by_queue.items():
            fields: list[bytes | str] = []
            for i in indexes:
                op, lease, a, b = ops[i]
                fields += (op, lease.id, str(lease.token), a, b)
                if op == "D" and queue not in dead_queues:
                    dead_queues.append(queue)
            args: list[str | bytes | int | float] = [
                self._settings.dead_letter_limit,
                *pack_fields(fields),
            ]
            calls.append((lua.SETTLE, list(self._queue_keys(queue)[:9]), args))
            spans.append(indexes)
        client = await self._redis()

        async def run() -> list[Any]:
            replies = await run_scripts(client, calls)
            if dead_queues:
                await command(client, "SADD", self._dead_registry, *dead_queues)
            return replies

        replies = await guarded(self._settings, "settle", run, error=BrokerError)
        done = [False] * len(ops)
        for indexes, reply in zip(spans, replies, strict=True):
            for i, flag in zip(indexes, reply, strict=True):
                done[i] = flag == 1
        return done

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
            k = self._queue_keys(queue)
            for start in range(0, len(indexes), lua.MAX_BATCH):
                chunk = indexes[start : start + lua.MAX_BATCH]
                fields: list[bytes | str] = []
                for i in chunk:
                    fields += (leases[i].id, str(leases[i].token))
                args: list[str | bytes | int | float] = [repr(float(lease_seconds))]
                args += pack_fields(fields)
                calls.append((lua.RENEW, [k[0], k[2], k[6]], args))
                spans.append(chunk)
        try:
            replies = run_scripts_sync(self._sync.get(), calls)
        except Exception as exc:
            raise BrokerError(
                f"renew on {self._settings.redacted} failed: {self._settings.describe(exc)}"
            ) from None
        settled = self._settled
        lost: list[Lease] = []
        for indexes, reply in zip(spans, replies, strict=True):
            for n in reply:
                lease = leases[indexes[int(n) - 1]]
                if lease not in settled:
                    lost.append(lease)
        return lost

    # -- inspection ---------------------------------------------------------------------

    async def size(self, queue: str) -> int:
        """Messages in ``queue``: ready, delayed and in flight (not dead letters)."""
        k = self._queue_keys(queue)
        client = await self._redis()
        [n] = await guarded(
            self._settings,
            "size",
            lambda: run_scripts(client, [(lua.SIZE, [k[0], k[1], k[2]], [])]),
            error=BrokerError,
        )
        return int(n)

    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (and their dedupe markers)."""
        k = self._queue_keys(queue)
        keys = [k[0], k[1], k[3], k[4], k[5], k[6], k[10]]
        client = await self._redis()
        total = 0
        while True:
            removed = await guarded(
                self._settings,
                "purge",
                lambda: run_scripts(client, [(lua.PURGE, keys, [_PURGE_BATCH])]),
                error=BrokerError,
            )
            if not removed[0]:
                return total
            total += int(removed[0])

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters (of ``queue``, or of every queue), newest first."""
        if limit <= 0:
            return []
        client = await self._redis()

        async def read() -> list[DeadLetter]:
            if queue is None:
                members = await command(client, "SMEMBERS", self._dead_registry)
                names = sorted(m.decode() for m in members)
            else:
                names = [queue]
            if not names:
                return []
            pipe = client.pipeline(transaction=False)
            for name in names:
                command(pipe, "LRANGE", self._queue_keys(name)[8], 0, limit - 1)
            lists = await pipe.execute()
            letters = [
                lua.parse_dead_letter(name, raw)
                for name, entries in zip(names, lists, strict=True)
                for raw in entries
            ]
            letters.sort(key=lambda letter: letter.at, reverse=True)
            return letters[:limit]

        return await guarded(self._settings, "dead_letters", read, error=BrokerError)

    # -- shared throttle (aqueue.core.protocols.SharedThrottle) ------------------------------

    async def reserve_rate(self, key: str, limit: float, period: float) -> float:
        """Reserve the next rate slot for ``key`` across all workers; return its unix time."""
        return await self._throttle.reserve_rate(key, limit, period)

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
