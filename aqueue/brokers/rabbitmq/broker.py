"""The RabbitMQ broker: publishing, claiming and inspection over its channels and consumers.

See the package's docstring for the pieces and docs/brokers/rabbitmq.md for the whole story.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage

from aqueue.core.errors import BrokerError, IndeterminatePublish, PublishTimeout
from aqueue.core.protocols import (
    DEAD_LETTER_BODY_LIMIT,
    Capabilities,
    DeadLetter,
    Delivery,
    Lease,
    Outgoing,
)
from aqueue.core.routing import Router
from aqueue.transports.amqp.link import AMQP_ERRORS
from aqueue.transports.amqp.loop_end import LoopEndClose

from .channels import Channels, NotSent
from .consumer import Consumers
from .dedupe import Dedupe, make_dedupe
from .options import parse_options
from .topics import RabbitMQTopics
from .topology import (
    DEAD_AT_HEADER,
    LEVELS_MS,
    QUEUE_HEADER,
    REASON_HEADER,
    SIZE_HEADER,
    Topology,
    eta_ms,
)

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

    Its parts are attributes, for inspection and tests: :attr:`settings` (the connection),
    :attr:`options` (the rest), :attr:`topology` (queue names), :attr:`channels` (the
    connection and its channels) and :attr:`consumers` (consumers, claims, settlement).
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.settings, self.options = parse_options(url, options)
        self.topology = Topology(self.settings.prefix, self.options)
        self.capabilities = Capabilities(
            exact_size=False,
            delayed_delivery=True,
            # quorum queues: ordered by priority only within this process's prefetch window
            priorities=self.options.queue_type == "classic",
            dead_letters=True,
            shared=True,
            leases=False,
        )
        self.channels = Channels(self.settings, self.options, self.topology)
        self.consumers = Consumers(self.channels)
        #: control, replies and events (:class:`~aqueue.core.protocols.KeepsTopics`): fanout
        #: exchanges, exclusive queues and a stream (see :mod:`.topics`)
        self.topics = RabbitMQTopics(self.channels)
        #: published ids (see :mod:`.dedupe`); made on :meth:`connect`
        self.dedupe: Dedupe | None = None
        self._loop_end = LoopEndClose(self.close, self.settings.operation_timeout)

    def __repr__(self) -> str:
        return f"<RabbitMQBroker {self.settings.redacted} prefix={self.settings.prefix!r}>"

    async def connect(self) -> None:
        """Open the connection (channels and queues come on first use); idempotent."""
        await self.channels.connection()
        if self.dedupe is None:
            s = self.settings
            self.dedupe = make_dedupe(s.prefix, self.options, s.operation_timeout)
            self._loop_end.arm()

    def use_routing(self, router: Router) -> None:
        """Declare queues, exchanges and bindings as the app's routing says from now on
        (:class:`~aqueue.core.protocols.RoutesByExchange`)."""
        self.topology.router = router
        self.consumers.routing_changed()

    async def declare_queues(self, queues: Sequence[str]) -> None:
        """Declare a starting worker's queues, bindings and own broadcast queues."""
        await self.connect()
        async with asyncio.timeout(self.settings.operation_timeout * 4):
            for queue in queues:
                self.topology.check(queue)
                await self.channels.ensure_queue(queue)

    async def close(self) -> None:
        """Close the connection; deliveries still held settle nothing afterwards. Idempotent.

        Not calling it is quiet too: when the event loop ends, the broker closes itself.
        """
        self._loop_end.disarm()
        await self.topics.close()
        await self.consumers.close()
        await self.channels.close()
        if self.dedupe is not None:
            dedupe, self.dedupe = self.dedupe, None
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
            self.topology.check(m.queue)
        s = self.settings
        try:
            async with asyncio.timeout(s.operation_timeout):
                return await self._publish(messages)
        except TimeoutError:
            why = (
                "RabbitMQ has blocked the connection (a memory or disk resource alarm)"
                if self.channels.blocked()
                else "no confirm from RabbitMQ"
            )
            raise PublishTimeout(
                f"publishing {len(messages)} message(s) to {s.redacted} did not complete "
                f"within {s.operation_timeout}s: {why}; they may or may not be stored"
            ) from None

    async def _publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        await self.connect()
        dedupe = self.dedupe
        assert dedupe is not None
        firsts: dict[str, int] = {}
        for i, m in enumerate(messages):
            firsts.setdefault(m.id, i)
        candidates = list(firsts.values())
        now = time.time()
        ttls = [
            self.options.dedupe_ttl + max(0.0, (messages[i].eta or now) - now) for i in candidates
        ]
        fresh = await dedupe.add([messages[i].id for i in candidates], ttls)
        accepted = [i for i, ok in zip(candidates, fresh, strict=True) if ok]
        out = [False] * len(messages)
        if not accepted:
            return out
        channels = self.channels
        try:
            for m in {(m.queue, m.exchange): m for m in (messages[i] for i in accepted)}.values():
                try:
                    if m.exchange:
                        await channels.ensure_routes(m.exchange)
                    else:
                        await channels.ensure_queue(m.queue)
                except AMQP_ERRORS as exc:
                    raise channels.publish_error(NotSent(exc), m.queue) from None
            outcomes = await asyncio.gather(
                *(
                    channels.send(
                        m.queue,
                        m.id,
                        m.body,
                        m.priority,
                        eta_ms(m.eta),
                        routing_key=m.routing_key if m.exchange else None,
                        exchange=m.exchange,
                    )
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
            errors = [self._publish_error(exc, messages[i]) for i, exc in failed]
            for error in errors:
                if isinstance(error, IndeterminatePublish):
                    raise error
            raise errors[0]
        for i in accepted:
            out[i] = True
        return out

    def _publish_error(self, exc: BaseException, m: Outgoing) -> BrokerError:
        if m.exchange and isinstance(exc, aiormq.exceptions.PublishError):
            # returned: nothing is bound to take it (a queue is deleted, or for a broadcast,
            # no worker consumes it)
            return BrokerError(
                f"RabbitMQ could not route a message for exchange {m.exchange!r} with routing "
                f"key {m.routing_key!r}: no queue is bound to match it (for a broadcast: no "
                "worker consumes it right now); it was not stored"
            )
        return self.channels.publish_error(exc, m.queue)

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
            self.topology.check(queue)
        await self.connect()
        return await self.consumers.claim(queues, limit, timeout)

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        """Nothing to extend (the connection is the lease): returns the leases whose channel
        died or that were settled. Thread-safe, no I/O."""
        return self.consumers.renew(leases)

    # -- inspection -----------------------------------------------------------------

    async def size(self, queue: str) -> int:
        """Ready and delayed messages on the server, plus what this process holds.

        Messages that other processes hold unacknowledged are not visible over AMQP.
        """
        self.topology.check(queue)
        async with asyncio.timeout(self.settings.operation_timeout * 4):
            counts = await self._existing(queue)
        return sum(counts.values()) + self.consumers.local(queue)

    async def _existing(self, queue: str) -> dict[str, int]:
        """Ready counts of the work queue and the delay queues of ``queue`` that exist."""
        work = self.topology.work(queue)
        counts = await self.channels.probe([work])
        if work in counts:  # delay queues are declared after their work queue
            counts.update(
                await self.channels.probe([self.topology.delay(queue, n) for n in LEVELS_MS])
            )
        return counts

    async def purge(self, queue: str) -> int:
        """Delete ready and delayed messages (and unclaimed ones buffered here)."""
        self.topology.check(queue)
        purged = 0
        async with asyncio.timeout(self.settings.operation_timeout * 4):
            existing = await self._existing(queue)
            channel = await self.channels.channel("admin")
            for name in existing:
                amqp_queue = await channel.get_queue(name, ensure=False)
                result = await amqp_queue.purge()
                purged += int(result.message_count or 0)
            purged += await self.consumers.drop_buffered(queue)
        return purged

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters newest first, read from ``<queue>.dlq`` (get, then requeue them all).

        With ``queue=None``, the dead-letter queues of the queues this process has used
        (AMQP cannot list queues). Best effort: at most ``dead_letter_scan`` letters are
        read per queue, oldest first.
        """
        queues = [queue] if queue is not None else sorted(self.channels.known)
        letters: list[DeadLetter] = []
        conn = await self.channels.connection()
        timeout = self.settings.operation_timeout * 4
        for q in queues:
            self.topology.check(q)
            async with asyncio.timeout(timeout):
                channel = await conn.channel(publisher_confirms=False)
            try:
                async with asyncio.timeout(timeout):
                    try:
                        amqp_queue = await channel.declare_queue(self.topology.dlq(q), passive=True)
                    except aiormq.exceptions.ChannelNotFoundEntity:
                        continue
                    last: AbstractIncomingMessage | None = None
                    for _ in range(self.options.dead_letter_scan):
                        message = await amqp_queue.get(no_ack=False, fail=False)
                        if message is None:
                            break
                        last = message
                        letters.append(_dead_letter_of(message, q))
                    if last is not None:
                        await last.nack(multiple=True, requeue=True)
            finally:
                if not channel.is_closed:
                    await channel.close()
        # newest first; of equal times, the one read last first (a stable sort of the
        # reversed list)
        letters.reverse()
        letters.sort(key=lambda letter: letter.at, reverse=True)
        return letters[:limit]

    # -- dead letters (aqueue.core.protocols.ReplaysDeadLetters) ---------------------------

    async def replay_dead_letter(self, letter: DeadLetter, message: Outgoing) -> bool:
        """Find ``letter`` in ``<queue>.dlq`` (get, up to ``dead_letter_scan``), publish
        ``message`` (its id forgotten by the de-duplication first), then ack the letter; the
        others read on the way go back when the channel closes.

        AMQP cannot look at a queue without consuming it, so, unlike the other brokers, a
        replay is not refused when the id is queued again already.
        """
        queue = letter.queue
        self.topology.check(queue)
        conn = await self.channels.connection()
        timeout = self.settings.operation_timeout * 4
        async with asyncio.timeout(timeout):
            channel = await conn.channel(publisher_confirms=False)
        try:
            async with asyncio.timeout(timeout):
                try:
                    dlq = await channel.declare_queue(self.topology.dlq(queue), passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return False
                for _ in range(self.options.dead_letter_scan):
                    got = await dlq.get(no_ack=False, fail=False)
                    if got is None:
                        return False
                    found = _dead_letter_of(got, queue)
                    if (found.id, found.at, found.reason) == (letter.id, letter.at, letter.reason):
                        break
                else:
                    return False
                if self.dedupe is not None:
                    await self.dedupe.discard([message.id])
                [published] = await self.publish([message])
                if published:
                    await got.ack()
                return published
        finally:
            if not channel.is_closed:
                await channel.close()  # what was read and not acked goes back

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        """Purge ``<queue>.dlq`` (``None``: of the queues this process has used)."""
        queues = [queue] if queue is not None else sorted(self.channels.known)
        purged = 0
        conn = await self.channels.connection()
        timeout = self.settings.operation_timeout * 4
        for name in queues:
            self.topology.check(name)
            async with asyncio.timeout(timeout):
                channel = await conn.channel(publisher_confirms=False)
            try:
                async with asyncio.timeout(timeout):
                    try:
                        dlq = await channel.declare_queue(self.topology.dlq(name), passive=True)
                    except aiormq.exceptions.ChannelNotFoundEntity:
                        continue
                    result = await dlq.purge()
                    purged += int(result.message_count or 0)
            finally:
                if not channel.is_closed:
                    await channel.close()
        return purged

    async def delete_exchanges(self, exchanges: Sequence[str]) -> None:
        """Delete the app's exchanges (by their names in ``task_queues``): an administrative
        helper, as :meth:`delete_queues`."""
        await self.channels.delete_exchanges(exchanges)

    async def delete_queues(self, queues: Sequence[str]) -> None:
        """Delete every RabbitMQ queue of ``queues``: work, dead letters and delay levels.

        An administrative helper (tests, teardown); the messages in them are gone.
        """
        for queue in queues:
            consumer = self.consumers.consumers.get(queue)
            if consumer is not None:
                self.consumers.drop(consumer)
                await asyncio.sleep(0)  # let the basic.cancel go out first
        await self.channels.delete_queues(queues)


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
