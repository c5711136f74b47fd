"""Settings, queue names, queue arguments, delay levels and de-duplication of the AMQP broker.

Everything here is plain data and small helpers; the I/O lives in
:mod:`aqueue.brokers.rabbitmq`. docs/brokers/rabbitmq.md explains the topology in words.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aqueue.core.errors import BrokerError, ConfigurationError
from aqueue.core.urls import redact

log = logging.getLogger("aqueue.broker.rabbitmq")

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
CONTENT_TYPE = "application/x-aqueue"

#: delay levels are 2**k milliseconds for k in this range: 16 ms ... 2**31 ms (~24.8 days)
MIN_LEVEL_EXP = 4
MAX_LEVEL_EXP = 31
LEVELS_MS: tuple[int, ...] = tuple(2**k for k in range(MIN_LEVEL_EXP, MAX_LEVEL_EXP + 1))

# query parameters aio-pika / aiormq understand and that may stay in the URL
_CLIENT_PARAMS = frozenset(
    {"cafile", "capath", "cadata", "keyfile", "certfile", "no_verify_ssl", "name", "auth"}
)
_RESERVED_SUFFIX = re.compile(r"\.(dlq|delay\.\d+)$")

QueueType = Literal["quorum", "classic"]


@dataclass(frozen=True, slots=True)
class RabbitSettings:
    """Options of one :class:`~aqueue.brokers.rabbitmq.RabbitMQBroker`.

    Attributes:
        client_url: the URL handed to aio-pika (carries the password: never log it).
        redacted: the URL with the password replaced, for logs and reprs.
        prefix: first component of every queue name.
        queue_type: ``"quorum"`` (default) or ``"classic"`` work and delay queues.
        delivery_limit: quorum ``x-delivery-limit``; 0 sets none.
        max_priority: classic ``x-max-priority``.
        prefetch: consumer prefetch; ``None`` takes the first claim's ``limit``.
        heartbeat: AMQP heartbeat, seconds.
        connect_timeout: seconds a connection attempt may take.
        operation_timeout: seconds any other broker call may take.
        consumer_timeout: ``x-consumer-timeout`` queue argument in ms (RabbitMQ >= 3.12).
        dedupe_url: a Redis URL for cross-process de-duplication by id, or ``None``.
        dedupe_ttl: seconds a published id is refused again; 0 disables de-duplication.
        dead_letter_scan: most dead letters read per queue by ``dead_letters()``.
        watchdog_interval: seconds between checks that an idle consumer still receives.
        idle_timeout: seconds without a claim after which buffered messages are handed
            back and the consumers paused.
    """

    client_url: str
    redacted: str
    prefix: str = "aqueue"
    queue_type: QueueType = "quorum"
    delivery_limit: int = 20
    max_priority: int = 9
    prefetch: int | None = None
    heartbeat: int = 30
    connect_timeout: float = 10.0
    operation_timeout: float = 10.0
    consumer_timeout: int | None = None
    dedupe_url: str | None = None
    dedupe_ttl: float = 86400.0
    dead_letter_scan: int = 1000
    watchdog_interval: float = 1.5
    idle_timeout: float = 5.0


_CONVERTERS: dict[str, Any] = {
    "prefix": str,
    "queue_type": str,
    "delivery_limit": int,
    "max_priority": int,
    "prefetch": int,
    "heartbeat": int,
    "connect_timeout": float,
    "operation_timeout": float,
    "consumer_timeout": int,
    "dedupe_url": str,
    "dedupe_ttl": float,
    "dead_letter_scan": int,
    "watchdog_interval": float,
    "idle_timeout": float,
}


def parse_settings(url: str, options: Mapping[str, Any]) -> RabbitSettings:
    """Options from ``url``'s query and ``options`` (which win); a clean URL for aio-pika.

    Raises:
        ConfigurationError: an unknown option, a value of the wrong type or out of range.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"not an amqp:// or amqps:// URL: {redact(url)!r}")
    values: dict[str, Any] = {}
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _CONVERTERS:
            values[key] = value
        elif key in _CLIENT_PARAMS:
            kept.append((key, value))
        else:
            log.debug("ignoring unknown query parameter %r of the amqp URL", key)
    unknown = sorted(set(options) - set(_CONVERTERS))
    if unknown:
        raise ConfigurationError(
            f"unknown rabbitmq broker option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_CONVERTERS))}"
        )
    values.update({k: v for k, v in options.items() if v is not None})
    typed: dict[str, Any] = {}
    for key, raw in values.items():
        try:
            typed[key] = _CONVERTERS[key](raw)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"rabbitmq broker option {key}={raw!r} is not a valid {_CONVERTERS[key].__name__}"
            ) from None
    if typed.get("queue_type", "quorum") not in ("quorum", "classic"):
        raise ConfigurationError("rabbitmq broker option queue_type must be quorum or classic")
    if not 1 <= typed.get("max_priority", 9) <= 255:
        raise ConfigurationError("rabbitmq broker option max_priority must be 1..255")
    if typed.get("prefetch") is not None and not 1 <= typed["prefetch"] <= 65535:
        raise ConfigurationError("rabbitmq broker option prefetch must be 1..65535")
    if typed.get("delivery_limit", 0) < 0:
        raise ConfigurationError("rabbitmq broker option delivery_limit must be >= 0")
    prefix = typed.get("prefix", "aqueue")
    if not prefix or prefix.startswith("amq."):
        raise ConfigurationError("rabbitmq broker option prefix must be non-empty, not amq.*")
    kept.append(("heartbeat", str(typed.get("heartbeat", 30))))
    client_url = urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment)
    )
    return RabbitSettings(client_url=client_url, redacted=redact(url), **typed)


