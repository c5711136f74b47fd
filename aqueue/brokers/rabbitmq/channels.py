"""The RabbitMQ broker's channels on its one connection: declarations, confirmed publishes,
and the consuming channel whose generation fences deliveries.

The connection itself is a :class:`~aqueue.transports.amqp.link.Link`: lost, it is noticed
through close callbacks, everything that depended on it is fenced at once, and the next call
opens a new one and declares the topology again. That keeps the channel a delivery came
from knowable, which is what fencing needs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal, Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, DeliveryMode

from aqueue.core.errors import BrokerError, ConfigurationError, IndeterminatePublish
from aqueue.core.routing import Exchange
from aqueue.transports.amqp import aiormq_hooks
from aqueue.transports.amqp.aiormq_hooks import InlineConsumer, InlineDelivery
from aqueue.transports.amqp.link import AMQP_ERRORS, Link
from aqueue.transports.amqp.settings import CONTENT_TYPE, RabbitSettings

from .acks import Acks
from .options import BrokerOptions
from .topology import ETA_HEADER, Topology, delay_level

log = logging.getLogger("aqueue.broker.rabbitmq")

#: after a queue vanished, wait this long for someone else to declare it before declaring
#: it here: RabbitMQ 3.10 can attach a consumer whose channel has not seen the deletion yet
#: to the new queue, where it never receives anything
REDECLARE_GRACE = 0.5

ChannelKind = Literal["pub", "admin", "watch"]


class NotSent(Exception):
    """A publish failed before anything reached the wire (wraps the cause)."""


class ConsumingListener(Protocol):
    """What the consuming side hears from the channels."""

    def consuming_lost(self, exc: BaseException | None) -> None:
        """The consuming channel (or the whole connection) is gone."""

    def consumer_cancelled(self, frame: Any) -> None:
        """RabbitMQ cancelled a consumer (its queue was deleted)."""

    def wake(self) -> None:
        """Something changed: waiting claims should look again."""


class Channels:
    """Four channels on one connection (:attr:`link`), opened on first use.

    * ``pub``: publisher confirms and ``mandatory`` returns raise;
    * ``admin``: queue declarations, purges, deletes;
    * the consuming channel (aiormq's, see :meth:`consuming`): every consumer and every ack;
      its ``gen`` number fences deliveries;
    * ``watch``: passive declares, which close the channel when a queue is missing.
    """

    def __init__(self, settings: RabbitSettings, options: BrokerOptions, topo: Topology) -> None:
        self.settings = settings
        self.options = options
        self.topo = topo
        self.link = Link(
            settings,
            name=f"aqueue {settings.prefix}",
            on_open=self._on_open,
            on_lost=self._on_lost,
            on_reset=partial(self._reset, None),
        )
        self.listener: ConsumingListener | None = None
        #: generation of the live consuming channel; 0 while there is none
        self.gen = 0
        #: settlement frames of the live consuming channel (its aiormq channel inside)
        self.acks: Acks | None = None
        #: consumer tag -> what the consuming channel's reader calls for each delivery
        self.inline: dict[str, InlineConsumer] = {}
        #: the consuming channel's inline delivery hook (``None``: aiormq's task each)
        self.inline_hook: InlineDelivery | None = None
        self.declared: set[str] = set()
        self.known: set[str] = set()
        self.vanished: dict[str, float] = {}  # queue -> loop time it was found deleted
        self._channels: dict[ChannelKind, AbstractChannel] = {}
        self._cons: aiormq.abc.AbstractChannel | None = None
        self._gens = itertools.count(1)
        self._chan_lock = asyncio.Lock()

    # -- connection -----------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether the connection is being closed by us (a loss now is no surprise)."""
        return self.link.closing

    async def connection(self) -> AbstractConnection:
        """The live connection, opened if needed."""
        return await self.link.connection()

    async def close(self) -> None:
        """Close the connection; idempotent."""
        await self.link.close()

    def blocked(self) -> bool:
        """Whether RabbitMQ blocked the connection (a memory or disk resource alarm)."""
        return self.link.blocked()

    def scrub(self, exc: BaseException) -> str:
        """An exception as text, without the password."""
        return self.settings.scrub(exc)

    def _on_open(self, conn: AbstractConnection) -> None:
        version = self.link.server_version
        log.info("connected to RabbitMQ %s at %s", version or "?", self.settings.redacted)
        old = aiormq_hooks.version_tuple(version) < (3, 12)
        if self.options.consumer_timeout is not None and old:
            log.warning(
                "RabbitMQ %s ignores the x-consumer-timeout queue argument (needs 3.12); "
                "the server-wide consumer_timeout applies",
                version,
            )

    def _on_lost(self, exc: BaseException | None) -> None:
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
        self._reset(exc)

    def _reset(self, exc: BaseException | None) -> None:
        self._channels.clear()
        self.declared.clear()
        self._consuming_lost(exc)

    def _consuming_lost(self, exc: BaseException | None) -> None:
        self._cons = None
        had = self.gen
        self.gen = 0
        self.acks = None  # acks not written yet are moot: RabbitMQ requeues those messages
        self.inline_hook = None
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

        It is aiormq's channel, not aio-pika's, with an unbounded frame buffer (see
        :func:`~aqueue.transports.amqp.aiormq_hooks.consuming_channel`): deliveries reach the
        consumers without an aio-pika message object each. Consumers registered in
        :attr:`inline` are called by the channel's reader itself where the installed aiormq
        allows it (:attr:`inline_hook`), otherwise by aiormq in a task per delivery.
        """
        channel = self.live_consuming()
        if channel is not None:
            return channel
        conn = await self.connection()
        async with self._chan_lock:
            channel = self.live_consuming()
            if channel is not None:
                return channel
            async with asyncio.timeout(self.settings.operation_timeout):
                channel = await aiormq_hooks.consuming_channel(conn)
            if self.listener is not None:
                channel.on_consumer_cancel_callbacks.add(self.listener.consumer_cancelled)
            channel.closing.add_done_callback(partial(self._on_closing, channel))
            self.gen = next(self._gens)
            self.acks = Acks(channel, self.gen)
            self.inline = {}
            self.inline_hook = aiormq_hooks.deliver_inline(channel, self.inline)
            if self.inline_hook is None:
                log.debug("no inline delivery with this aiormq: a task per delivery")
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

    # -- topology -------------------------------------------------------------------

    async def declare(self, name: str, args: dict[str, Any], *, exclusive: bool = False) -> int:
        """Declare a queue (durable, or exclusive to this connection); return its
        ready-message count."""
        channel = await self.channel("admin")
        try:
            async with asyncio.timeout(self.settings.operation_timeout):
                queue = await channel.declare_queue(
                    name, durable=not exclusive, exclusive=exclusive, arguments=args
                )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"RabbitMQ refused to declare queue {name!r} ({exc}): it exists with other "
                "arguments. Every process must use the same queue_type, delivery_limit, "
                "max_priority and consumer_timeout options, and the same task_queues; delete "
                "the queue to change them."
            ) from None
        self.declared.add(name)
        return int(queue.declaration_result.message_count or 0)

    async def declare_work(self, queue: str) -> int:
        """Declare the work queue of ``queue``; return its ready-message count."""
        return await self.declare(
            self.topo.work(queue), self.topo.work_args(queue), exclusive=self.topo.is_private(queue)
        )

    async def declare_exchange(self, exchange: Exchange) -> None:
        """Declare the app's ``exchange`` (as ``<prefix>.<name>``)."""
        channel = await self.channel("admin")
        name = self.topo.exchange(exchange.name)
        try:
            async with asyncio.timeout(self.settings.operation_timeout):
                await channel.declare_exchange(
                    name,
                    exchange.type,
                    durable=exchange.durable,
                    auto_delete=exchange.auto_delete,
                )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"RabbitMQ refused to declare exchange {name!r} ({exc}): it exists as another "
                "type (or durability); every process must use the same task_queues"
            ) from None
        self.declared.add(f"exchange:{name}")

    async def ensure_exchange(self, exchange: Exchange) -> None:
        """Declare ``exchange`` once per connection."""
        if f"exchange:{self.topo.exchange(exchange.name)}" not in self.declared:
            await self.declare_exchange(exchange)

    async def ensure_routes(self, exchange: str) -> None:
        """Before publishing to the app's ``exchange``: declare it, and every queue
        ``task_queues`` binds to it (with its binding) but broadcast ones (each worker
        declares its own), so that nothing published now is lost for want of a binding."""
        router = self.topo.router
        assert router is not None  # core hands exchange messages only with routing given
        await self.ensure_exchange(router.exchanges[exchange])
        for q in router.bound(exchange):
            if not q.broadcast:
                await self.ensure_queue(q.name)

    async def ensure_queue(self, queue: str) -> None:
        """Declare the work queue, its dead-letter queue and its binding (when the app's
        routing gives it an exchange) once per connection."""
        self.known.add(queue)
        name = self.topo.work(queue)
        spec = self.topo.spec(queue)
        binding = f"bind:{name}" if spec is not None and spec.exchange is not None else None
        if name in self.declared and (binding is None or binding in self.declared):
            return
        if name not in self.declared:
            vanished = self.vanished.get(queue)
            if vanished is not None:
                await self._await_redeclare(queue, vanished)
            await self.declare(self.topo.dlq(queue), self.topo.dlq_args())
            await self.declare_work(queue)
        if spec is not None and spec.exchange is not None and binding is not None:
            await self.ensure_exchange(spec.exchange)
            channel = await self.channel("admin")
            async with asyncio.timeout(self.settings.operation_timeout):
                amqp_queue = await channel.get_queue(name, ensure=False)
                await amqp_queue.bind(
                    self.topo.exchange(spec.exchange.name), spec.routing_key or ""
                )
            self.declared.add(binding)

    def forget(self, queue: str) -> None:
        """Forget the declarations of ``queue`` (and its binding): the next use declares
        them again."""
        for name in self.topo.all_names(queue):
            self.declared.discard(name)
        self.declared.discard(f"bind:{self.topo.work(queue)}")

    def mark_vanished(self, queue: str) -> None:
        """``queue`` was found deleted: forget its declarations, re-declare after a grace."""
        self.forget(queue)
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
            private = self.topo.is_private(queue)
            await self.declare(name, self.topo.delay_args(queue, level_ms), exclusive=private)

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
        exchange: str = "",
    ) -> None:
        """One confirmed, ``mandatory`` publish to the work queue or the right delay queue,
        or to one of the app's exchanges.

        Args:
            queue: the aqueue queue.
            message_id: the task id.
            body: opaque bytes.
            priority: the aqueue priority (clamped for AMQP).
            eta: due time in unix milliseconds; a future one goes to a delay queue (through
                an exchange: to the queues it reaches, whose consumers put it in their delay
                queue).
            headers: extra AMQP headers.
            routing_key: publish here instead (a dead-letter queue), or with ``exchange``
                the routing key.
            exchange: the app's exchange to publish to, by its name in ``task_queues``.

        Raises:
            NotSent: the publish never left this process (declare or channel failed).
        """
        hdrs: dict[str, Any] = dict(headers or {})
        if exchange:
            try:
                channel = await self.channel("pub")
            except AMQP_ERRORS as exc:
                raise NotSent(exc) from exc
            if eta is not None and eta > int(time.time() * 1000):
                hdrs[ETA_HEADER] = eta
            target = await channel.get_exchange(self.topo.exchange(exchange), ensure=False)
            await target.publish(
                self._message(body, message_id, priority, hdrs), routing_key or "", mandatory=True
            )
            return
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
        message = self._message(body, message_id, priority, hdrs)
        await channel.default_exchange.publish(message, routing_key, mandatory=True)

    def _message(
        self, body: bytes, message_id: str, priority: int, headers: dict[str, Any]
    ) -> aio_pika.Message:
        return aio_pika.Message(
            body,
            message_id=message_id,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type=CONTENT_TYPE,
            priority=self.topo.amqp_priority(priority),
            headers=headers or None,
        )

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

    async def delete_exchanges(self, names: Sequence[str]) -> None:
        """Delete the app's exchanges ``names`` (by their names in ``task_queues``)."""
        channel = await self.channel("admin")
        async with asyncio.timeout(self.settings.operation_timeout * 4):
            for name in names:
                full = self.topo.exchange(name)
                await channel.exchange_delete(full)
                self.declared.discard(f"exchange:{full}")
