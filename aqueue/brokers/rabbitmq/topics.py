"""The RabbitMQ broker's :class:`~aqueue.core.protocols.Topics`: fanout exchanges, exclusive
queues, and a stream for what is kept.

AMQP has no log that any number of readers read on their own, except a stream queue, and a
stream cannot be exclusive or expire. So a topic is built of three pieces, each where it is
cheapest:

* ``control`` (and any topic but ``events``-like ones, see :data:`LIVE_TOPICS`): a durable
  fanout exchange ``<prefix>.topic.<name>``. Each subscription declares its own exclusive,
  auto-delete classic queue ``<prefix>.topic.<name>.<random>`` bound to it before
  ``subscribe`` returns, and consumes it. A publish with nobody subscribed is dropped by the
  exchange: nobody listening costs nothing.
* ``reply.<token>``: the subscriber's exclusive queue ``<prefix>.reply.<token>`` (messages
  expire after a minute), published to through the default exchange, not ``mandatory``:
  a reply to a caller that is gone is dropped without an error or a closed channel.
* every other topic (``events``) is also kept: the first publish of a broker declares the
  stream queue ``<prefix>.topic.<name>.stream`` (``x-max-length-bytes`` = cap x 1 KiB, in
  small segments: a stream is trimmed by whole segments, so "about the cap" in bytes, not a
  count) and binds it to the exchange. ``subscribe(since=t)`` consumes the stream from the
  timestamp ``t`` on its own channel (prefetch and acks, as streams require); each message
  carries its publish time (``x-aqueue-at``, milliseconds) so that what a stream chunk holds
  from before ``t`` is skipped. ``since=None`` needs no stream: a fresh exclusive queue.

Subscriptions and the publishing channel are channels of the broker's one connection (aiormq
channels, without publisher confirms: a topic is best effort). A subscription whose
channel or connection died opens again on its next ``get`` (a stream resumes after the last
offset it read; a queue starts afresh, what was published meanwhile is lost).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage

from aqueue.core.errors import AqueueError, BrokerError, ConfigurationError, SubscriptionClosed
from aqueue.core.protocols import REPLY_TOPIC_PREFIX
from aqueue.core.routing import Exchange
from aqueue.transports.amqp import aiormq_hooks
from aqueue.transports.amqp.link import AMQP_ERRORS

from .channels import Channels

__all__ = ["LIVE_TOPICS", "RabbitMQSubscription", "RabbitMQTopics"]

log = logging.getLogger("aqueue.broker.rabbitmq")

#: topics nobody reads late: no stream is kept for them
LIVE_TOPICS = frozenset({"control"})
#: header of every topic message: its publish time, integer unix milliseconds
AT_HEADER = "x-aqueue-at"
#: a reply queue's messages expire after this many milliseconds
REPLY_TTL_MS = 60_000
#: a subscription's queue keeps at most this many unread messages (the oldest go first)
QUEUE_CAP = 10_000
#: bytes of stream per message of the cap
BYTES_PER_MESSAGE = 1024
#: messages a subscription holds unacknowledged (its local buffer's bound)
PREFETCH = 1000
#: seconds before ``since`` a stream is read from: a chunk's timestamp is the server's clock,
#: the ``x-aqueue-at`` header the publisher's; what is before ``since`` is skipped here
_CLOCK_MARGIN = 5.0


def _is_reply(topic: str) -> bool:
    return topic.startswith(REPLY_TOPIC_PREFIX)


def _kept(topic: str) -> bool:
    return not _is_reply(topic) and topic not in LIVE_TOPICS


def stream_args(cap: int) -> dict[str, Any]:
    """The arguments of a topic's stream queue, for a cap of ``cap`` messages."""
    size = max(cap, 1) * BYTES_PER_MESSAGE
    return {
        "x-queue-type": "stream",
        "x-max-length-bytes": size,
        # a stream drops whole segments: small ones keep it near its size
        "x-stream-max-segment-size-bytes": max(64 * 1024, size // 8),
    }


class RabbitMQTopics:
    """Topics of one RabbitMQ broker, on its connection (:class:`Channels`)."""

    def __init__(self, channels: Channels) -> None:
        self._channels = channels
        self._prefix = channels.settings.prefix
        self._timeout = channels.settings.operation_timeout
        self._pub: aiormq.abc.AbstractChannel | None = None
        self._pub_lock = asyncio.Lock()
        self._open: set[RabbitMQSubscription] = set()
        # what this made Channels.declared hold (declared once per connection)
        self._marks: set[str] = set()

    # -- names ------------------------------------------------------------------------

    def exchange(self, topic: str) -> str:
        """The fanout exchange of ``topic`` (not a reply topic)."""
        return f"{self._prefix}.topic.{topic}"

    def stream(self, topic: str) -> str:
        """The stream queue that keeps ``topic``."""
        return f"{self._prefix}.topic.{topic}.stream"

    def reply_queue(self, topic: str) -> str:
        """The queue of reply topic ``topic``."""
        return f"{self._prefix}.{topic}"

    # -- declarations (once per connection: Channels.declared is reset with it) ---------

    async def _ensure_exchange(self, topic: str) -> None:
        await self._channels.ensure_exchange(Exchange(f"topic.{topic}", "fanout"))
        self._marks.add(f"exchange:{self.exchange(topic)}")

    async def _ensure_stream(self, topic: str, cap: int) -> None:
        name = self.stream(topic)
        mark = f"topic-stream:{name}"
        if mark in self._channels.declared:
            return
        try:
            await self._channels.declare(name, stream_args(cap))
        except ConfigurationError:
            # declared by another process with another cap: use it as it is
            log.debug("stream %s exists with other arguments; kept as is", name)
        channel = await self._channels.channel("admin")
        queue = await channel.get_queue(name, ensure=False)
        await queue.bind(self.exchange(topic), "")
        self._channels.declared.add(mark)
        self._marks.add(mark)

    async def _publisher(self) -> aiormq.abc.AbstractChannel:
        channel = self._pub
        if channel is not None and not channel.is_closed:
            return channel
        async with self._pub_lock:
            channel = self._pub
            if channel is None or channel.is_closed:
                if channel is not None:
                    # RabbitMQ closes a channel that published to a missing exchange (one
                    # deleted by hand): declare ours again
                    self._channels.declared.difference_update(self._marks)
                conn = await self._channels.connection()
                channel = self._pub = await aiormq_hooks.consuming_channel(conn)
            return channel

    # -- the protocol -------------------------------------------------------------------

    async def publish(self, topic: str, bodies: Sequence[bytes], *, cap: int) -> None:
        """Publish ``bodies`` (no confirms, not ``mandatory``): to the topic's exchange, or
        to a reply topic's queue through the default exchange."""
        if not bodies:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._publish(topic, bodies, cap)
        except TimeoutError:
            raise BrokerError(
                f"publishing to topic {topic!r} on {self._channels.settings.redacted} did not "
                f"complete within {self._timeout:g}s"
            ) from None
        except AMQP_ERRORS as exc:
            raise BrokerError(
                f"publishing to topic {topic!r} failed: {self._channels.scrub(exc)}"
            ) from None

    async def _publish(self, topic: str, bodies: Sequence[bytes], cap: int) -> None:
        if _is_reply(topic):
            exchange, routing_key = "", self.reply_queue(topic)
        else:
            exchange, routing_key = self.exchange(topic), ""
            await self._ensure_exchange(topic)
            if _kept(topic):
                await self._ensure_stream(topic, cap)
        channel = await self._publisher()
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=1, headers={AT_HEADER: int(time.time() * 1000)}
        )
        for body in bodies:
            await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=False,
            )

    async def subscribe(self, topic: str, *, since: float | None = None) -> RabbitMQSubscription:
        """A subscription whose queue is declared, bound and consumed (or whose stream is
        consumed from ``since``) when this returns."""
        now = time.time()
        try:
            async with asyncio.timeout(self._timeout):
                if not _is_reply(topic):
                    await self._ensure_exchange(topic)
                # A fresh queue reads what is published from now on: all there is when
                # nothing is kept (no stream yet), and all that is wanted from a `since` in
                # the future (nothing was published after it yet).
                if since is not None and (
                    since > now
                    or not _kept(topic)
                    or await self._channels.ready_count(self.stream(topic)) is None
                ):
                    since = None
                sub = RabbitMQSubscription(self, topic, since)
                await sub.start()
        except TimeoutError:
            raise BrokerError(
                f"subscribing to topic {topic!r} on {self._channels.settings.redacted} did "
                f"not complete within {self._timeout:g}s"
            ) from None
        except AMQP_ERRORS as exc:
            raise BrokerError(
                f"subscribing to topic {topic!r} failed: {self._channels.scrub(exc)}"
            ) from None
        self._open.add(sub)
        return sub

    async def close(self) -> None:
        """Close the subscriptions still open and the publishing channel."""
        for sub in list(self._open):
            await sub.close()
        channel, self._pub = self._pub, None
        if channel is not None and not channel.is_closed:
            try:
                async with asyncio.timeout(self._timeout):
                    await channel.close()
            except (TimeoutError, *AMQP_ERRORS):
                pass  # the connection closes next anyway

    def scrub(self, exc: BaseException) -> str:
        """An exception as text, without the password."""
        return self._channels.scrub(exc)

    def _closed(self, sub: RabbitMQSubscription) -> None:
        self._open.discard(sub)

    async def _open_channel(self) -> aiormq.abc.AbstractChannel:
        conn = await self._channels.connection()
        channel = await aiormq_hooks.consuming_channel(conn)
        await channel.basic_qos(prefetch_count=PREFETCH)
        return channel


