"""What the consuming side of the RabbitMQ broker holds: buffered messages, consumers, and
the :class:`RabbitMQDelivery` handed to a worker (its settlement lives in
:class:`~aqueue.brokers.rabbitmq.consumer.Consumers`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiormq.abc import AbstractChannel

from aqueue.core.protocols import BaseDelivery, Lease

if TYPE_CHECKING:
    from .consumer import Consumers


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


class RabbitMQDelivery(BaseDelivery):
    """A message claimed from a RabbitMQ broker; settle it exactly once.

    ``delivery_count`` is 1 + the quorum queue's ``x-delivery-count`` (classic queues: 1, or
    2 if redelivered), plus the deliveries a handed-back copy carries, minus this process's
    unexecuted hand-backs. The lease token is ``(claim number << 96) | (channel generation
    << 64) | delivery tag``, unique per claim. A delivery from a channel that has since died
    settles nothing and returns ``False``.
    """

    __slots__ = ("gen", "owner", "priority", "settled", "tag")

    def __init__(self, owner: Consumers, pending: Pending, claim: int) -> None:
        token = (claim << 96) | (pending.gen << 64) | pending.tag
        super().__init__(Lease(pending.id, pending.queue, token), pending.body, pending.count)
        #: the consuming side that settles it
        self.owner = owner
        #: its delivery tag on the consuming channel of generation ``gen``
        self.tag = pending.tag
        self.gen = pending.gen
        self.priority = pending.priority
        #: settled (or handed back) already
        self.settled = False

    def pending(self) -> Pending:
        """What it was before it was claimed (to put it back into the buffer)."""
        return Pending(
            self.tag, self.body, self.id, self.queue, self.delivery_count, self.priority, self.gen
        )

    async def ack(self) -> bool:
        """basic.ack, queued and written with the other acks of this event-loop turn
        (see :mod:`.acks`); ``False`` if the channel it came from is gone (it was
        redelivered)."""
        return await self.owner.ack(self)

    async def release(self, *, executed: bool) -> bool:
        """Hand the message back, claimable again at once.

        Args:
            executed: whether it started running. If it did: basic.nack with requeue (the
                quorum delivery count goes up). If not: it goes back into this process's
                buffer without a round trip, so it costs no delivery; it returns to the
                queue for everyone when this process stops claiming (``idle_timeout``) or
                closes.
        """
        return await self.owner.release(self, executed=executed)

    async def requeue(self, body: bytes, *, eta: float | None) -> bool:
        """Publish ``body`` under the same id (confirmed), due at ``eta``, then ack this one."""
        return await self.owner.requeue(self, body, eta)

    async def dead_letter(self, reason: str) -> bool:
        """Publish to ``<queue>.dlq`` with ``reason`` (confirmed), then ack this one."""
        return await self.owner.dead_letter(self, reason)
