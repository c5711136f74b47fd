"""``amqp://`` and ``amqps://``: the RabbitMQ broker on aio-pika.

The connection is the lease: a claimed message stays unacknowledged on this process's
consuming channel until it is settled, and RabbitMQ hands it to another consumer the moment
that channel or connection dies. Fencing follows from that: a delivery remembers the channel
generation it came from and settles nothing once that channel is gone.

Topology (see :class:`~aqueue.brokers.rabbitmq_topology.Topology`): a quorum work queue per
aqueue queue with a delivery limit and at-least-once dead-lettering into ``<queue>.dlq``;
per-delay-level TTL queues that dead-letter into the work queue. Publishes are confirmed
and ``mandatory``. The pieces: :mod:`~aqueue.brokers.rabbitmq_link` (connection, channels,
declarations, publishing), :mod:`~aqueue.brokers.rabbitmq_consumer` (consumers, claims,
settlement), :mod:`~aqueue.brokers.rabbitmq_acks` (acks batched into ``multiple`` frames),
:mod:`~aqueue.brokers.rabbitmq_delivery` (what a claim hands out),
:mod:`~aqueue.brokers.rabbitmq_topology` (settings, names, de-duplication).
docs/brokers/rabbitmq.md says it all in plain words.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage

from aqueue.core.errors import IndeterminatePublish, PublishTimeout
from aqueue.core.protocols import (
    DEAD_LETTER_BODY_LIMIT,
    Capabilities,
    DeadLetter,
    Delivery,
    Lease,
    Outgoing,
)

from .rabbitmq_consumer import Consumers
from .rabbitmq_delivery import RabbitMQDelivery
from .rabbitmq_link import AMQP_ERRORS, Link, LoopEndClose, NotSent
from .rabbitmq_topology import (
    DEAD_AT_HEADER,
    LEVELS_MS,
    QUEUE_HEADER,
    REASON_HEADER,
    SIZE_HEADER,
    Dedupe,
    Topology,
    eta_ms,
    make_dedupe,
    parse_settings,
)

__all__ = ["RabbitMQBroker", "RabbitMQDelivery"]

log = logging.getLogger("aqueue.broker.rabbitmq")


class RabbitMQBroker:
    """A :class:`~aqueue.core.protocols.Broker` on RabbitMQ >= 3.10 (quorum queues).

    Args:
        url: ``amqp://user:password@host:port/vhost`` or ``amqps://...``; query parameters
            may carry the options below (and aio-pika's TLS parameters ``cafile``,
            ``certfile``, ``keyfile``, ``no_verify_ssl``); other parameters are dropped.
        **options: ``prefix`` (default ``"aqueue"``), ``queue_type`` (``"quorum"`` or
            ``"classic"``), ``delivery_limit`` (quorum, default 20), ``max_priority``
            (classic, default 9), ``prefetch`` (default: the first claim's limit),
            ``heartbeat`` (seconds, 30), ``connect_timeout`` (10), ``operation_timeout``
            (10), ``consumer_timeout`` (ms, sets ``x-consumer-timeout``), ``dedupe_url``
            (a Redis URL for cross-process de-duplication), ``dedupe_ttl`` (seconds,
            86400; 0 disables), ``dead_letter_scan`` (1000), ``watchdog_interval`` (1.5),
            ``idle_timeout`` (5).

    Queue arguments must be the same in every process sharing a queue: RabbitMQ refuses a
    declaration whose arguments differ, reported as a
    :class:`~aqueue.core.errors.ConfigurationError`.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._settings = parse_settings(url, options)
        self._topo = Topology(self._settings)
        self.capabilities = Capabilities(
            exact_size=False,
            delayed_delivery=True,
            # quorum queues: ordered by priority only within this process's prefetch window
            priorities=self._settings.queue_type == "classic",
            dead_letters=True,
            shared=True,
            leases=False,
        )
        self._link = Link(self._settings, self._topo)
        self._consumers = Consumers(self._link)
        self._dedupe: Dedupe | None = None
        self._loop_end = LoopEndClose(self.close, self._settings.operation_timeout)

    def __repr__(self) -> str:
        return f"<RabbitMQBroker {self._settings.redacted} prefix={self._settings.prefix!r}>"

    async def connect(self) -> None:
        """Open the connection (channels and queues come on first use); idempotent."""
        await self._link.connection()
        if self._dedupe is None:
            self._dedupe = make_dedupe(self._settings)
            self._loop_end.arm()

    async def close(self) -> None:
        """Close the connection; deliveries still held settle nothing afterwards. Idempotent.

        Not calling it is quiet too: when the event loop ends, the broker closes itself.
        """
        self._loop_end.disarm()
        await self._consumers.close()
        await self._link.close()
        if self._dedupe is not None:
            dedupe, self._dedupe = self._dedupe, None
            await dedupe.close()

    # -- publishing -----------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Publish with confirms (``mandatory``, persistent), many in flight at once.

        Returns ``False`` for an id this process (or, with ``dedupe_url``, any process)
        published within ``dedupe_ttl``: RabbitMQ itself has no de-duplication.

        Raises:
            BrokerError: a message was unroutable (its queue was deleted) or nacked, or
                nothing could be sent.
            IndeterminatePublish: the connection died before the confirms arrived.
            PublishTimeout: no confirm within ``operation_timeout`` (e.g. a resource alarm
                blocked the connection).
        """
        if not messages:
            return []
        for m in messages:
            self._topo.check(m.queue)
        s = self._settings
        try:
            async with asyncio.timeout(s.operation_timeout):
                return await self._publish(messages)
        except TimeoutError:
            why = (
                "RabbitMQ has blocked the connection (a memory or disk resource alarm)"
                if self._link.blocked()
                else "no confirm from RabbitMQ"
            )
            raise PublishTimeout(
                f"publishing {len(messages)} message(s) to {s.redacted} did not complete "
                f"within {s.operation_timeout}s: {why}; they may or may not be stored"
            ) from None

    async def _publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        await self.connect()
        dedupe = self._dedupe
        assert dedupe is not None
        firsts: dict[str, int] = {}
        for i, m in enumerate(messages):
            firsts.setdefault(m.id, i)
        candidates = list(firsts.values())
        now = time.time()
        ttls = [
            self._settings.dedupe_ttl + max(0.0, (messages[i].eta or now) - now) for i in candidates
        ]
        fresh = await dedupe.add([messages[i].id for i in candidates], ttls)
        accepted = [i for i, ok in zip(candidates, fresh, strict=True) if ok]
        out = [False] * len(messages)
        if not accepted:
            return out
        link = self._link
        try:
            for queue in {messages[i].queue for i in accepted}:
                try:
                    await link.ensure_queue(queue)
                except AMQP_ERRORS as exc:
                    raise link.publish_error(NotSent(exc), queue) from None
            outcomes = await asyncio.gather(
                *(
                    link.send(m.queue, m.id, m.body, m.priority, eta_ms(m.eta))
                    for m in (messages[i] for i in accepted)
                ),
                return_exceptions=True,
            )
        except BaseException:
            await asyncio.shield(dedupe.discard([messages[i].id for i in accepted]))
            raise
        failed = [
            (i, exc)
            for i, exc in zip(accepted, outcomes, strict=True)
            if isinstance(exc, BaseException)
        ]
        if failed:
            # Not stored, or unknown: forget the ids so that a re-send is published again.
            # For an unknown outcome that may duplicate the message; losing it is worse.
            await dedupe.discard([messages[i].id for i, _ in failed])
            errors = [link.publish_error(exc, messages[i].queue) for i, exc in failed]
            for error in errors:
                if isinstance(error, IndeterminatePublish):
                    raise error
            raise errors[0]
        for i in accepted:
            out[i] = True
        return out

    # -- consuming ------------------------------------------------------------------

    async def claim(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        lease_seconds: float,
        owner: str,
        timeout: float,
    ) -> list[Delivery]:
        """Take up to ``limit`` delivered messages, earlier queues first, then priority.

        One consumer per queue (manual acks, prefetch = ``prefetch`` or the first claim's
        ``limit``, raised when a claim asks for more) feeds an in-process buffer. The
        ``lease_seconds`` and ``owner`` are not used: the connection is the lease.
        Cancel-safe: nothing is taken before the last await.
        """
        if limit <= 0:
            return []
        for queue in queues:
            self._topo.check(queue)
        await self.connect()
        return await self._consumers.claim(queues, limit, timeout)

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        """Nothing to extend (the connection is the lease): returns the leases whose channel
        died or that were settled. Thread-safe, no I/O."""
        return self._consumers.renew(leases)

    # -- inspection -----------------------------------------------------------------

    async def size(self, queue: str) -> int:
        """Ready and delayed messages on the server, plus what this process holds.

        Messages that other processes hold unacknowledged are not visible over AMQP.
        """
        self._topo.check(queue)
        async with asyncio.timeout(self._settings.operation_timeout * 4):
            counts = await self._existing(queue)
        return sum(counts.values()) + self._consumers.local(queue)

    async def _existing(self, queue: str) -> dict[str, int]:
        """Ready counts of the work queue and the delay queues of ``queue`` that exist."""
        work = self._topo.work(queue)
        counts = await self._link.probe([work])
        if work in counts:  # delay queues are declared after their work queue
            counts.update(await self._link.probe([self._topo.delay(queue, n) for n in LEVELS_MS]))
        return counts

    async def purge(self, queue: str) -> int:
        """Delete ready and delayed messages (and unclaimed ones buffered here)."""
        self._topo.check(queue)
        purged = 0
        async with asyncio.timeout(self._settings.operation_timeout * 4):
            existing = await self._existing(queue)
            channel = await self._link.channel("admin")
            for name in existing:
                amqp_queue = await channel.get_queue(name, ensure=False)
                result = await amqp_queue.purge()
                purged += int(result.message_count or 0)
            purged += await self._consumers.drop_buffered(queue)
        return purged

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters newest first, read from ``<queue>.dlq`` (get, then requeue them all).

        With ``queue=None``, the dead-letter queues of the queues this process has used
        (AMQP cannot list queues). Best effort: at most ``dead_letter_scan`` letters are
        read per queue, oldest first.
        """
        queues = [queue] if queue is not None else sorted(self._link.known)
        letters: list[tuple[float, int, DeadLetter]] = []
        conn = await self._link.connection()
        order = itertools.count()
        timeout = self._settings.operation_timeout * 4
        for q in queues:
            self._topo.check(q)
            async with asyncio.timeout(timeout):
                channel = await conn.channel(publisher_confirms=False)
            try:
                async with asyncio.timeout(timeout):
                    try:
                        amqp_queue = await channel.declare_queue(self._topo.dlq(q), passive=True)
                    except aiormq.exceptions.ChannelNotFoundEntity:
                        continue
                    last: AbstractIncomingMessage | None = None
                    for _ in range(self._settings.dead_letter_scan):
                        message = await amqp_queue.get(no_ack=False, fail=False)
                        if message is None:
                            break
                        last = message
                        letter = _dead_letter_of(message, q)
                        letters.append((letter.at, next(order), letter))
                    if last is not None:
                        await last.nack(multiple=True, requeue=True)
            finally:
                if not channel.is_closed:
                    await channel.close()
        letters.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [letter for _, _, letter in letters[:limit]]

    async def delete_queues(self, queues: Sequence[str]) -> None:
        """Delete every RabbitMQ queue of ``queues``: work, dead letters and delay levels.

        An administrative helper (tests, teardown); the messages in them are gone.
        """
        for queue in queues:
            consumer = self._consumers.consumers.get(queue)
            if consumer is not None:
                self._consumers.drop(consumer)
                await asyncio.sleep(0)  # let the basic.cancel go out first
        await self._link.delete_queues(queues)


def _dead_letter_of(message: AbstractIncomingMessage, queue: str) -> DeadLetter:
    """A dead letter from aqueue's headers, or from RabbitMQ's ``x-death`` (delivery limit).

    Its body is the start of the message (what aqueue stored; RabbitMQ's own dead-lettering
    keeps the whole message, cut here), its size the original message's.
    """
    headers = message.headers or {}
    reason = headers.get(REASON_HEADER)
    at_ms = headers.get(DEAD_AT_HEADER)
    at = at_ms / 1000 if isinstance(at_ms, int) else 0.0
    if not isinstance(reason, str):
        reason = "unknown"
        deaths = headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            death = deaths[0]  # the most recent death comes first
            why = death.get("reason")
            if isinstance(why, bytes):
                why = why.decode(errors="replace")
            if isinstance(why, str):
                reason = why
            when = death.get("time")
            if isinstance(when, datetime.datetime):
                at = when.timestamp()
    if not at and message.timestamp is not None:
        at = message.timestamp.timestamp()
    original = headers.get(QUEUE_HEADER)
    size = headers.get(SIZE_HEADER)
    return DeadLetter(
        id=message.message_id or "",
        queue=original if isinstance(original, str) else queue,
        reason=reason,
        body=message.body[:DEAD_LETTER_BODY_LIMIT],
        at=at,
        size=size if isinstance(size, int) else len(message.body),
    )
