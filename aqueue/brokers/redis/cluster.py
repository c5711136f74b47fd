"""The Redis broker on a Redis Cluster (``redis+cluster://host:port[,host:port...]``).

Every key of a queue shares the hash tag ``{q:<queue>}``, so each queue lives in one slot
and every per-queue script (publish, claim, settle, renew, purge, replay) runs unchanged on
the node that serves it; redis-py's cluster client routes each call by its ``KEYS`` and
groups a pipeline's calls per node. What differs from one server (:class:`RedisBroker`):

* **claim** over several queues is one CLAIM call per queue, earlier queue first, until
  the batch is full (a script cannot span slots); the idle wait is one ``BLPOP`` per
  queue, concurrently, each on a pooled connection of the node that serves that queue:
  the first token (or the timeout) ends the wait, the others are cancelled (redis-py
  closes a connection whose read was interrupted), and the claim that follows visits every
  queue, so a token a cancelled wait swallowed is work this claim takes. A token swallowed
  for a queue the claim did not reach (its batch was full) delays another idle worker by
  at most one wait round (``socket_timeout / 2``, 2.5 s by default).
* **claims read no result records**: those live in other slots (``{t:<task id>}``), so the
  worker looks them up itself, one pipeline per batch (:meth:`bind_records` says no).
* **publishes** always go through the cluster client's pipeline: a lone ``delay()`` takes
  no connection of its own. redis-py's cluster pipeline re-sends a command whose
  connection failed before its reply came; the dedupe window (and, without one, the check
  that the id is not queued) refuses the second copy, so it cannot enqueue twice.
* **topics** read ``XREAD BLOCK`` through the cluster client (the node serving the
  topic's slot), not on a connection of their own.
* **a hot queue may be sharded** over several slots (the ``shards`` option:
  ``?shards=hot:8``): queue ``hot`` is kept as ``hot#0`` ... ``hot#7``; a message goes to
  the shard of its id's CRC-32, a claim visits the shards starting one further each time,
  and inspection adds them up. A claimed message names its shard.

Everything else (settlements, renewals, inspection, dead letters, limits, the worker
registry) is :class:`RedisBroker`'s: single-slot scripts and commands, pipelined.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Sequence
from typing import Any

import msgspec

from aqueue.core.errors import BrokerError
from aqueue.core.protocols import DeadLetter, Delivery, Outgoing
from aqueue.transports.redis import redispy
from aqueue.transports.redis.scripts import ScriptCall, command, run_scripts

from .broker import MOVE_BATCH, RedisBroker
from .scripts import MAX_BATCH, PASS_ON, flags, publish_calls

__all__ = ["RedisClusterBroker"]

log = logging.getLogger("aqueue.broker.redis")

#: seconds a queue whose claim failed (its node down) is left out of claims
_RETRY_FAILING = 1.0
#: seconds the other waits of an idle round are given to end by themselves once the first
#: ran out of time (a cancelled one costs its connection: redis-py closes it)
_SETTLE = 0.25


class RedisClusterBroker(RedisBroker):
    """A :class:`~aqueue.core.protocols.Broker` on a Redis Cluster (Redis >= 6.2).

    Args:
        url: ``redis+cluster://[[user]:password@]host:port[,host:port...][/0]``: any of
            the cluster's nodes (list several, in case one is down at start); database 0.
        **options: as for :class:`RedisBroker`; ``max_connections`` is per node.

    Raises:
        ConfigurationError: the URL or an option is malformed or unknown, or the URL is
            not a cluster's.
    """

    on_cluster = True

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._shards = dict(self._settings.shards)
        # queues whose last claim failed (their node down), with when: the others are
        # claimed from meanwhile
        self._failing: dict[str, float] = {}
        # where the next claim of a sharded queue starts (round-robin over its shards)
        self._turn = 0

    def shards_of(self, queue: str) -> list[str]:
        """The queues that hold ``queue``'s messages: ``[queue]``, or its shards
        ``queue#0`` ... ``queue#<n-1>`` when the ``shards`` option spreads it."""
        count = self._shards.get(queue)
        return [queue] if count is None else [f"{queue}#{i}" for i in range(count)]

    def _sharded(self, message: Outgoing) -> Outgoing:
        """``message`` addressed to its shard: by its id, so a re-sent id meets its first
        copy (the dedupe window is per shard)."""
        count = self._shards.get(message.queue)
        if count is None:
            return message
        shard = zlib.crc32(message.id.encode()) % count
        return msgspec.structs.replace(message, queue=f"{message.queue}#{shard}")

    def _in_turn(self, queues: list[str]) -> list[str]:
        """``queues`` with each sharded one replaced by its shards, starting one further
        at each claim (so claimers take from every shard in turn)."""
        out: list[str] = []
        for queue in queues:
            shards = self.shards_of(queue)
            if len(shards) > 1:
                start = self._turn % len(shards)
                self._turn += 1
                shards = shards[start:] + shards[:start]
            out += shards
        return list(dict.fromkeys(out))

    # -- publish ------------------------------------------------------------------------

    async def _publish_lone(self, message: Outgoing) -> list[bool]:
        # no connection of its own on a cluster: through the cluster client's pipeline
        return [await self._publisher.submit(message) is True]

    async def _flush_publishes(self, messages: list[Outgoing]) -> list[bool]:
        if self._shards:
            messages = [self._sharded(m) for m in messages]
        calls, spans = publish_calls(messages, self._queue_keys, self._settings.dedupe_ttl)
        client = await self._link.get()
        replies = await self._guard_publish(lambda: run_scripts(client, calls))
        return flags(spans, replies, len(messages))

    # -- sharded queues: inspection adds up the shards -----------------------------------

    async def size(self, queue: str) -> int:
        """Messages in ``queue`` (every shard of a sharded one): ready, delayed, in flight."""
        base = super().size
        return sum([await base(q) for q in self.shards_of(queue)])

    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (of each of its shards)."""
        base = super().purge
        return sum([await base(q) for q in self.shards_of(queue)])

    async def count_ids(self, queue: str, suffix: str) -> int:
        """Messages of ``queue`` (of each of its shards) whose id ends with ``suffix``."""
        base = super().count_ids
        return sum([await base(q, suffix) for q in self.shards_of(queue)])

    async def peek_head(self, queue: str) -> bytes | None:
        """The ready message at the head of ``queue``: of its first shard that has one,
        ``queue#0`` first (an inspection: it does not move the claims' rotation)."""
        for shard in self.shards_of(queue):
            head = await super().peek_head(shard)
            if head is not None:
                return head
        return None

    async def scheduled(self, queue: str, limit: int) -> list[tuple[float, bytes]]:
        """Messages of ``queue`` (all its shards) waiting for their ETA, soonest first."""
        found: list[tuple[float, bytes]] = []
        for shard in self.shards_of(queue):
            found += await super().scheduled(shard, limit)
        return sorted(found, key=lambda item: item[0])[:limit]

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first; a sharded queue's come from every
        shard (each letter names its shard, ``queue#i``, which ``replay`` goes back to)."""
        if queue is None or queue not in self._shards:
            return await super().dead_letters(queue, limit)
        letters: list[DeadLetter] = []
        for shard in self.shards_of(queue):
            letters += await super().dead_letters(shard, limit)
        letters.sort(key=lambda letter: letter.at, reverse=True)
        return letters[:limit]

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue`` (every shard of a sharded one), or of all."""
        if queue is None:
            return await super().purge_dead_letters(None)
        base = super().purge_dead_letters
        return sum([await base(q) for q in self.shards_of(queue)])

    # -- claim --------------------------------------------------------------------------

    def bind_records(self, backend: object) -> bool:
        """Never on a cluster: a task's record lives in its own slot, not its queue's."""
        return False

    async def claim(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        lease_seconds: float,
        owner: str,
        timeout: float,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due messages, earlier queues first: one CLAIM call per
        queue until the batch is full. When nothing is due, waits for a wake-up token on
        every queue at once (one ``BLPOP`` each), the next due time, or ``timeout``."""
        if limit <= 0 or not queues:
            return []
        limit = min(limit, MAX_BATCH)
        queues = self._in_turn(list(queues)) if self._shards else list(dict.fromkeys(queues))
        lease = repr(float(lease_seconds))
        client = await self._link.get()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        woken: list[str] = []
        while True:
            deliveries, wake_ms, reached = await self._claim_each(client, queues, limit, lease)
            # a token taken by the wait for a queue this claim never reached goes back
            missed = [queue for queue in woken if queue not in reached]
            if missed:
                await self._pass_on(client, missed)
            if deliveries:
                return deliveries
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            block = min(remaining, self._max_block)
            if wake_ms >= 0:
                block = min(block, wake_ms / 1000)
            # a queue whose claim just failed is not waited on: its node is down
            waiting = [q for q in queues if q not in self._failing] or queues
            woken = await self._wait_any(client, waiting, max(block, 0.001))
            if self._link.client is not client:
                raise BrokerError(f"the broker on {self._settings.redacted} was closed")

    async def _claim_each(
        self, client: redispy.AsyncClient, queues: list[str], limit: int, lease: str
    ) -> tuple[list[Delivery], int, set[str]]:
        """One CLAIM per queue in order until ``limit``: the deliveries, the ms until the
        next due time when none (-1: none), and the queues visited."""
        got: list[Delivery] = []
        wake_ms = -1
        reached: set[str] = set()
        failed: BrokerError | None = None
        if self._failing:
            queues = self._healthy_first(queues)
        try:
            for queue in queues:
                if len(got) >= limit:
                    break
                reached.add(queue)
                keys = list(self._queue_keys(queue).claim)
                args: list[str | bytes | int | float] = [limit - len(got), lease, MOVE_BATCH]
                try:
                    reply = await self._claim_once(client, [queue], keys, args)
                except BrokerError as exc:
                    # its node is down (or failing over): the other queues' nodes go on
                    failed = failed or exc
                    self._note_failure(queue, exc)
                    continue
                self._note_recovery(queue)
                if reply.claimed:
                    got += self._deliveries([queue], reply.claimed)
                elif reply.wake_ms >= 0 and (wake_ms < 0 or reply.wake_ms < wake_ms):
                    wake_ms = reply.wake_ms
        except BaseException:
            # the queues claimed so far: back at once, uncounted (a later call's own
            # claim is handed back by _claim_once)
            self._release_unsent(got)
            raise
        if failed is not None and not got and reached <= self._failing.keys():
            raise failed  # no queue could be claimed from
        return got, (0 if got else wake_ms), reached

    def _healthy_first(self, queues: list[str]) -> list[str]:
        """``queues`` with those whose claim failed lately moved to the end, and left out
        until ``_RETRY_FAILING`` seconds after their last failure (unless every queue is
        failing): a node that is down must not hold up the claims of the others."""
        now = asyncio.get_running_loop().time()
        failing = self._failing
        healthy = [q for q in queues if q not in failing]
        due = [q for q in queues if q in failing and now - failing[q] >= _RETRY_FAILING]
        return healthy + due if healthy else [q for q in queues if q in failing]

    def _note_failure(self, queue: str, exc: BrokerError) -> None:
        if queue not in self._failing:
            # the text, not the error: a record must not keep its traceback (and connections)
            log.warning("claiming from queue %r failed, the others go on: %s", queue, str(exc))
        self._failing[queue] = asyncio.get_running_loop().time()

    def _note_recovery(self, queue: str) -> None:
        if self._failing and self._failing.pop(queue, None) is not None:
            log.info("claiming from queue %r works again", queue)

    async def _wait_any(
        self, client: redispy.AsyncClient, queues: list[str], block: float
    ) -> list[str]:
        """Wait up to ``block`` seconds for a wake-up token on any of ``queues`` (one
        ``BLPOP`` each: their keys are in different slots); the queues whose wait took a
        token. When one takes a token the others are cancelled at once; when the first
        runs out of time the others (same timeout) are given a moment to end by
        themselves, so an idle round keeps its connections."""
        timeout = f"{block:.3f}"
        waits = {
            asyncio.ensure_future(command(client, "BLPOP", self._queue_keys(q).notify, timeout)): q
            for q in queues
        }
        loop = asyncio.get_running_loop()
        until = loop.time() + self._settings.operation_timeout + block
        try:
            pending: set[asyncio.Future[Any]] = set(waits)
            while pending:
                done, pending = await asyncio.wait(
                    pending, timeout=until - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
                if not done or not all(w.exception() for w in done):
                    break
                # only failures so far (a node down): the other queues' waits go on
            took = any(w.done() and not w.exception() and w.result() for w in waits)
            if pending and not took:
                # the first wait ran out of time: the others end within moments (the same
                # timeout), and a wait that ends by itself keeps its connection open
                await asyncio.wait(pending, timeout=_SETTLE)
        finally:
            for wait in waits:
                wait.cancel()
            # a cancelled read closes its connection (redis-py): nothing else to wait for
            await asyncio.gather(*waits, return_exceptions=True)
        woken: list[str] = []
        ended = False
        failure: BaseException | None = None
        for wait, queue in waits.items():
            if wait.cancelled():
                continue
            exc = wait.exception()
            if exc is not None:
                failure = failure or exc
                continue
            ended = True
            if wait.result() is not None:
                woken.append(queue)
        if failure is not None and not ended:
            raise BrokerError(
                f"claim on {self._settings.redacted} failed: {self._settings.describe(failure)}"
            )
        return woken

    async def _pass_on(self, client: redispy.AsyncClient, queues: list[str]) -> None:
        """Give ``queues`` their wake-up token back (one PASS_ON call each, pipelined)."""
        calls: list[ScriptCall] = [(PASS_ON, [self._queue_keys(q).notify], ()) for q in queues]
        try:
            await run_scripts(client, calls)
        except Exception as exc:  # a sleeping claimer then wakes at its next round
            log.debug("passing a wake-up on failed: %s", self._settings.describe(exc))
