"""The AMQP side of the RabbitMQ broker: one connection, its channels, queue declarations
and confirmed publishes.

Reconnection is lazy and explicit (not aio-pika's ``RobustConnection``): a lost connection
or channel is noticed through close callbacks, everything that depended on it is fenced at
once, and the next call opens a new one and declares the topology again. That keeps the
channel a delivery came from knowable, which is what fencing needs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, DeliveryMode
from aiormq.abc import DeliveredMessage
from pamqp.header import ContentHeader

from aqueue.core.errors import BrokerError, ConfigurationError, IndeterminatePublish

from .rabbitmq_acks import Acks
from .rabbitmq_topology import (
    CONTENT_TYPE,
    ETA_HEADER,
    RabbitSettings,
    Topology,
    delay_level,
)

log = logging.getLogger("aqueue.broker.rabbitmq")

#: what aiormq raises when a channel or the connection fails under a call
AMQP_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)

#: after a queue vanished, wait this long for someone else to declare it before declaring
#: it here: RabbitMQ 3.10 can attach a consumer whose channel has not seen the deletion yet
#: to the new queue, where it never receives anything
REDECLARE_GRACE = 0.5

ChannelKind = Literal["pub", "admin", "watch"]
#: a consumer called inline by the consuming channel's reader (see :func:`deliver_inline`)
InlineConsumer = Callable[[DeliveredMessage], None]
#: called inline by a channel's reader with each returned message (see :func:`hear_returns`)
ReturnListener = Callable[[DeliveredMessage], None]


class NotSent(Exception):
    """A publish failed before anything reached the wire (wraps the cause)."""


class LoopEndClose:
    """Awaits ``close()`` when the event loop ends while armed: the app was not closed.

    ``asyncio.run(main())`` whose ``main`` returns without ``await app.close()`` cancels every
    task, aiormq's reader and writer included, which tears the AMQP connections down
    mid-flight, then closes the loop. Left there, an aio-pika connection object that was
    never closed schedules a close task from its ``__del__`` whenever it is collected, on a
    loop about to stop ("Task was destroyed but it is pending!"). Armed, this closes the
    owner properly once the tasks are cancelled and before the loop closes: it is an async
    generator, and the loop finalizes every live one then (``shutdown_asyncgens``, asyncio
    and uvloop alike). The owner arms it on connecting and disarms it when closed.
    """

    def __init__(self, close: Callable[[], Awaitable[None]], timeout: float) -> None:
        self._close = close
        self._timeout = timeout
        self._hook: AsyncGenerator[None, None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self) -> None:
        """Close the owner when the running loop ends (idempotent)."""
        loop = asyncio.get_running_loop()
        if self._hook is not None and self._loop is loop:
            return
        self.disarm()
        hook = self._run()
        step: Any = hook.asend(None)  # the loop's first-iteration hook registers it
        try:
            step.send(None)  # runs to its ``yield`` without awaiting anything
        except StopIteration:
            pass
        self._hook, self._loop = hook, loop

    def disarm(self) -> None:
        """The owner was closed: finish the hook now, without a task (idempotent)."""
        hook, self._hook, self._loop = self._hook, None, None
        if hook is not None:
            step: Any = hook.aclose()
            try:
                step.send(None)
            except (StopIteration, RuntimeError):  # finished, or finishing right now
                pass

    async def _run(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self._hook is not None:  # still armed: the loop is ending
                self._hook = self._loop = None
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._close()
                except Exception as exc:  # best effort, the loop is going away
                    log.debug("closing at the end of the event loop failed: %r", exc)


class LinkListener(Protocol):
    """What the consuming side hears from the link."""

    def consuming_lost(self, exc: BaseException | None) -> None:
        """The consuming channel (or the whole connection) is gone."""

    def consumer_cancelled(self, frame: Any) -> None:
        """RabbitMQ cancelled a consumer (its queue was deleted)."""

    def wake(self) -> None:
        """Something changed: waiting claims should look again."""


class Link:
    """One AMQP connection and four channels, opened on first use.

    * ``pub``: publisher confirms and ``mandatory`` returns raise;
    * ``admin``: queue declarations, purges, deletes;
    * the consuming channel (aiormq's, see :meth:`consuming`): every consumer and every ack;
      its ``gen`` number fences deliveries;
    * ``watch``: passive declares, which close the channel when a queue is missing.
    """

    def __init__(self, settings: RabbitSettings, topo: Topology) -> None:
        self.settings = settings
        self.topo = topo
        self.listener: LinkListener | None = None
        self.conn: AbstractConnection | None = None
        self.server_version = ""
        self.closing = False
        #: generation of the live consuming channel; 0 while there is none
        self.gen = 0
        #: settlement frames of the live consuming channel (its aiormq channel inside)
        self.acks: Acks | None = None
        #: consumer tag -> what the consuming channel's reader calls for each delivery
        self.inline: dict[str, InlineConsumer] = {}
        self.declared: set[str] = set()
        self.known: set[str] = set()
        self.vanished: dict[str, float] = {}  # queue -> loop time it was found deleted
        self._channels: dict[ChannelKind, AbstractChannel] = {}
        self._cons: aiormq.abc.AbstractChannel | None = None
        self._gens = itertools.count(1)
        self._conn_task: asyncio.Task[AbstractConnection] | None = None
        #: the last connection lost (not closed by us), closed with the link
        self._dropped: AbstractConnection | None = None
        self._chan_lock = asyncio.Lock()
        self._password = urlsplit(settings.client_url).password

    # -- connection -----------------------------------------------------------------

    async def connection(self) -> AbstractConnection:
        """The live connection, opened if needed (at most one attempt runs at a time)."""
        conn = self.conn
        if conn is not None and not conn.is_closed:
            return conn
        task = self._conn_task
        if task is None or task.done():
            # shielded: a cancelled caller must not leave a half-open connection behind
            task = self._conn_task = asyncio.get_running_loop().create_task(self._open())
        return await asyncio.shield(task)

    async def _open(self) -> AbstractConnection:
        s = self.settings
        self._lost(None)
        try:
            async with asyncio.timeout(s.connect_timeout):
                conn = await aio_pika.connect(
                    s.client_url,
                    timeout=s.connect_timeout,
                    client_properties={"connection_name": f"aqueue {s.prefix} pid {os.getpid()}"},
                )
        except TimeoutError:
            raise BrokerError(
                f"could not connect to RabbitMQ at {s.redacted} within {s.connect_timeout}s"
            ) from None
        except Exception as exc:
            raise BrokerError(
                f"could not connect to RabbitMQ at {s.redacted}: {self.scrub(exc)}"
            ) from None
        conn.close_callbacks.add(self._on_connection_closed)
        self.conn = conn
        self.server_version = server_version(conn)
        log.info("connected to RabbitMQ %s at %s", self.server_version or "?", s.redacted)
        if s.consumer_timeout is not None and version_tuple(self.server_version) < (3, 12):
            log.warning(
                "RabbitMQ %s ignores the x-consumer-timeout queue argument (needs 3.12); "
                "the server-wide consumer_timeout applies",
                self.server_version,
            )
        return conn

    async def close(self) -> None:
        """Close the connection; idempotent."""
        self.closing = True
        try:
            conn, self.conn, dropped, self._dropped = self.conn, None, self._dropped, None
            self._lost(None)
            for old in (dropped, conn):
                if old is None or old.is_closed:
                    continue
                try:
                    async with asyncio.timeout(self.settings.operation_timeout):
                        await old.close()
                except Exception as exc:  # closing is best effort
                    log.debug("closing the connection failed: %s", type(exc).__name__)
        finally:
            self.closing = False

    def scrub(self, exc: BaseException) -> str:
        """An exception as text, without the password (aiormq may echo the URL)."""
        text = f"{type(exc).__name__}: {exc}"
        return text.replace(self._password, "***") if self._password else text

    def _on_connection_closed(self, sender: Any, exc: BaseException | None) -> None:
        if sender is not self.conn:
            return  # one we closed, or an older one whose loss was handled when replaced
        if isinstance(exc, asyncio.CancelledError):
            # aiormq's reader was cancelled: the event loop is ending (asyncio.run returned)
            # without the app being closed; LoopEndClose closes what is left
            log.debug("connection to %s closed by the event loop ending", self.settings.redacted)
        elif not self.closing:
            log.warning(
                "connection to %s lost (%s); reconnecting on next use",
                self.settings.redacted,
                self.scrub(exc) if exc is not None else "closed",
            )
        self.conn, self._dropped = None, sender
        self._lost(exc)

    def _lost(self, exc: BaseException | None) -> None:
        self._channels.clear()
        self.declared.clear()
        self._consuming_lost(exc)

    def _consuming_lost(self, exc: BaseException | None) -> None:
        self._cons = None
        had = self.gen
        self.gen = 0
        self.acks = None  # acks not written yet are moot: RabbitMQ requeues those messages
        if self.listener is not None:
            if had:
                self.listener.consuming_lost(exc)
            self.listener.wake()

    # -- channels -------------------------------------------------------------------

    def live(self, kind: ChannelKind) -> AbstractChannel | None:
        """The channel of ``kind`` if it is open."""
        channel = self._channels.get(kind)
        return channel if channel is not None and not channel.is_closed else None

    async def channel(self, kind: ChannelKind) -> AbstractChannel:
        """The channel of ``kind``, opened if needed."""
        channel = self.live(kind)
        if channel is not None:
            return channel
        conn = await self.connection()
        async with self._chan_lock:
            channel = self.live(kind)
            if channel is not None:
                return channel
            confirms = kind == "pub"
            async with asyncio.timeout(self.settings.operation_timeout):
                channel = await conn.channel(publisher_confirms=confirms, on_return_raises=confirms)
            channel.close_callbacks.add(partial(self._on_channel_closed, kind))
            self._channels[kind] = channel
            return channel

    def _on_channel_closed(self, kind: ChannelKind, sender: Any, exc: BaseException | None) -> None:
        if self._channels.get(kind) is not sender:
            return
        self._channels.pop(kind, None)
        if exc is not None and not self.closing:
            log.debug("%s channel closed: %s", kind, self.scrub(exc))

    # -- the consuming channel --------------------------------------------------------

    def live_consuming(self) -> aiormq.abc.AbstractChannel | None:
        """The consuming channel if it is open."""
        channel = self._cons
        return channel if channel is not None and not channel.is_closed else None

    async def consuming(self) -> aiormq.abc.AbstractChannel:
        """The consuming channel, opened if needed; a new one starts a new generation.

        It is aiormq's channel, not aio-pika's: deliveries reach the consumers without an
        aio-pika message object and task each, and its frame buffer is unbounded (aio-pika
        leaves aiormq's default of 10 frames, about three messages, so the connection's
        reader stalls on every few deliveries). What it can hold is bounded by the prefetch.
        Consumers registered in :attr:`inline` are called by the channel's reader itself
        (:func:`deliver_inline`), not in a task per delivery.
        """
        channel = self.live_consuming()
        if channel is not None:
            return channel
        conn = await self.connection()
        async with self._chan_lock:
            channel = self.live_consuming()
            if channel is not None:
                return channel
            transport = conn.transport
            if transport is None:
                raise aiormq.exceptions.ChannelInvalidStateError("the connection is closed")
            async with asyncio.timeout(self.settings.operation_timeout):
                channel = await transport.connection.channel(
                    publisher_confirms=False, frame_buffer_size=0
                )
            if self.listener is not None:
                channel.on_consumer_cancel_callbacks.add(self.listener.consumer_cancelled)
            channel.closing.add_done_callback(partial(self._on_closing, channel))
            self.gen = next(self._gens)
            self.acks = Acks(channel, self.gen)
            self.inline = {}
            if not deliver_inline(channel, self.inline):
                log.debug("this aiormq has no inline delivery hooks: a task per delivery")
            self._cons = channel
            return channel

    def _on_closing(
        self, channel: aiormq.abc.AbstractChannel, closing: asyncio.Future[Any]
    ) -> None:
        exc = None if closing.cancelled() else closing.exception()
        self.consuming_closed(channel, exc)

    def consuming_closed(self, channel: Any, exc: BaseException | None) -> None:
        """The consuming channel ``channel`` closed (``exc``: why, if not by us)."""
        if self._cons is channel:
            self._consuming_lost(exc)

    async def close_consuming(self) -> None:
        """Close the consuming channel (a new one opens on the next claim), after writing
        the acks queued on it."""
        channel = self.live_consuming()
        if channel is not None:
            async with asyncio.timeout(self.settings.operation_timeout):
                if self.acks is not None:
                    await self.acks.flush()
                await channel.close()

    def blocked(self) -> bool:
        """Whether RabbitMQ blocked the connection (a memory or disk resource alarm)."""
        underlay = getattr(self.conn, "transport", None)
        raw = getattr(underlay, "connection", None)
        event = getattr(raw, "_Connection__connection_unblocked", None)
        return isinstance(event, asyncio.Event) and not event.is_set()

    # -- topology -------------------------------------------------------------------

    async def declare(self, name: str, args: dict[str, Any]) -> int:
        """Declare a durable queue; return its ready-message count."""
        channel = await self.channel("admin")
        try:
            async with asyncio.timeout(self.settings.operation_timeout):
                queue = await channel.declare_queue(name, durable=True, arguments=args)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"RabbitMQ refused to declare queue {name!r} ({exc}): it exists with other "
                "arguments. Every process must use the same queue_type, delivery_limit, "
                "max_priority and consumer_timeout options; delete the queue to change them."
            ) from None
        self.declared.add(name)
        return int(queue.declaration_result.message_count or 0)

    async def ensure_queue(self, queue: str) -> None:
        """Declare the work queue and its dead-letter queue once per connection."""
        self.known.add(queue)
        name = self.topo.work(queue)
        if name in self.declared:
            return
        vanished = self.vanished.get(queue)
        if vanished is not None:
            await self._await_redeclare(queue, vanished)
        await self.declare(self.topo.dlq(queue), self.topo.dlq_args())
        await self.declare(name, self.topo.work_args(queue))

    def mark_vanished(self, queue: str) -> None:
        """``queue`` was found deleted: forget its declarations, re-declare after a grace."""
        for name in self.topo.all_names(queue):
            self.declared.discard(name)
        self.vanished[queue] = asyncio.get_running_loop().time()

    async def _await_redeclare(self, queue: str, vanished: float) -> None:
        """Give every consumer's channel time to see a deletion (or someone else time to
        declare the queue) before declaring it again here."""
        loop = asyncio.get_running_loop()
        name = self.topo.work(queue)
        while loop.time() < vanished + REDECLARE_GRACE:
            if await self.ready_count(name) is not None:
                break
            await asyncio.sleep(0.05)
        self.vanished.pop(queue, None)

    async def ensure_delay(self, queue: str, level_ms: int) -> None:
        name = self.topo.delay(queue, level_ms)
        if name not in self.declared:
            await self.declare(name, self.topo.delay_args(queue, level_ms))

    async def ready_count(self, name: str) -> int | None:
        """Ready messages of queue ``name`` (passive declare); ``None`` if it is missing."""
        channel = await self.channel("watch")
        try:
            async with asyncio.timeout(self.settings.operation_timeout):
                declared = await channel.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None  # the server closed the watch channel; it reopens on next use
        return int(declared.declaration_result.message_count or 0)

    async def probe(self, names: Sequence[str]) -> dict[str, int]:
        """Ready-message counts of those of ``names`` that exist."""
        counts: dict[str, int] = {}
        for name in names:
            count = await self.ready_count(name)
            if count is not None:
                counts[name] = count
        return counts

    # -- publishing -----------------------------------------------------------------

    async def send(
        self,
        queue: str,
        message_id: str,
        body: bytes,
        priority: int,
        eta: int | None,
        headers: dict[str, Any] | None = None,
        *,
        routing_key: str | None = None,
    ) -> None:
        """One confirmed, ``mandatory`` publish to the work queue or the right delay queue.

        Args:
            queue: the aqueue queue.
            message_id: the task id.
            body: opaque bytes.
            priority: the aqueue priority (clamped for AMQP).
            eta: due time in unix milliseconds; a future one goes to a delay queue.
            headers: extra AMQP headers.
            routing_key: publish here instead (a dead-letter queue).

        Raises:
            NotSent: the publish never left this process (declare or channel failed).
        """
        hdrs: dict[str, Any] = dict(headers or {})
        try:
            if routing_key is None:
                remaining = None if eta is None else eta - int(time.time() * 1000)
                if remaining is not None and remaining > 0:
                    level = delay_level(remaining)
                    await self.ensure_delay(queue, level)
                    routing_key = self.topo.delay(queue, level)
                    hdrs[ETA_HEADER] = eta
                else:
                    routing_key = self.topo.work(queue)
            channel = await self.channel("pub")
        except AMQP_ERRORS as exc:
            raise NotSent(exc) from exc
        message = aio_pika.Message(
            body,
            message_id=message_id,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type=CONTENT_TYPE,
            priority=self.topo.amqp_priority(priority),
            headers=hdrs or None,
        )
        await channel.default_exchange.publish(message, routing_key, mandatory=True)

    def publish_error(self, exc: BaseException, queue: str) -> BrokerError:
        """The error a caller sees for a failed publish.

        Raises:
            ConfigurationError: passed through (queue arguments differ).
        """
        if isinstance(exc, aiormq.exceptions.PublishError):
            if self.topo.work(queue) in self.declared:
                self.mark_vanished(queue)
            return BrokerError(
                f"RabbitMQ could not route a message to queue {queue!r} "
                f"({self.topo.work(queue)} does not exist: deleted?); it was not stored. "
                "The next publish declares the queue again."
            )
        if isinstance(exc, aiormq.exceptions.DeliveryError):
            return BrokerError(
                f"RabbitMQ refused (nack) a message for queue {queue!r}; it was not stored"
            )
        if isinstance(exc, BrokerError):
            return exc
        if isinstance(exc, ConfigurationError):
            raise exc
        if isinstance(exc, NotSent):
            return BrokerError(
                f"could not publish to queue {queue!r} on {self.settings.redacted} "
                f"({self.scrub(exc.__cause__ or exc)}); nothing was sent"
            )
        return IndeterminatePublish(
            f"the connection to {self.settings.redacted} failed before RabbitMQ confirmed "
            f"a publish to queue {queue!r} ({self.scrub(exc)}); it may or may not be stored. "
            "Re-sending the same task id publishes it again (see docs/brokers/rabbitmq.md)."
        )

    async def delete_queues(self, queues: Sequence[str]) -> None:
        """Delete every RabbitMQ queue of ``queues`` (work, dead letters, delay levels)."""
        channel = await self.channel("admin")
        async with asyncio.timeout(self.settings.operation_timeout * 4):
            for queue in queues:
                for name in self.topo.all_names(queue):
                    await channel.queue_delete(name)
                    self.declared.discard(name)


def deliver_inline(channel: aiormq.abc.AbstractChannel, inline: dict[str, InlineConsumer]) -> bool:
    """Make ``channel`` call the consumers of ``inline`` (by consumer tag) from its reader,
    in delivery order, instead of starting a task for each delivery; ``False`` (nothing
    changed) if this aiormq lacks the hooks it relies on.

    aiormq hands every delivery to its consumer callback in a new task (plus a task wrapper,
    a weak-set entry and two done callbacks): a large share of a fast worker's time per task.
    The consumers here only buffer the message (no await), so they can run inline. This
    replaces the channel's ``_on_deliver_frame`` (checked with aiormq 7.2) with one that
    reads the content the same way (``_get_frame``, ``_read_content``) and calls the inline
    consumer; deliveries for any other consumer tag, or for a tag aiormq no longer knows
    (cancelled), go through aiormq's own handler unchanged. An exception from a consumer is
    logged, as aiormq logs a failed consumer task.
    """
    raw: Any = channel
    original = getattr(raw, "_on_deliver_frame", None)
    consumers = getattr(raw, "consumers", None)
    read = _content_reader(raw)
    if not (callable(original) and read is not None and isinstance(consumers, dict)):
        return False

    async def on_deliver_frame(frame: Any) -> None:
        tag = getattr(frame, "consumer_tag", None)
        consumer = inline.get(tag) if isinstance(tag, str) and tag in consumers else None
        if consumer is None:
            await original(frame)
            return
        message = await read(frame)
        try:
            consumer(message)
        except Exception:
            log.exception("consumer %s failed on a delivery", tag)

    raw._on_deliver_frame = on_deliver_frame
    return True


def hear_returns(channel: aiormq.abc.AbstractChannel, listener: ReturnListener) -> bool:
    """Make ``channel`` (one without publisher confirms) hand every message RabbitMQ returns
    (``basic.return``: a ``mandatory`` publish nothing could route) to ``listener``, called
    inline by the channel's reader; ``False`` (nothing changed) if this aiormq lacks the
    hooks it relies on, or the channel has publisher confirms (aiormq then settles returns
    through its confirmations, which this must not bypass).

    aiormq matches a return to a pending confirmation; on a channel without confirms there
    is none, so it drops the message and logs an ERROR record per return, body included.
    This replaces the channel's ``_on_return_frame`` (checked with aiormq 7.2), reading the
    content the same way as :func:`deliver_inline`.
    """
    raw: Any = channel
    original = getattr(raw, "_on_return_frame", None)
    read = _content_reader(raw)
    if not callable(original) or read is None or getattr(raw, "publisher_confirms", True):
        return False

    async def on_return_frame(frame: Any) -> None:
        message = await read(frame)
        try:
            listener(message)
        except Exception:
            log.exception("a listener of returned messages failed")

    raw._on_return_frame = on_return_frame
    return True


def _content_reader(raw: Any) -> Callable[[Any], Awaitable[DeliveredMessage]] | None:
    """How aiormq's channel reader reads the header and body that follow a delivery or a
    return (``_get_frame`` then ``_read_content``), or ``None`` if this aiormq has neither."""
    get_frame = getattr(raw, "_get_frame", None)
    read_content = getattr(raw, "_read_content", None)
    if not (callable(get_frame) and callable(read_content)):
        return None

    async def read(frame: Any) -> DeliveredMessage:
        header = await get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"unexpected frame {header!r} instead of a content header")
        message: DeliveredMessage = await read_content(frame, header)
        return message

    return read


def server_version(conn: AbstractConnection) -> str:
    """The RabbitMQ version the server announced, or ``""``."""
    underlay = getattr(conn, "transport", None)
    raw = getattr(underlay, "connection", None)
    props = getattr(raw, "server_properties", None) or {}
    version = props.get("version", "") if isinstance(props, dict) else ""
    return version.decode() if isinstance(version, bytes) else str(version)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"3.10.8"`` as ``(3, 10, 8)``."""
    parts: list[int] = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
