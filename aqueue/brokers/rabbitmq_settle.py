"""Settling RabbitMQ deliveries: ack, release (hand-back), requeue, dead-letter.

A mixin of :class:`~aqueue.brokers.rabbitmq_consumer.Consumers`, split out by concept: the
consumer side receives and hands out deliveries, this side settles them, including the
hand-back machinery (withdraw consumers, return buffered messages with their prior
delivery count, make sure RabbitMQ processed the acks) described in
docs/brokers/rabbitmq.md.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from aqueue.core.errors import BrokerError
from aqueue.core.protocols import DEAD_LETTER_BODY_LIMIT

from .rabbitmq_delivery import Consumer, Pending, RabbitMQDelivery, Waiters
from .rabbitmq_link import AMQP_ERRORS, Link
from .rabbitmq_topology import (
    DEAD_AT_HEADER,
    PRIOR_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    SIZE_HEADER,
    RabbitSettings,
    Topology,
    eta_ms,
)

log = logging.getLogger("aqueue.broker.rabbitmq")

#: longest wait, before consumers are cancelled, for deliveries already on their way
QUIESCE_MAX = 1.0


class Settlement:
    """How claimed deliveries are settled; the state lives in ``Consumers``."""

    link: Link
    settings: RabbitSettings
    topo: Topology
    consumers: dict[str, Consumer]
    buffers: dict[str, list[tuple[int, int, Pending]]]
    inflight: dict[str, int]
    prefetch: int
    _seq: itertools.count[int]
    _active: int
    _withdrawn: bool
    _waiters: Waiters
    _lock: asyncio.Lock
    _live: set[int]
    _live_lock: threading.Lock
    _uncounted: OrderedDict[str, int]

    def drop(self, c: Consumer, *, cancel: bool = True) -> None:
        raise NotImplementedError

    async def _cancel_consumers(self, consumers: Sequence[Consumer], doing: str) -> bool:
        """Forget and cancel ``consumers``; ``False`` if their channel is gone (RabbitMQ has
        requeued everything they held, so there is nothing left to hand back)."""
        for c in consumers:
            self.drop(c, cancel=False)
        try:
            async with asyncio.timeout(self.settings.operation_timeout):
                for c in consumers:
                    await c.channel.basic_cancel(c.tag)
        except Exception as exc:
            log.debug("%s consumers failed: %s", doing, type(exc).__name__)
            return False
        return True

    def _arm_idle(self) -> None:
        raise NotImplementedError

    def _holds(self, d: RabbitMQDelivery) -> bool:
        return not d._settled and d._gen == self.link.gen and self.link.live_consuming() is not None

    def _settle(self, d: RabbitMQDelivery) -> None:
        d._settled = True
        with self._live_lock:
            self._live.discard(d.lease.token)
        if d._gen == self.link.gen:
            left = self.inflight.get(d.queue, 0) - 1
            if left > 0:
                self.inflight[d.queue] = left
            else:
                self.inflight.pop(d.queue, None)

    async def _settle_one(self, p: Pending, *, requeue: bool | None) -> None:
        """One ack (``requeue=None``) or nack frame for ``p``, on its own.

        Raises:
            BrokerError: its consuming channel is gone (RabbitMQ requeued the message).
        """
        acks = self.link.acks
        if acks is None or acks.gen != p.gen:
            raise BrokerError(f"the consuming channel of {p.id} is gone")
        async with asyncio.timeout(self.settings.operation_timeout):
            await acks.one(p.tag, requeue=requeue)

    def _final(self, d: RabbitMQDelivery) -> bool:
        """Ack: the message is gone for good, and so is its delivery-count correction.

        The ack is queued and written within the next event-loop turn, batched with the
        others of that turn (see rabbitmq_acks); a crash before then redelivers it.
        """
        acks = self.link.acks
        if acks is None or acks.gen != d._gen:
            return False
        self._settle(d)
        acks.ack(d._tag)
        self._uncounted.pop(d.id, None)
        return True

    async def ack(self, d: RabbitMQDelivery) -> bool:
        if not self._holds(d):
            return False
        return self._final(d)

    async def release(self, d: RabbitMQDelivery, *, executed: bool) -> bool:
        if not self._holds(d):
            return False
        others = sum(self.inflight.values()) > 1
        if not self._active and (executed or others or self._withdrawn):
            # Handed back while nothing claims: the worker is stopping, or runs a poison
            # suspect alone. Hold nothing more: a nacked message must not come straight back
            # to this process (to be counted again when it closes or dies), and if it dies
            # now, messages it merely buffered must not be blamed. (Unexecuted, with nothing
            # else held: back into the buffer, below; the idle pause hands it back.)
            await self._withdraw()
            if not self._holds(d):
                return False
            if not executed:
                self._settle(d)
                await self._return_uncounted([d.pending()])  # or kept here if that fails
                return True
        if executed:
            self._settle(d)
            try:
                await self._settle_one(d.pending(), requeue=True)
            except Exception as exc:  # the channel died under us: it will be redelivered
                log.debug("settling %s failed: %s", d.id, type(exc).__name__)
                return False
            return True
        # never started: back into the buffer, still unacknowledged on the same channel
        self._settle(d)
        self._push(d.pending())
        return True

    def _push(self, pending: Pending) -> None:
        """Back into the buffer, unacknowledged on its channel: claimable here at once."""
        heapq.heappush(
            self.buffers.setdefault(pending.queue, []),
            (-pending.priority, next(self._seq), pending),
        )
        self._waiters.notify()
        if not self._active:
            self._arm_idle()

    async def _withdraw(self) -> None:
        """Cancel the consumers and hand back what they buffered, without counting a
        delivery; the next claim starts them again."""
        async with self._lock:  # not while a claim starts consumers
            if self._active:
                return
            consumers = list(self.consumers.values())
            try:
                await self._quiesce(consumers)
            except (*AMQP_ERRORS, BrokerError, TimeoutError) as exc:
                log.debug("waiting for deliveries on their way failed: %s", type(exc).__name__)
            self._withdrawn = True
            if not await self._cancel_consumers(consumers, "withdrawing"):
                return
            pending = [p for heap in self.buffers.values() for _, _, p in heap]
            self.buffers.clear()
            if pending:
                await self._return_uncounted(pending)
                log.info("not claiming: handed back %d buffered message(s)", len(pending))

    async def _quiesce(self, consumers: Sequence[Consumer]) -> None:
        """Before cancelling consumers, let the deliveries already on their way arrive.

        RabbitMQ (3.10) returns a delivery still on its way to a cancelled consumer and
        counts it, though no task ever saw it; a consumer with its window full, or whose
        queue had nothing ready and that received nothing during a round trip, has none on
        its way. Bounded by ``QUIESCE_MAX`` (other consumers may keep a window from filling).
        """
        if not consumers:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QUIESCE_MAX
        names = [self.topo.work(c.queue) for c in consumers]
        while loop.time() < deadline:
            held = sum(self.inflight.values()) + sum(len(h) for h in self.buffers.values())
            if self.prefetch and held >= self.prefetch:
                return  # no credit left: nothing can be on its way
            received = sum(c.received for c in consumers)
            async with asyncio.timeout(self.settings.operation_timeout):
                ready = sum((await self.link.probe(names)).values())
            await self._acks_processed()  # a round trip on the consuming channel
            if not ready and sum(c.received for c in consumers) == received:
                return
            waiter = self._waiters.new()
            try:
                async with asyncio.timeout(max(0.001, min(0.05, deadline - loop.time()))):
                    await waiter
            except TimeoutError:
                pass
            finally:
                self._waiters.futures.discard(waiter)

    async def _return_uncounted(self, pending: Sequence[Pending]) -> bool:
        """Hand messages back to their queues without counting a delivery (a nack would):
        publish copies carrying the deliveries they used (confirmed), then ack the originals.

        At-least-once: if the connection dies between the confirm and an ack, the copy and
        the original both exist. Returns whether every one was handed back; one that could
        not be re-published goes back into the buffer (its channel still alive) and returns
        with a delivery counted when this process pauses, closes or dies.
        """
        if self.link.live_consuming() is None:
            return False  # their channel died: RabbitMQ requeued them already
        live = [p for p in pending if p.gen == self.link.gen]

        async def one(p: Pending) -> bool:
            headers = {PRIOR_HEADER: p.count - 1} if p.count > 1 else None
            try:
                async with asyncio.timeout(self.settings.operation_timeout):
                    await self.link.ensure_queue(p.queue)
                    await self.link.send(p.queue, p.id, p.body, p.priority, None, headers)
            except Exception as exc:
                log.warning(
                    "could not hand back message %s of queue %s uncounted (%s); keeping it",
                    p.id,
                    p.queue,
                    self.link.scrub(exc),
                )
                if p.gen == self.link.gen:
                    self._push(p)
                return False
            if p.gen != self.link.gen:
                return True  # the channel died after the confirm: the original comes back too
            try:
                await self._settle_one(p, requeue=None)
            except Exception as exc:  # the copy is stored; the original will come back too
                log.warning(
                    "message %s handed back but its ack failed (%s): it may arrive twice",
                    p.id,
                    self.link.scrub(exc),
                )
            self._uncounted.pop(p.id, None)  # the copy carries its count
            return True

        done = await asyncio.gather(*(one(p) for p in live))
        await self._acks_processed()
        return all(done) and len(live) == len(pending)

    async def _acks_processed(self) -> None:
        """One round trip on the consuming channel, so RabbitMQ has processed the acks sent
        before it (an ack has no reply). Without it, a process that dies right after (a
        poison suspect running alone) can lose them, and the originals come back counted."""
        channel = self.link.live_consuming()
        acks = self.link.acks
        if channel is None or acks is None:
            return
        try:
            async with asyncio.timeout(self.settings.operation_timeout):
                await acks.flush()  # the queued acks go before the round trip
                await channel.basic_qos(prefetch_count=self.prefetch)
        except Exception as exc:  # the channel died: what was not acked comes back anyway
            log.debug("waiting for acks to be processed failed: %s", type(exc).__name__)

    async def _publish_then_ack(
        self,
        d: RabbitMQDelivery,
        body: bytes,
        eta: int | None,
        headers: dict[str, Any] | None = None,
        routing_key: str | None = None,
    ) -> bool:
        """The new message first (confirmed), then the ack: at-least-once. If the ack is
        lost, both exist: the old one is redelivered (a duplicate with a named cause)."""
        if not self._holds(d):
            return False
        try:
            async with asyncio.timeout(self.settings.operation_timeout):
                await self.link.ensure_queue(d.queue)
                await self.link.send(
                    d.queue, d.id, body, d._priority, eta, headers, routing_key=routing_key
                )
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"no confirm within {self.settings.operation_timeout}s")
            raise self.link.publish_error(exc, d.queue) from None
        if not self._holds(d):
            return False
        return self._final(d)

    async def requeue(self, d: RabbitMQDelivery, body: bytes, eta: float | None) -> bool:
        return await self._publish_then_ack(d, body, eta_ms(eta))

    async def dead_letter(self, d: RabbitMQDelivery, reason: str) -> bool:
        """Publish the start of the body (``DEAD_LETTER_BODY_LIMIT`` bytes) to the dead-letter
        queue with the reason and the original size, then ack: a huge message must not be
        kept whole, once per dead letter, in a queue nobody drains."""
        headers = {
            REASON_HEADER: reason,
            DEAD_AT_HEADER: int(time.time() * 1000),
            QUEUE_HEADER: d.queue,
            SIZE_HEADER: len(d.body),
        }
        return await self._publish_then_ack(
            d, d.body[:DEAD_LETTER_BODY_LIMIT], None, headers, routing_key=self.topo.dlq(d.queue)
        )