class RabbitMQSubscription:
    """A reader of one topic: its own channel, consuming its own queue or the stream.

    Deliveries are buffered as they arrive (at most ``PREFETCH`` unacknowledged); ``get``
    hands them out and acknowledges them in one ``multiple`` ack.
    """

    def __init__(self, topics: RabbitMQTopics, topic: str, since: float | None) -> None:
        self._topics = topics
        self._topic = topic
        #: stream reads only: skip messages published before this (unix milliseconds)
        self._since_ms = None if since is None else int(since * 1000)
        self._offset: int | datetime.datetime | None = None
        if since is not None:
            start = max(0.0, since - _CLOCK_MARGIN)
            self._offset = datetime.datetime.fromtimestamp(int(start), datetime.UTC)
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._buffer: deque[tuple[int | None, bytes | None]] = deque()
        self._arrived = asyncio.Event()
        self._closed = False

    async def start(self) -> None:
        """Open its channel, declare and bind its queue (or find the stream), consume."""
        topics = self._topics
        channel = await topics._open_channel()
        try:
            arguments: dict[str, Any] = {}
            if self._since_ms is not None:
                queue = topics.stream(self._topic)
                arguments["x-stream-offset"] = self._offset
            else:
                if _is_reply(self._topic):
                    name = topics.reply_queue(self._topic)
                    args: dict[str, Any] = {"x-message-ttl": REPLY_TTL_MS}
                else:
                    name = f"{topics.exchange(self._topic)}.{uuid.uuid4().hex[:12]}"
                    args = {}
                args |= {"x-queue-type": "classic", "x-max-length": QUEUE_CAP}
                declared = await channel.queue_declare(
                    name, exclusive=True, auto_delete=True, arguments=args
                )
                assert declared is not None and declared.queue is not None
                queue = declared.queue
                if not _is_reply(self._topic):
                    await channel.queue_bind(queue, topics.exchange(self._topic), routing_key="")
            await channel.basic_consume(queue, self._deliver, arguments=arguments)
        except BaseException:
            if not channel.is_closed:
                await channel.close()
            raise
        self._channel = channel

    async def _deliver(self, message: DeliveredMessage) -> None:
        """Called in delivery order (aiormq starts a task per delivery, in order; this never
        awaits, so each is buffered in the order it came)."""
        delivery = message.delivery
        assert isinstance(delivery, aiormq.spec.Basic.Deliver)
        tag = delivery.delivery_tag
        assert tag is not None
        headers = message.header.properties.headers or {}
        if self._since_ms is not None:
            offset = headers.get("x-stream-offset")
            if isinstance(offset, int):
                self._offset = offset + 1  # where to resume on a new channel
            at = headers.get(AT_HEADER)
            if isinstance(at, int) and at < self._since_ms:
                # from a chunk that began before `since`: acknowledged with the rest, skipped
                self._buffer.append((tag, None))
                self._arrived.set()
                return
            self._since_ms = 0  # in publish order from here on: nothing more to skip
        self._buffer.append((tag, message.body))
        self._arrived.set()

    async def get(self, timeout: float) -> list[bytes]:
        """The buffered messages, waiting up to ``timeout`` seconds for the first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while not self._closed:
            self._arrived.clear()  # before looking: what arrives from now on sets it
            if self._buffer:
                bodies, last = self._take()
                channel = self._channel
                if last is not None and channel is not None and not channel.is_closed:
                    try:
                        await channel.basic_ack(last, multiple=True)
                    except AMQP_ERRORS:
                        pass  # the channel died: its unacked deliveries are moot
                if bodies:
                    return bodies
            channel = self._channel
            if channel is None or channel.is_closed:
                await self._reopen()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            try:
                # in rounds of a second at most, so a dead channel is noticed
                async with asyncio.timeout(min(remaining, 1.0)):
                    await self._arrived.wait()
            except TimeoutError:
                pass
        raise SubscriptionClosed(f"the subscription to topic {self._topic!r} is closed")

    def _take(self) -> tuple[list[bytes], int | None]:
        """The buffered bodies, and the last delivery tag (to acknowledge up to)."""
        bodies: list[bytes] = []
        last: int | None = None
        while self._buffer:
            tag, body = self._buffer.popleft()
            if tag is not None:
                last = tag
            if body is not None:
                bodies.append(body)
        return bodies, last

    async def _reopen(self) -> None:
        """Consume on a new channel (the old one, or the connection, died). What the old
        one delivered is still handed out, never acknowledged (its tags died with it)."""
        self._buffer = deque((None, body) for _, body in self._buffer if body is not None)
        try:
            async with asyncio.timeout(self._topics._timeout):
                await self.start()
        except TimeoutError:
            raise BrokerError(f"re-subscribing to topic {self._topic!r} timed out") from None
        except (AqueueError, *AMQP_ERRORS) as exc:
            raise BrokerError(
                f"re-subscribing to topic {self._topic!r} failed: {self._topics.scrub(exc)}"
            ) from None

    async def close(self) -> None:
        """Close its channel (its exclusive queue goes with it); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        self._topics._closed(self)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            try:
                async with asyncio.timeout(self._topics._timeout):
                    await channel.close()
            except (TimeoutError, *AMQP_ERRORS):
                pass  # the connection is going: the queue goes with it
