"""What the consuming side of the RabbitMQ broker holds: buffered messages, consumers, and
the :class:`RabbitMQDelivery` handed to a worker (its settlement lives in
:class:`~aqueue.brokers.rabbitmq_consumer.Consumers`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiormq.abc import AbstractChannel

from aqueue.core.protocols import Lease

if TYPE_CHECKING:
    from .rabbitmq_consumer import Consumers


@dataclass(slots=True)
class Pending:
    """A message delivered to this process and not claimed yet."""

    tag: int  # its delivery tag on the consuming channel of generation ``gen``
    body: bytes
    id: str
    queue: str
    count: int
    priority: int
    gen: int


@dataclass(slots=True)
class Consumer:
    """One basic.consume on the consuming channel."""

    queue: str
    channel: AbstractChannel  # the consuming channel (aiormq's)
    tag: str
    gen: int
    expected: int
    prime_until: float
    received: int = 0
    #: watchdog state: when it last looked, ``received`` then, checks in a row that stalled
    checked: float = 0.0
    seen: int = 0
    stalls: int = 0

    def primed(self, now: float) -> bool:
        return self.received >= self.expected or now >= self.prime_until


@dataclass(slots=True)
class Waiters:
    """Claims waiting for a message or a connection event (race-free, unlike an Event)."""

    futures: set[asyncio.Future[None]] = field(default_factory=set)

    def new(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.add(fut)
        return fut

    def notify(self) -> None:
        for fut in self.futures:
            if not fut.done():
                fut.set_result(None)
        self.futures.clear()


class RabbitMQDelivery:
    """A message claimed from a RabbitMQ broker; settle it exactly once.

    The lease token is ``(claim number << 96) | (channel generation << 64) | delivery tag``,
    unique per claim. A delivery from a channel that has since died settles nothing and
    returns ``False``.
    """

    __slots__ = ("_body", "_count", "_gen", "_lease", "_owner", "_priority", "_settled", "_tag")

    def __init__(self, owner: Consumers, pending: Pending, claim: int) -> None:
        self._owner = owner
        self._tag = pending.tag
        self._body = pending.body
        self._count = pending.count
        self._gen = pending.gen
        self._priority = pending.priority
        token = (claim << 96) | (pending.gen << 64) | pending.tag
        self._lease = Lease(pending.id, pending.queue, token)
        self._settled = False

    def pending(self) -> Pending:
        """What it was before it was claimed (to put it back into the buffer)."""
        return Pending(
            self._tag, self._body, self.id, self.queue, self._count, self._priority, self._gen
        )

    @property
    def id(self) -> str:
        """The task id (the AMQP ``message_id``)."""
        return self._lease.id

    @property
    def queue(self) -> str:
        """The aqueue queue name (without the prefix)."""
        return self._lease.queue

    @property
    def body(self) -> bytes:
        """The message bytes as published."""
        return self._body

    @property
    def delivery_count(self) -> int:
        """1 + the quorum queue's ``x-delivery-count`` (classic queues: 1, or 2 if
        redelivered), minus this process's unexecuted hand-backs."""
        return self._count

    @property
    def lease(self) -> Lease:
        """The lease: id, queue and the channel-generation token."""
        return self._lease

    async def ack(self) -> bool:
        """basic.ack, queued and written with the other acks of this event-loop turn
        (rabbitmq_acks); ``False`` if the channel it came from is gone (it was
        redelivered)."""
        return await self._owner.ack(self)

    async def release(self, *, executed: bool) -> bool:
        """Hand the message back, claimable again at once.

        Args:
            executed: whether it started running. If it did: basic.nack with requeue (the
                quorum delivery count goes up). If not: it goes back into this process's
                buffer without a round trip, so it costs no delivery; it returns to the
                queue for everyone when this process stops claiming (``idle_timeout``) or
                closes.
        """
        return await self._owner.release(self, executed=executed)

    async def requeue(self, body: bytes, *, eta: float | None) -> bool:
        """Publish ``body`` under the same id (confirmed), due at ``eta``, then ack this one."""
        return await self._owner.requeue(self, body, eta)

    async def dead_letter(self, reason: str) -> bool:
        """Publish to ``<queue>.dlq`` with ``reason`` (confirmed), then ack this one."""
        return await self._owner.dead_letter(self, reason)

    def __repr__(self) -> str:
        return (
            f"<RabbitMQDelivery id={self.id!r} queue={self.queue!r} count={self._count} "
            f"gen={self._gen}>"
        )
