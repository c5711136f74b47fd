"""A message claimed from the Redis broker, and how it is settled.

Settlements made in the same loop tick (or while a batch is in flight) share one SETTLE
script call per queue (:class:`Settler`): per task that is a few Lua commands, not a round
trip.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

from aqueue.core.errors import BrokerError
from aqueue.core.protocols import BaseDelivery, Lease
from aqueue.transports.redis.clients import Link
from aqueue.transports.redis.coalesce import Coalescer
from aqueue.transports.redis.guard import guarded
from aqueue.transports.redis.keys import KeySpace
from aqueue.transports.redis.scripts import ScriptCall, command, pack_fields, run_scripts
from aqueue.transports.redis.settings import RedisSettings

from .scripts import MAX_BATCH, SETTLE, QueueKeys, SettleOp, eta_delay, flags

__all__ = ["HeldLease", "RedisDelivery", "Settlement", "Settler"]


class HeldLease(Lease):
    """The lease of a :class:`RedisDelivery`: a :class:`Lease` that can be weakly referenced.

    The settler remembers the leases its deliveries settled in a weak set (see
    :meth:`Settler.settled`): an entry lasts exactly as long as somebody still holds the lease.
    """

    __slots__ = ("__weakref__",)


class Settlement(NamedTuple):
    """One settlement, as SETTLE takes it (see ``lua/settle.lua``)."""

    op: SettleOp
    lease: Lease
    #: RELEASE: ``"1"`` if executed; REQUEUE: the new body; DEAD_LETTER: the reason
    data: bytes | str = ""
    #: REQUEUE: seconds until due (:func:`eta_delay`)
    delay: str = ""


class Settler:
    """Settles the leases of one broker's deliveries, batched per queue.

    Args:
        settings: where (for the deadline, the dead-letter limit and error text).
        link: the broker's client.
        queue_keys: the keys of a queue.
        keys: the broker's key space (for the registry of queues with dead letters).
    """

    def __init__(
        self,
        settings: RedisSettings,
        link: Link,
        queue_keys: Callable[[str], QueueKeys],
        keys: KeySpace,
    ) -> None:
        self._settings = settings
        self._link = link
        self._queue_keys = queue_keys
        self._dead_queues = keys.dead_queues
        self._batches: Coalescer[Settlement, bool] = Coalescer(self._flush, MAX_BATCH)
        # Leases settled (or being settled) here, for as long as anybody holds them: a
        # renewal that finds one gone raced its own holder's ack, release, requeue or dead
        # letter, and must not report it lost (see RedisBroker.renew).
        self._settled: weakref.WeakSet[Lease] = weakref.WeakSet()

    async def settle(self, settlement: Settlement) -> bool:
        """Apply ``settlement``; ``False`` if its lease had been lost."""
        lease = settlement.lease
        # marked before it can reach Redis: a renewal of the same lease may already be on
        # its way, and finds the message settled by this very holder
        self._settled.add(lease)
        done = await self._batches.submit(settlement)
        if not done:
            self._settled.discard(lease)  # really lost before: a renewal may say so
        return done

    def settled(self, lease: Lease) -> bool:
        """Whether ``lease`` was settled (or is being settled) by its holder here."""
        return lease in self._settled

    async def drain(self) -> None:
        """Wait until every settlement submitted so far was sent."""
        await self._batches.drain()

    async def _flush(self, batch: list[Settlement]) -> list[bool]:
        by_queue: dict[str, list[int]] = defaultdict(list)
        for index, settlement in enumerate(batch):
            by_queue[settlement.lease.queue].append(index)
        calls: list[ScriptCall] = []
        spans: list[list[int]] = []
        dead_queues: list[str] = []
        for queue, indexes in by_queue.items():
            fields: list[bytes | str] = []
            for i in indexes:
                op, lease, data, delay = batch[i]
                fields += (op, lease.id, str(lease.token), data, delay)
                if op is SettleOp.DEAD_LETTER and queue not in dead_queues:
                    dead_queues.append(queue)
            args: list[str | bytes | int | float] = [
                self._settings.dead_letter_limit,
                *pack_fields(fields),
            ]
            calls.append((SETTLE, self._queue_keys(queue).settle, args))
            spans.append(indexes)
        client = await self._link.get()

        async def run() -> list[Any]:
            replies = await run_scripts(client, calls)
            if dead_queues:
                await command(client, "SADD", self._dead_queues, *dead_queues)
            return replies

        replies = await guarded(self._settings, "settle", run, error=BrokerError)
        return flags(spans, replies, len(batch))


class RedisDelivery(BaseDelivery):
    """One claimed message; settle it exactly once with ack, release, requeue or dead_letter.

    ``prior`` is the task's stored result record when the claim read it (see
    :meth:`RedisBroker.bind_records`); ``None`` otherwise or if there is none.
    """

    __slots__ = ("_settler",)

    def __init__(
        self,
        settler: Settler,
        lease: HeldLease,
        body: bytes,
        delivery_count: int,
        prior: bytes | None = None,
    ) -> None:
        super().__init__(lease, body, delivery_count, prior)
        self._settler = settler

    async def ack(self) -> bool:
        """Remove the message. ``False`` if the lease had been lost."""
        return await self._settler.settle(Settlement(SettleOp.ACK, self.lease))

    async def release(self, *, executed: bool) -> bool:
        """Hand the message back, claimable at once; uncounted unless ``executed``."""
        flag = "1" if executed else "0"
        return await self._settler.settle(Settlement(SettleOp.RELEASE, self.lease, flag))

    async def requeue(self, body: bytes, *, eta: float | None) -> bool:
        """Replace the message with ``body`` due at ``eta``, delivery count reset."""
        settlement = Settlement(SettleOp.REQUEUE, self.lease, body, eta_delay(eta))
        return await self._settler.settle(settlement)

    async def dead_letter(self, reason: str) -> bool:
        """Move the message to the queue's dead-letter list with ``reason``."""
        return await self._settler.settle(Settlement(SettleOp.DEAD_LETTER, self.lease, reason))
