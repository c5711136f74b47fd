"""Queue names, queue arguments, message headers and delay levels of the RabbitMQ broker.

Plain data and small helpers; the I/O lives in :mod:`.channels`. docs/brokers/rabbitmq.md
explains the topology in words.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from aqueue.core.errors import ConfigurationError
from aqueue.core.routing import Queue, Router

from .options import BrokerOptions

#: header carrying a message's due time, integer unix milliseconds
ETA_HEADER = "x-aqueue-eta"
#: header carrying why a message was dead-lettered by aqueue
REASON_HEADER = "x-aqueue-reason"
#: header carrying when a message was dead-lettered, integer unix milliseconds
DEAD_AT_HEADER = "x-aqueue-dead-at"
#: header carrying the aqueue queue name of a dead letter
QUEUE_HEADER = "x-aqueue-queue"
#: header carrying a dead letter's original body size (its stored body is only the start)
SIZE_HEADER = "x-aqueue-body-size"
#: header of a copy re-published to hand a message back unexecuted: the deliveries it had
#: already used (a nack would have counted one more)
PRIOR_HEADER = "x-aqueue-prior-deliveries"

#: delay levels are 2**k milliseconds for k in this range: 16 ms ... 2**31 ms (~24.8 days)
MIN_LEVEL_EXP = 4
MAX_LEVEL_EXP = 31
LEVELS_MS: tuple[int, ...] = tuple(2**k for k in range(MIN_LEVEL_EXP, MAX_LEVEL_EXP + 1))

_RESERVED_SUFFIX = re.compile(r"\.(dlq|delay\.\d+)$")


class Topology:
    """Queue and exchange names and arguments under one prefix.

    Per aqueue queue ``q``:

    * ``<prefix>.<q>``: the work queue; quorum by default, with a delivery limit and
      dead-lettering (at-least-once) into the dead-letter queue; classic with
      ``x-max-priority`` when ``task_queues`` gives it a max priority. Reached through the
      default exchange by name, and bound to its exchange when ``task_queues`` gives it one;
    * ``<prefix>.<q>.<random>`` instead, for a broadcast queue: this process's own
      exclusive classic queue, bound to the fanout exchange, gone with the connection;
    * ``<prefix>.<q>.dlq``: dead letters, a durable classic queue (no delivery limit, so
      reading it with get + requeue can never drop anything on any RabbitMQ version);
    * ``<work queue>.delay.<ms>``: one queue per delay level used, message TTL ``<ms>``,
      dead-lettering into the work queue when a message's TTL runs out.

    Exchanges of ``task_queues`` are ``<prefix>.<name>``.
    """

    def __init__(self, prefix: str, options: BrokerOptions) -> None:
        self.prefix = prefix
        self.options = options
        #: the app's routing (``use_routing``); ``None``: every queue as the options say
        self.router: Router | None = None
        #: broadcast queue -> this process's own queue of it
        self.private: dict[str, str] = {}

    def spec(self, queue: str) -> Queue | None:
        """How the app's routing declares ``queue`` (``None``: no routing given)."""
        return self.router.spec(queue) if self.router is not None else None

    def is_private(self, queue: str) -> bool:
        """Whether ``queue`` is a broadcast queue, consumed here through a queue of its own."""
        router = self.router
        if router is None:
            return False
        spec = router.queues.get(queue)  # a broadcast queue is always a declared one
        return spec is not None and spec.broadcast

    def exchange(self, name: str) -> str:
        """The RabbitMQ name of the app's exchange ``name``."""
        return f"{self.prefix}.{name}"

    def check(self, queue: str) -> None:
        """Refuse queue names that collide with the derived ones."""
        if not queue or _RESERVED_SUFFIX.search(queue) or len(f"{self.prefix}.{queue}") > 200:
            raise ConfigurationError(
                f"invalid queue name {queue!r}: it must be non-empty, at most "
                f"{200 - len(self.prefix) - 1} characters and not end in .dlq or .delay.<n>"
            )

    def work(self, queue: str) -> str:
        private = self.private.get(queue)
        if private is not None:
            return private
        if self.is_private(queue):  # first use: this process's own queue, for its lifetime
            private = self.private[queue] = f"{self.prefix}.{queue}.{uuid.uuid4().hex[:12]}"
            return private
        return f"{self.prefix}.{queue}"

    def dlq(self, queue: str) -> str:
        return f"{self.prefix}.{queue}.dlq"

    def delay(self, queue: str, level_ms: int) -> str:
        return f"{self.work(queue)}.delay.{level_ms}"

    def queue_type(self, queue: str) -> str:
        """``quorum`` or ``classic``: the queue's own (``task_queues``), classic for a max
        priority or a broadcast queue, else the ``queue_type`` option."""
        spec = self.spec(queue)
        if spec is not None:
            if spec.queue_type is not None:
                return spec.queue_type
            if spec.max_priority is not None or spec.broadcast:
                return "classic"
        return self.options.queue_type

    def max_priority(self, queue: str) -> int:
        spec = self.spec(queue)
        if spec is not None and spec.max_priority is not None:
            return spec.max_priority
        return self.options.max_priority

    def all_names(self, queue: str) -> list[str]:
        """Every queue name that may exist for ``queue``."""
        return [
            self.work(queue),
            self.dlq(queue),
            *(self.delay(queue, lvl) for lvl in LEVELS_MS),
        ]

    def _dead_letter_args(self, target: str, queue_type: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": target,
        }
        if queue_type == "quorum":
            # at-least-once dead-lettering needs reject-publish; no max length is set, so
            # publishes are never rejected for overflow
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        return args

    def work_args(self, queue: str) -> dict[str, Any]:
        o = self.options
        kind = self.queue_type(queue)
        args: dict[str, Any] = {"x-queue-type": kind}
        args.update(self._dead_letter_args(self.dlq(queue), kind))
        if kind == "quorum":
            if o.delivery_limit:
                args["x-delivery-limit"] = o.delivery_limit
        else:
            args["x-max-priority"] = self.max_priority(queue)
        if o.consumer_timeout is not None:
            args["x-consumer-timeout"] = o.consumer_timeout
        return self._expiring(args)

    def dlq_args(self) -> dict[str, Any]:
        return self._expiring({"x-queue-type": "classic"})

    def delay_args(self, queue: str, level_ms: int) -> dict[str, Any]:
        kind = self.queue_type(queue)
        args: dict[str, Any] = {"x-queue-type": kind}
        args["x-message-ttl"] = level_ms
        args.update(self._dead_letter_args(self.work(queue), kind))
        if kind == "classic":
            args["x-max-priority"] = self.max_priority(queue)
        return self._expiring(args)

    def _expiring(self, args: dict[str, Any]) -> dict[str, Any]:
        """``args`` with ``x-expires`` when the ``queue_expires`` option is set."""
        if self.options.queue_expires is not None:
            args["x-expires"] = int(self.options.queue_expires * 1000)
        return args

    def amqp_priority(self, priority: int) -> int:
        """The AMQP priority property (0..255; negative priorities become 0; RabbitMQ caps
        it at each queue's ``x-max-priority``)."""
        return max(0, min(int(priority), 255))


def delay_level(remaining_ms: int) -> int:
    """The delay level for a message due in ``remaining_ms``: the largest level not past
    the due time, or the smallest level when less than that remains (never early).

    Each hop at least halves what remains, so a message due in ``d`` ms makes at most
    ``log2(d / 16) + 1`` hops (about 20 for two hours), plus one per 24.8 days beyond.
    """
    for level in reversed(LEVELS_MS):
        if level <= remaining_ms:
            return level
    return LEVELS_MS[0]


def eta_ms(eta: float | None) -> int | None:
    """An ETA as integer unix milliseconds (AMQP float headers lose precision)."""
    return None if eta is None else round(eta * 1000)
