"""The consuming side of the RabbitMQ broker: one consumer per queue feeding an in-process
buffer, claims taken from it, settlement of what was claimed (ack, hand-back, requeue,
dead-letter), and a watchdog.

A delivery belongs to the consuming channel it arrived on (its generation). When that
channel dies, RabbitMQ requeues everything unacknowledged on it at once; here, every
buffered message is dropped and every claimed delivery is fenced: its ``ack`` returns
``False`` and ``renew`` reports its lease lost.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Coroutine, Sequence
from functools import partial
from typing import Any, TypeVar

from aiormq.abc import DeliveredMessage

from aqueue.core.errors import BrokerError
from aqueue.core.protocols import DEAD_LETTER_BODY_LIMIT, Delivery, Lease
from aqueue.transports.amqp.link import AMQP_ERRORS

from .channels import Channels
from .delivery import Consumer, Pending, RabbitMQDelivery, Waiters
from .topology import (
    DEAD_AT_HEADER,
    ETA_HEADER,
    PRIOR_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    SIZE_HEADER,
    eta_ms,
)

log = logging.getLogger("aqueue.broker.rabbitmq")
T = TypeVar("T")

#: how long a claim waits, at most, for the messages a freshly started consumer was told
#: are ready, so that "earlier queues first" and "highest priority first" see them all
PRIME_WAIT = 1.0
#: pause before handing back a message whose next delay hop could not be published
REDELAY_RETRY = 1.0
MAX_PREFETCH = 65535
UNCOUNTED_MAX = 100_000
#: longest wait, before consumers are cancelled, for deliveries already on their way
QUIESCE_MAX = 1.0


class Consumers:
    """Consumers, their buffers, claims and the settlement of what was claimed, for one
    broker.

    Settling includes the hand-back machinery described in docs/brokers/rabbitmq.md:
    withdraw the consumers, return buffered messages with their prior delivery count, make
    sure RabbitMQ processed the acks.
    """

    def __init__(self, channels: Channels) -> None:
        self.channels = channels
        self.settings = channels.settings
        self.options = channels.options
        self.topo = channels.topo
        self.consumers: dict[str, Consumer] = {}
        self.buffers: dict[str, list[tuple[int, int, Pending]]] = {}
        self.inflight: dict[str, int] = {}  # claimed, unsettled, per queue
        self.prefetch = self.options.prefetch or 0
        self.background: set[asyncio.Task[Any]] = set()
        self.claims = itertools.count(1)
        self._seq = itertools.count()
        self._active = 0  # claims in progress
        # consumers cancelled because a release came while nothing claimed (the worker is
        # stopping, or running a poison suspect alone): stragglers are handed back too
        self._withdrawn = False
        self._idle: asyncio.Task[None] | None = None
        self._waiters = Waiters()
        self._lock = asyncio.Lock()
        # tokens of claimed, unsettled deliveries of the live generation; renew() reads
        # them from another thread
        self._live: set[int] = set()
        self._live_lock = threading.Lock()
        # unexecuted hand-backs, and connection losses of unclaimed messages: subtracted
        # from the quorum delivery count while the message keeps coming back here
        self._uncounted: OrderedDict[str, int] = OrderedDict()
        # queue -> whether it is a quorum queue (which counts deliveries in a header)
        self._quorum: dict[str, bool] = {}
        channels.listener = self

    # -- events from the channels ---------------------------------------------------

    def wake(self) -> None:
        self._waiters.notify()

    def routing_changed(self) -> None:
        """The app's routing changed: queue types are looked up again."""
        self._quorum.clear()

    def consuming_lost(self, exc: BaseException | None) -> None:
        """The consuming channel died: fence its deliveries, forget its buffered messages."""
        held = sum(self.inflight.values())
        # CancelledError: the event loop is ending without the app being closed
        ending = isinstance(exc, asyncio.CancelledError)
        if exc is not None and not self.channels.closing and not ending:
            text = self.channels.scrub(exc)
            if "acknowledgement" in text and "timed out" in text:
                log.error(
                    "RabbitMQ closed the consuming channel because a delivery stayed "
                    "unacknowledged longer than its consumer_timeout (%s). The %d message(s) "
                    "held on it are redelivered and may run again as a new attempt. Raise "
                    "consumer_timeout in rabbitmq.conf (or the broker option consumer_timeout "
                    "on RabbitMQ >= 3.12) above the longest task, or shorten the task.",
                    text,
                    held,
                )
            else:
                log.warning(
                    "consuming channel lost (%s); %d claimed message(s) will be redelivered",
                    text,
                    held,
                )
        for heap in self.buffers.values():
            for _, _, pending in heap:
                # never handed to a task: the server's extra delivery count does not count
                self._add_uncounted(pending.id)
        self.buffers.clear()
        self.consumers.clear()
        self.inflight.clear()
        with self._live_lock:
            self._live.clear()

    def consumer_cancelled(self, frame: Any) -> None:
        """RabbitMQ cancelled a consumer: its queue was deleted (or its node went away)."""
        tag = getattr(frame, "consumer_tag", None)
        for queue, consumer in list(self.consumers.items()):
            if consumer.tag == tag:
                del self.consumers[queue]
                self.channels.inline.pop(consumer.tag, None)
                self.buffers.pop(queue, None)  # they went with the queue
                self.channels.mark_vanished(queue)
                if not self.channels.closing:
                    log.warning(
                        "RabbitMQ cancelled the consumer of queue %s (queue deleted?); "
                        "declaring it again and consuming on the next claim",
                        queue,
                    )
                self._waiters.notify()
                return

    def _add_uncounted(self, id_: str, n: int = 1) -> None:
        total = self._uncounted.get(id_, 0) + n
        if total <= 0:
            self._uncounted.pop(id_, None)
            return
        self._uncounted[id_] = total
        self._uncounted.move_to_end(id_)
        while len(self._uncounted) > UNCOUNTED_MAX:
            self._uncounted.popitem(last=False)

    # -- receiving ------------------------------------------------------------------

    async def _on_message(self, queue: str, gen: int, message: DeliveredMessage) -> None:
        """aiormq's consumer callback (a task per delivery), used where the channel's reader
        cannot call :meth:`_deliver` inline (``Channels.inline_hook`` is ``None``)."""
        self._deliver(queue, gen, message)

    def _deliver(self, queue: str, gen: int, message: DeliveredMessage) -> None:
        """Buffer a delivery, or send it on if it is not due yet (no await: it runs inline
        in the consuming channel's reader)."""
        if gen != self.channels.gen:
            return  # from a dead channel: RabbitMQ requeues it
        consumer = self.consumers.get(queue)
        if consumer is not None and consumer.gen == gen:
            consumer.received += 1
        props = message.header.properties
        headers = props.headers or {}
        id_ = props.message_id or f"no-id-{uuid.uuid4().hex}"
        priority = props.priority or 0
        tag = message.delivery_tag or 0
        due = headers.get(ETA_HEADER)
        if isinstance(due, int) and due > int(time.time() * 1000):
            early = Pending(tag, message.body, id_, queue, 1, priority, gen)
            self.spawn(self._redelay(early, due))
            self._waiters.notify()  # a claim waiting for priming looks again
            return
        quorum = self._quorum.get(queue)
        if quorum is None:  # per queue: task_queues may make some classic
            quorum = self._quorum[queue] = self.topo.queue_type(queue) == "quorum"
        if quorum:
            raw = headers.get("x-delivery-count", 0)
            count = 1 + (raw if isinstance(raw, int) else 0)
        else:
            count = 2 if message.redelivered else 1
        prior = headers.get(PRIOR_HEADER, 0)
        if isinstance(prior, int) and prior > 0:
            count += prior  # a copy handed back unexecuted: the deliveries it used before
        adjust = self._uncounted.get(id_, 0)  # kept until the message is settled for good
        if adjust:
            count = max(1, count - adjust)
        pending = Pending(tag, message.body, id_, queue, count, priority, gen)
        if self._withdrawn and queue not in self.consumers:
            # in transit when the consumers were withdrawn: this process holds nothing more
            self.spawn(self._return_uncounted([pending]))
            return
        heapq.heappush(self.buffers.setdefault(queue, []), (-priority, next(self._seq), pending))
        self._waiters.notify()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; ``close()`` cancels what is left."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def _redelay(self, p: Pending, due: int) -> None:
        """A message came back from a delay queue before its ETA: next hop, then ack."""
        queue, id_ = p.queue, p.id
        try:
            async with asyncio.timeout(self.settings.operation_timeout):
                await self.channels.send(queue, id_, p.body, p.priority, due)
        except Exception as exc:
            log.warning(
                "could not send message %s of queue %s on to its next delay hop (%s); "
                "handing it back",
                id_,
                queue,
                self.channels.scrub(exc),
            )
            await asyncio.sleep(REDELAY_RETRY)
            try:
                await self._settle_one(p, requeue=True)
            except Exception:  # the channel died: RabbitMQ requeues it anyway
                log.debug("hand-back of %s failed: its channel is gone", id_)
            return
        try:
            await self._settle_one(p, requeue=None)
        except Exception as exc:  # the copy is stored; the original will come back too
            log.warning(
                "delayed message %s re-sent but its ack failed (%s): it may arrive twice",
                id_,
                self.channels.scrub(exc),
            )

    # -- consumers ------------------------------------------------------------------

    async def _start(self, queues: Sequence[str], prefetch: int) -> None:
        async with self._lock:
            self._withdrawn = False
            channel = await self.channels.consuming()
            gen = self.channels.gen
            if prefetch > self.prefetch or not self.prefetch:
                # basic.qos applies to consumers started after it: restart them all.
                # What they delivered already stays valid (same channel).
                if self.prefetch:
                    log.info("raising prefetch from %d to %d", self.prefetch, prefetch)
                self.prefetch = prefetch
                previous = list(self.consumers)
                for consumer in list(self.consumers.values()):
                    await consumer.channel.basic_cancel(consumer.tag)
                    del self.consumers[consumer.queue]
                    self.channels.inline.pop(consumer.tag, None)
                queues = list(dict.fromkeys([*queues, *previous]))
            loop = asyncio.get_running_loop()
            await channel.basic_qos(prefetch_count=self.prefetch)
            for queue in queues:
                if queue in self.consumers or gen != self.channels.gen:
                    continue
                await self.channels.ensure_queue(queue)
                # declaring again is cheap and tells how many messages are ready right now
                ready = await self.channels.declare_work(queue)
                # aiormq's consumer directly: aio-pika would wrap every delivery in an
                # IncomingMessage and a second task; called inline by the channel's reader
                tag = f"aqueue-{uuid.uuid4().hex}"
                now = loop.time()
                consumer = Consumer(
                    queue,
                    channel,
                    tag,
                    gen,
                    expected=min(ready, self.prefetch),
                    prime_until=now + PRIME_WAIT,
                    checked=now,
                )
                # registered first: the channel's reader delivers right after consume-ok,
                # before this coroutine runs again, and those deliveries count for priming
                self.consumers[queue] = consumer
                self.channels.inline[tag] = partial(self._deliver, queue, gen)
                try:
                    await channel.basic_consume(
                        self.topo.work(queue),
                        partial(self._on_message, queue, gen),
                        consumer_tag=tag,
                    )
                except BaseException:
                    self.channels.inline.pop(tag, None)
                    if self.consumers.get(queue) is consumer:
                        del self.consumers[queue]
                    raise

    async def _ensure(self, queues: Sequence[str], limit: int) -> None:
        held = sum(self.inflight.values())
        want = min(max(held + limit, self.prefetch, 1), MAX_PREFETCH)
        if (
            self.channels.live_consuming() is not None
            and want <= self.prefetch
            and all(q in self.consumers for q in queues)
        ):
            return
        s = self.settings
        seconds = s.operation_timeout + s.connect_timeout
        task = self.spawn(_with_timeout(self._start(queues, want), seconds))
        try:
            # shielded: a cancelled claim must not leave a consumer half registered
            await asyncio.shield(task)
        except TimeoutError:
            raise BrokerError(f"starting consumers on {s.redacted} timed out") from None
        except AMQP_ERRORS as exc:
            raise BrokerError(
                f"could not consume from {s.redacted}: {self.channels.scrub(exc)}"
            ) from None

    def drop(self, c: Consumer, *, cancel: bool = True) -> None:
        """Forget a consumer (the next claim starts a new one) and cancel it quietly."""
        if self.consumers.get(c.queue) is c:
            del self.consumers[c.queue]
        # deliveries still on their way to it go through aiormq's own callback
        self.channels.inline.pop(c.tag, None)
        if not cancel:
            return
        self.channels.forget(c.queue)

        async def cancel_quietly() -> None:
            try:
                async with asyncio.timeout(self.settings.operation_timeout):
                    await c.channel.basic_cancel(c.tag)
            except Exception as exc:  # the consumer or its channel is gone already
                log.debug("cancelling consumer %s failed: %s", c.tag, type(exc).__name__)

        self.spawn(cancel_quietly())

    async def _watchdog(self, consumers: Sequence[Consumer], now: float) -> bool:
        """Find consumers that are registered but receive nothing; drop them to restart.

        RabbitMQ can leave a consumer attached to a queue that was deleted and declared
        again by someone else, without a cancel notification; it never receives anything.
        An idle claim checks each consumer every ``watchdog_interval`` seconds with a
        passive declare: a missing queue, or ready messages while the consumer has room and
        received nothing in two checks in a row, restarts it (on a new channel when nothing
        is held here, which also frees deliveries stuck with the dead consumer).
        """
        restarted = False
        for c in consumers:
            if now - c.checked < self.options.watchdog_interval:
                continue
            c.checked = now
            try:
                ready = await self.channels.ready_count(self.topo.work(c.queue))
            except (*AMQP_ERRORS, BrokerError, TimeoutError) as exc:
                log.debug("watchdog check of %s failed: %s", c.queue, type(exc).__name__)
                return restarted
            if self.consumers.get(c.queue) is not c:
                continue
            if ready is None:
                log.warning("queue %s is gone under its consumer; declaring it again", c.queue)
                self.drop(c)
                self.channels.mark_vanished(c.queue)
                restarted = True
                continue
            held = len(self.buffers.get(c.queue, ())) + self.inflight.get(c.queue, 0)
            if ready > 0 and held < self.prefetch and c.received == c.seen:
                c.stalls += 1
                if c.stalls >= 2:
                    idle = not any(self.inflight.values()) and not any(self.buffers.values())
                    log.warning(
                        "the consumer of queue %s received nothing while %d message(s) were "
                        "ready; starting it again%s",
                        c.queue,
                        ready,
                        " on a new channel" if idle else "",
                    )
                    self.drop(c)
                    if idle:
                        await self.channels.close_consuming()
                    restarted = True
                    continue
            else:
                c.stalls = 0
            c.seen = c.received
        return restarted

    # -- claiming -------------------------------------------------------------------

    def _enough(self, queues: Sequence[str], limit: int, now: float) -> bool:
        """Whether the queues before the first still-priming one have ``limit`` buffered."""
        buffered = 0
        for queue in queues:
            consumer = self.consumers.get(queue)
            if consumer is not None and not consumer.primed(now):
                break
            buffered += len(self.buffers.get(queue, ()))
        return buffered >= limit

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        tokens: list[int] = []
        gen = self.channels.gen
        claims = self.claims
        for queue in queues:
            heap = self.buffers.get(queue)
            taken = 0
            while heap and len(out) < limit:
                _, _, pending = heapq.heappop(heap)
                if pending.gen != gen:
                    continue
                delivery = RabbitMQDelivery(self, pending, next(claims))
                tokens.append(delivery.lease.token)
                out.append(delivery)
                taken += 1
            if taken:
                self.inflight[queue] = self.inflight.get(queue, 0) + taken
        if tokens:
            with self._live_lock:
                self._live.update(tokens)
        return out

    async def claim(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` buffered messages, earlier queues first, then priority, then FIFO.

        Waits up to ``timeout`` (longer only while a just-started consumer is still
        receiving what its queue held, at most ``PRIME_WAIT``). Cancel-safe: nothing is
        taken before the last await.
        """
        self._active += 1
        try:
            return await self._claim(queues, limit, timeout)
        finally:
            self._active -= 1
            if not self._active:
                self._arm_idle()

    async def _claim(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self.options.watchdog_interval
        while True:
            waiter = self._waiters.new()
            try:
                await self._ensure(queues, limit)
                now = loop.time()
                consumers = [self.consumers[q] for q in queues if q in self.consumers]
                unprimed = [c.prime_until for c in consumers if not c.primed(now)]
                if not unprimed or now >= deadline or self._enough(queues, limit, now):
                    out = self._take(queues, limit)
                    if out or now >= deadline:
                        return out
                wait = deadline - now
                if unprimed:
                    wait = min(wait, min(unprimed) - now)
                elif consumers:
                    if await self._watchdog(consumers, now):
                        continue  # a consumer is being started again
                    now = loop.time()
                    next_check = min(c.checked for c in consumers) + interval
                    wait = min(deadline - now, next_check - now)
                try:
                    async with asyncio.timeout(max(wait, 0.001)):
                        await waiter
                except TimeoutError:
                    pass
            finally:
                self._waiters.futures.discard(waiter)

    def _arm_idle(self) -> None:
        if self._idle is None or self._idle.done():
            self._idle = self.spawn(self._idle_watch())

    async def _idle_watch(self) -> None:
        """While nobody claims and nothing is held, hand back what the consumers delivered
        and pause them.

        Without this a process that stopped claiming (an embedded worker that stopped while
        its app lives on) would hold up to a prefetch window of messages per queue for as
        long as it runs. The next claim restarts the consumers.
        """
        idle = self.options.idle_timeout
        while not self._active and self.consumers:
            await asyncio.sleep(idle)
            if self._idle_now():
                await self._pause()
                return

    def _idle_now(self) -> bool:
        # A worker that holds deliveries but does not claim is busy (its slots are full),
        # not gone: its buffer is what it claims next, so it is left alone.
        return not self._active and not any(self.inflight.values()) and any(self.buffers.values())

    async def _pause(self) -> None:
        async with self._lock:  # not while a claim starts consumers
            if not self._idle_now():
                return
            if not await self._cancel_consumers(list(self.consumers.values()), "pausing"):
                return
            pending = [p for heap in self.buffers.values() for _, _, p in heap]
            self.buffers.clear()
            for p in pending:
                self._add_uncounted(p.id)  # a requeue, not a delivery to a task
                try:
                    await self._settle_one(p, requeue=True)
                except Exception:  # the channel died: RabbitMQ requeued it anyway
                    log.debug("hand-back of %s failed: its channel is gone", p.id)
            if pending:
                log.info(
                    "no claims for %.1fs: handed back %d buffered message(s), consumers paused",
                    self.options.idle_timeout,
                    len(pending),
                )

    def renew(self, leases: Sequence[Lease]) -> list[Lease]:
        """The leases whose channel died or that were settled (thread-safe, no I/O)."""
        with self._live_lock:
            return [lease for lease in leases if lease.token not in self._live]

    def local(self, queue: str) -> int:
        """Messages of ``queue`` this process holds: buffered plus claimed."""
        return len(self.buffers.get(queue, ())) + self.inflight.get(queue, 0)

    async def drop_buffered(self, queue: str) -> int:
        """Ack (delete) the unclaimed messages buffered for ``queue``; how many."""
        dropped = 0
        for _, _, pending in self.buffers.pop(queue, []):
            try:
                await self._settle_one(pending, requeue=None)
                dropped += 1
            except Exception as exc:  # the channel died: the message is back in the queue
                log.debug("purge: ack of a buffered message failed (%s)", type(exc).__name__)
        return dropped

    async def close(self) -> None:
        """Write the acks still queued (and wait until RabbitMQ processed them), then cancel
        background work (delay hops, consumer starts)."""
        if self.channels.acks is not None and self.channels.live_consuming() is not None:
            await self.acks_processed()
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.operation_timeout)

    # -- settling -------------------------------------------------------------------

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

    def _holds(self, d: RabbitMQDelivery) -> bool:
        return (
            not d.settled
            and d.gen == self.channels.gen
            and self.channels.live_consuming() is not None
        )

    def _settle(self, d: RabbitMQDelivery) -> None:
        d.settled = True
        with self._live_lock:
            self._live.discard(d.lease.token)
        if d.gen == self.channels.gen:
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
        acks = self.channels.acks
        if acks is None or acks.gen != p.gen:
            raise BrokerError(f"the consuming channel of {p.id} is gone")
        async with asyncio.timeout(self.settings.operation_timeout):
            await acks.one(p.tag, requeue=requeue)

    def _final(self, d: RabbitMQDelivery) -> bool:
        """Ack: the message is gone for good, and so is its delivery-count correction.

        The ack is queued and written within the next event-loop turn, batched with the
        others of that turn (see :mod:`.acks`); a crash before then redelivers it.
        """
        acks = self.channels.acks
        if acks is None or acks.gen != d.gen:
            return False
        self._settle(d)
        acks.ack(d.tag)
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

    async def stop_consuming(self, queue: str) -> None:
        """Cancel the consumer of ``queue`` and hand back (uncounted) what it buffered: a
        worker stopped consuming it (``control cancel_consumer``). Claimed deliveries of it
        stay held until settled."""
        async with self._lock:  # not while a claim starts consumers
            consumer = self.consumers.get(queue)
            if consumer is None:
                return
            try:
                await self._quiesce([consumer])
            except (*AMQP_ERRORS, BrokerError, TimeoutError) as exc:
                log.debug("waiting for deliveries on their way failed: %s", type(exc).__name__)
            if not await self._cancel_consumers([consumer], "stopping"):
                return
            # after cancel-ok nothing more arrives for it (the channel's frames are in order)
            pending = [p for _, _, p in self.buffers.pop(queue, [])]
            if pending:
                await self._return_uncounted(pending)
                log.info("stopped consuming %s: handed back %d message(s)", queue, len(pending))

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
                ready = sum((await self.channels.probe(names)).values())
            await self.acks_processed()  # a round trip on the consuming channel
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
        if self.channels.live_consuming() is None:
            return False  # their channel died: RabbitMQ requeued them already
        live = [p for p in pending if p.gen == self.channels.gen]

        async def one(p: Pending) -> bool:
            headers = {PRIOR_HEADER: p.count - 1} if p.count > 1 else None
            try:
                async with asyncio.timeout(self.settings.operation_timeout):
                    await self.channels.ensure_queue(p.queue)
                    await self.channels.send(p.queue, p.id, p.body, p.priority, None, headers)
            except Exception as exc:
                log.warning(
                    "could not hand back message %s of queue %s uncounted (%s); keeping it",
                    p.id,
                    p.queue,
                    self.channels.scrub(exc),
                )
                if p.gen == self.channels.gen:
                    self._push(p)
                return False
            if p.gen != self.channels.gen:
                return True  # the channel died after the confirm: the original comes back too
            try:
                await self._settle_one(p, requeue=None)
            except Exception as exc:  # the copy is stored; the original will come back too
                log.warning(
                    "message %s handed back but its ack failed (%s): it may arrive twice",
                    p.id,
                    self.channels.scrub(exc),
                )
            self._uncounted.pop(p.id, None)  # the copy carries its count
            return True

        done = await asyncio.gather(*(one(p) for p in live))
        await self.acks_processed()
        return all(done) and len(live) == len(pending)

    async def acks_processed(self) -> None:
        """One round trip on the consuming channel, so RabbitMQ has processed the acks sent
        before it (an ack has no reply). Without it, a process that dies right after (a
        poison suspect running alone) can lose them, and the originals come back counted."""
        channel = self.channels.live_consuming()
        acks = self.channels.acks
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
                await self.channels.ensure_queue(d.queue)
                await self.channels.send(
                    d.queue, d.id, body, d.priority, eta, headers, routing_key=routing_key
                )
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"no confirm within {self.settings.operation_timeout}s")
            raise self.channels.publish_error(exc, d.queue) from None
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


async def _with_timeout(coro: Awaitable[T], seconds: float) -> T:
    async with asyncio.timeout(seconds):
        return await coro