class Topology:
    """Queue names and arguments under one prefix.

    Per aqueue queue ``q`` (all through the default exchange, no custom exchanges):

    * ``<prefix>.<q>``: the work queue; quorum by default, with a delivery limit and
      dead-lettering (at-least-once) into the dead-letter queue;
    * ``<prefix>.<q>.dlq``: dead letters, a durable classic queue (no delivery limit, so
      reading it with get + requeue can never drop anything on any RabbitMQ version);
    * ``<prefix>.<q>.delay.<ms>``: one queue per delay level used, message TTL ``<ms>``,
      dead-lettering into the work queue when a message's TTL runs out.
    """

    def __init__(self, settings: RabbitSettings) -> None:
        self.settings = settings
        self.prefix = settings.prefix

    def check(self, queue: str) -> None:
        """Refuse queue names that collide with the derived ones."""
        if not queue or _RESERVED_SUFFIX.search(queue) or len(self.work(queue)) > 200:
            raise ConfigurationError(
                f"invalid queue name {queue!r}: it must be non-empty, at most "
                f"{200 - len(self.prefix) - 1} characters and not end in .dlq or .delay.<n>"
            )

    def work(self, queue: str) -> str:
        return f"{self.prefix}.{queue}"

    def dlq(self, queue: str) -> str:
        return f"{self.prefix}.{queue}.dlq"

    def delay(self, queue: str, level_ms: int) -> str:
        return f"{self.prefix}.{queue}.delay.{level_ms}"

    def all_names(self, queue: str) -> list[str]:
        """Every queue name that may exist for ``queue``."""
        return [
            self.work(queue),
            self.dlq(queue),
            *(self.delay(queue, lvl) for lvl in LEVELS_MS),
        ]

    def _dead_letter_args(self, target: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": target,
        }
        if self.settings.queue_type == "quorum":
            # at-least-once dead-lettering needs reject-publish; no max length is set, so
            # publishes are never rejected for overflow
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        return args

    def work_args(self, queue: str) -> dict[str, Any]:
        s = self.settings
        args: dict[str, Any] = {"x-queue-type": s.queue_type}
        args.update(self._dead_letter_args(self.dlq(queue)))
        if s.queue_type == "quorum":
            if s.delivery_limit:
                args["x-delivery-limit"] = s.delivery_limit
        else:
            args["x-max-priority"] = s.max_priority
        if s.consumer_timeout is not None:
            args["x-consumer-timeout"] = s.consumer_timeout
        return args

    def dlq_args(self) -> dict[str, Any]:
        return {"x-queue-type": "classic"}

    def delay_args(self, queue: str, level_ms: int) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": self.settings.queue_type}
        args["x-message-ttl"] = level_ms
        args.update(self._dead_letter_args(self.work(queue)))
        if self.settings.queue_type == "classic":
            args["x-max-priority"] = self.settings.max_priority
        return args

    def amqp_priority(self, priority: int) -> int:
        """The AMQP priority property (0..255; negative priorities become 0)."""
        return max(0, min(int(priority), self.settings.max_priority, 255))


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


