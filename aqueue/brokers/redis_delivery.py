"""A message claimed from the Redis broker, and how it is settled."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aqueue.core.protocols import Lease

from . import redis_scripts as lua

if TYPE_CHECKING:
    from .redis import RedisBroker

__all__ = ["HeldLease", "RedisDelivery"]


class HeldLease(Lease):
    """The lease of a :class:`RedisDelivery`: a :class:`Lease` that can be weakly referenced.

    The broker remembers the leases its deliveries settled in a weak set (see
    ``RedisBroker.renew``): an entry lasts exactly as long as somebody still holds the lease.
    """

    __slots__ = ("__weakref__",)


class RedisDelivery:
    """One claimed message; settle it exactly once with ack, release, requeue or dead_letter."""

    __slots__ = ("_body", "_broker", "_count", "_lease", "id", "prior")

    def __init__(
        self,
        broker: RedisBroker,
        lease: HeldLease,
        body: bytes,
        count: int,
        prior: bytes | None = None,
    ) -> None:
        self._broker = broker
        self._lease = lease
        #: the task id (a plain attribute: the worker reads it often)
        self.id = lease.id
        self._body = body
        self._count = count
        #: the task's stored result record when claimed, if the broker reads records
        #: (see :meth:`RedisBroker.bind_records`); ``None`` otherwise or if there is none
        self.prior = prior

    @property
    def queue(self) -> str:
        """The queue it was claimed from."""
        return self._lease.queue

    @property
    def body(self) -> bytes:
        """The message bytes as published."""
        return self._body

    @property
    def delivery_count(self) -> int:
        """Claims of this message since it was (re-)enqueued; 1 on the first delivery."""
        return self._count

    @property
    def lease(self) -> Lease:
        """The lease this delivery holds; its token is unique to this claim."""
        return self._lease

    async def ack(self) -> bool:
        """Remove the message. ``False`` if the lease had been lost."""
        return await self._broker._settle(("A", self._lease, "", ""))

    async def release(self, *, executed: bool) -> bool:
        """Hand the message back, claimable at once; uncounted unless ``executed``."""
        return await self._broker._settle(("R", self._lease, "1" if executed else "0", ""))

    async def requeue(self, body: bytes, *, eta: float | None) -> bool:
        """Replace the message with ``body`` due at ``eta``, delivery count reset."""
        return await self._broker._settle(("Q", self._lease, body, lua.eta_delay(eta)))

    async def dead_letter(self, reason: str) -> bool:
        """Move the message to the queue's dead-letter list with ``reason``."""
        return await self._broker._settle(("D", self._lease, reason, ""))

    def __repr__(self) -> str:
        return (
            f"<RedisDelivery id={self.id!r} queue={self.queue!r} "
            f"count={self._count} token={self._lease.token}>"
        )
