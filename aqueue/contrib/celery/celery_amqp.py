"""Celery's side of a RabbitMQ broker, as Celery declares and uses it.

- a queue Celery creates on use is durable, bound to a direct exchange of the same name with
  the queue's name as routing key (``task_default_queue`` "celery": exchange "celery");
  declaring it again the same way is a no-op, so either side may be first;
- a task message is protocol 2 with the headers in AMQP headers, the JSON body as the body,
  ``correlation_id`` the task id and ``reply_to`` where ``rpc://`` results go;
- an ``rpc://`` result is the JSON meta published on the default exchange to the caller's
  ``reply_to`` queue, with the task id as ``correlation_id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from .protocol import JSON_CONTENT_TYPE, CeleryTask, task_message

MessageHandler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class CeleryAmqp:
    """One connection to Celery's RabbitMQ: declaring its queues, publishing its messages
    and ``rpc://`` replies, consuming its queues.

    Args:
        url: Celery's broker URL (``amqp://``).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declared: set[str] = set()
        self._lock = asyncio.Lock()

    async def channel(self) -> AbstractChannel:
        """The publishing channel, (re)connecting first if needed."""
        async with self._lock:
            if self._connection is None or self._connection.is_closed:
                self._connection = await aio_pika.connect(self.url, timeout=10)
                self._channel = None
                self._declared.clear()
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.channel()
            return self._channel

    async def close(self) -> None:
        """Close the connection (a later call connects again)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            await connection.close()

    async def declare(self, channel: AbstractChannel, queue: str) -> AbstractQueue:
        """Celery's declaration of ``queue``: durable, bound to its own direct exchange."""
        exchange = await channel.declare_exchange(queue, aio_pika.ExchangeType.DIRECT, durable=True)
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(exchange, routing_key=queue)
        return declared

    async def push(self, task: CeleryTask, queue: str, priority: int, origin: str) -> None:
        """Publish ``task`` on ``queue`` as a Celery producer does (declaring it first, so a
        message sent before any Celery worker started is kept)."""
        channel = await self.channel()
        if queue not in self._declared:
            await self.declare(channel, queue)
            self._declared.add(queue)
        headers, properties, body = task_message(task, origin=origin)
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type=JSON_CONTENT_TYPE,
            content_encoding="utf-8",
            correlation_id=properties["correlation_id"],
            reply_to=properties["reply_to"] or None,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=priority,
        )
        await channel.default_exchange.publish(message, routing_key=queue)

    async def reply(self, reply_to: str, task_id: str, meta: bytes) -> None:
        """Send a result meta to an ``rpc://`` caller's reply queue."""
        channel = await self.channel()
        message = aio_pika.Message(
            meta,
            content_type=JSON_CONTENT_TYPE,
            content_encoding="utf-8",
            correlation_id=task_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await channel.default_exchange.publish(message, routing_key=reply_to)

    async def consume(
        self, queue: str, prefetch: int, handle: MessageHandler, stop: asyncio.Event
    ) -> None:
        """Deliver ``queue``'s messages to ``handle`` (which settles each) until ``stop``
        is set, on a connection of its own: what is not settled when it closes goes back to
        the queue (RabbitMQ requeues a closed channel's unacked messages)."""
        connection = await aio_pika.connect(self.url, timeout=10)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            declared = await self.declare(channel, queue)
            running: set[asyncio.Task[None]] = set()

            async def deliver(message: AbstractIncomingMessage) -> None:
                task = asyncio.current_task()
                assert task is not None
                running.add(task)
                try:
                    await handle(message)
                finally:
                    running.discard(task)

            tag = await declared.consume(deliver, no_ack=False)
            lost = asyncio.get_running_loop().create_future()

            def on_close(*_: Any) -> None:
                if not lost.done():
                    lost.set_result(None)

            connection.close_callbacks.add(on_close)
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([stopping, lost], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not connection.is_closed:
                await declared.cancel(tag)
                if running:
                    await asyncio.wait(running, timeout=10.0)
            if lost.done():
                raise ConnectionError("the connection to Celery's RabbitMQ was lost")
        finally:
            if not connection.is_closed:
                await connection.close()

    @staticmethod
    def message_parts(
        message: AbstractIncomingMessage,
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """A delivered message's content type, headers and properties (as
        :func:`~aqueue.contrib.celery.protocol.read_parts` reads them)."""
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in message.headers.items()}
        properties = {"correlation_id": message.correlation_id, "reply_to": message.reply_to}
        return message.content_type or "", headers, properties