# -- de-duplication by id -------------------------------------------------------------


class Dedupe:
    """Remembers published ids for a window; ``add`` says whether an id is new."""

    async def add(self, ids: Sequence[str], ttls: Sequence[float]) -> list[bool]:
        """Record ``ids`` (each for its TTL, seconds); ``True`` where the id was new."""
        raise NotImplementedError

    async def discard(self, ids: Sequence[str]) -> None:
        """Forget ``ids`` (their publish failed or its fate is unknown)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


class NoDedupe(Dedupe):
    """``dedupe_ttl=0``: every publish is a new message."""

    async def add(self, ids: Sequence[str], ttls: Sequence[float]) -> list[bool]:
        return [True] * len(ids)

    async def discard(self, ids: Sequence[str]) -> None:
        return None


class LocalDedupe(Dedupe):
    """Ids published by this process, bounded in number and time (the default).

    Covers retries of ``delay()`` and deterministic ids from this process only; another
    process publishing the same id is not seen (use ``dedupe_url`` for that).
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries

    async def add(self, ids: Sequence[str], ttls: Sequence[float]) -> list[bool]:
        now = time.monotonic()
        seen = self._seen
        while seen:  # drop expired entries from the oldest end
            oldest, expiry = next(iter(seen.items()))
            if expiry > now and len(seen) <= self._max:
                break
            del seen[oldest]
        out: list[bool] = []
        for id_, ttl in zip(ids, ttls, strict=True):
            until = seen.get(id_)
            if until is not None and until > now:
                out.append(False)
                continue
            seen[id_] = now + ttl
            seen.move_to_end(id_)
            out.append(True)
        return out

    async def discard(self, ids: Sequence[str]) -> None:
        for id_ in ids:
            self._seen.pop(id_, None)


class RedisDedupe(Dedupe):
    """``SET key 1 NX PX ttl`` in Redis: de-duplication across every producer."""

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ConfigurationError(
                'dedupe_url needs the redis extra: pip install "aqueue[redis]"'
            ) from exc
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._prefix = prefix
        self._timeout = timeout
        self._redacted = redact(url)

    def _key(self, id_: str) -> str:
        return f"{self._prefix}:amqp-dedupe:{id_}"

    async def add(self, ids: Sequence[str], ttls: Sequence[float]) -> list[bool]:
        try:
            async with asyncio.timeout(self._timeout):
                pipe = self._client.pipeline(transaction=False)
                for id_, ttl in zip(ids, ttls, strict=True):
                    pipe.set(self._key(id_), b"1", nx=True, px=max(1, int(ttl * 1000)))
                replies = await pipe.execute()
        except Exception as exc:
            raise BrokerError(
                f"de-duplication store {self._redacted} failed ({type(exc).__name__}: {exc}); "
                "nothing was published"
            ) from None
        return [bool(r) for r in replies]

    async def discard(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.delete(*(self._key(i) for i in ids))
        except Exception as exc:
            log.warning(
                "could not forget %d id(s) in the de-duplication store (%s); a re-send of "
                "them is refused until their TTL ends",
                len(ids),
                type(exc).__name__,
            )

    async def close(self) -> None:
        await self._client.aclose()


def make_dedupe(settings: RabbitSettings) -> Dedupe:
    """The de-duplication store the settings ask for."""
    if settings.dedupe_ttl <= 0:
        return NoDedupe()
    if settings.dedupe_url:
        return RedisDedupe(settings.dedupe_url, settings.prefix, settings.operation_timeout)
    return LocalDedupe()
