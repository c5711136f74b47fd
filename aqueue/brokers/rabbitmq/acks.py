"""Settlement frames on the consuming channel: acks batched into ``basic.ack(multiple)``.

An ack has no reply in AMQP, so sending one per task costs a frame and a socket write each
(and, with aiormq's ``wait=True``, an event-loop round trip), for nothing the caller can
observe. Here ``ack()`` only queues the delivery tag; once per event-loop turn the queued
tags are written, and those that extend the run of settled tags at the bottom of the
channel go out as **one** ``basic.ack(multiple=True)``.

Safety of ``multiple``: RabbitMQ acknowledges every *outstanding* delivery whose tag is at
most the one sent. Delivery tags are consecutive per channel, starting at 1. ``low`` is the
smallest tag not known to be settled; only a tag whose own settlement frame was written
(ack, nack) or that is in the batch being written counts as settled. A multiple ack names a
tag below ``low`` (the highest such tag of the batch: RabbitMQ refuses a multiple ack whose
own tag is not outstanding), so it never covers a message that is buffered, still running,
or was never seen here (a gap in the tags stops ``low`` for good: the rest go one by one).
Tags above ``low`` in a batch are acked one by one (``multiple=False``) in the same write,
never held back.

A crash or a channel loss before the frame is written returns the message to the queue: the
task runs again (a duplicate, never a loss), exactly as for an ack lost in flight.
"""

from __future__ import annotations

import asyncio
import bisect
import logging

from aiormq.abc import AbstractChannel

from aqueue.transports.amqp.link import AMQP_ERRORS

log = logging.getLogger("aqueue.broker.rabbitmq")


class Acks:
    """The settlement frames of one consuming channel (one generation)."""

    __slots__ = ("_task", "channel", "frames", "gen", "low", "pending", "runs", "settled")

    def __init__(self, channel: AbstractChannel, gen: int) -> None:
        self.channel = channel
        self.gen = gen
        #: every tag below is settled (its frame written)
        self.low = 1
        #: settled tags above ``low``: sorted, disjoint, non-adjacent ``[first, last]`` runs
        self.runs: list[list[int]] = []
        #: acks queued, not written yet
        self.pending: list[int] = []
        self._task: asyncio.Task[None] | None = None
        #: counters, for tests and debugging: frames written, tags settled
        self.frames = 0
        self.settled = 0

    # -- bookkeeping ------------------------------------------------------------------

    def mark(self, tag: int) -> None:
        """Record ``tag`` as settled, advancing ``low`` over the runs it joins."""
        low, runs = self.low, self.runs
        if tag < low:
            return
        if tag == low:
            low += 1
            if runs and runs[0][0] == low:
                low = runs.pop(0)[1] + 1
            self.low = low
            return
        i = bisect.bisect_left(runs, [tag])
        joins_prev = i > 0 and runs[i - 1][1] >= tag - 1
        joins_next = i < len(runs) and runs[i][0] <= tag + 1
        if joins_prev and joins_next:
            runs[i - 1][1] = runs[i][1]
            del runs[i]
        elif joins_prev:
            runs[i - 1][1] = max(runs[i - 1][1], tag)
        elif joins_next:
            runs[i][0] = min(runs[i][0], tag)
        else:
            runs.insert(i, [tag, tag])

    # -- acks ---------------------------------------------------------------------------

    def ack(self, tag: int) -> None:
        """Queue an ack of ``tag``; it is written within the next event-loop turn."""
        self.pending.append(tag)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write_pending())

    async def flush(self) -> None:
        """Return once every ack queued so far was handed to the connection's writer (or
        dropped because the channel died). Cancelling the caller does not stop it."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def _write_pending(self) -> None:
        channel = self.channel
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                batch.sort()
                for tag in batch:
                    self.mark(tag)
                # RabbitMQ closes the channel on a multiple ack whose own tag is not
                # outstanding ("unknown delivery tag"): name the batch's highest below low
                low = self.low
                cut = bisect.bisect_left(batch, low)
                if cut:
                    await channel.basic_ack(batch[cut - 1], multiple=True, wait=False)
                    self.frames += 1
                for tag in batch[cut:]:
                    await channel.basic_ack(tag, wait=False)
                    self.frames += 1
                self.settled += len(batch)
        except (*AMQP_ERRORS, asyncio.CancelledError) as exc:
            # the channel died: RabbitMQ requeued everything unacknowledged on it
            log.debug("acks dropped with their channel: %s", type(exc).__name__)
            self.pending.clear()
        finally:
            self._task = None

    # -- single frames --------------------------------------------------------------------

    async def one(self, tag: int, *, requeue: bool | None) -> None:
        """Settle ``tag`` alone: ``requeue=None`` acks it, otherwise ``basic.nack`` with that
        ``requeue``. Only once its frame is with the writer may a multiple ack cover it.

        Raises:
            aiormq errors: the channel is gone (RabbitMQ requeued the message).
        """
        if requeue is None:
            await self.channel.basic_ack(tag, wait=False)
        else:
            await self.channel.basic_nack(tag, requeue=requeue, wait=False)
        self.mark(tag)
        self.frames += 1
        self.settled += 1
