"""The RabbitMQ broker's own options (queues, consumers, de-duplication), parsed with the
connection settings from one URL and keywords."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aqueue.core.errors import ConfigurationError
from aqueue.transports.amqp.settings import Converter, RabbitSettings, parse_settings

QueueType = Literal["quorum", "classic"]

_OWN: Mapping[str, Converter] = {
    "queue_type": str,
    "delivery_limit": int,
    "max_priority": int,
    "prefetch": int,
    "consumer_timeout": int,
    "dedupe_url": str,
    "dedupe_ttl": float,
    "dead_letter_scan": int,
    "watchdog_interval": float,
    "idle_timeout": float,
    "queue_expires": float,
}


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Options of one :class:`~aqueue.brokers.rabbitmq.RabbitMQBroker` beyond the connection
    (:class:`~aqueue.transports.amqp.settings.RabbitSettings`).

    Attributes:
        queue_type: ``"quorum"`` (default) or ``"classic"`` work and delay queues.
        delivery_limit: quorum ``x-delivery-limit``; 0 sets none.
        max_priority: classic ``x-max-priority``.
        prefetch: consumer prefetch; ``None`` takes the first claim's ``limit``.
        consumer_timeout: ``x-consumer-timeout`` queue argument in ms (RabbitMQ >= 3.12).
        dedupe_url: a Redis URL for cross-process de-duplication by id, or ``None``.
        dedupe_ttl: seconds a published id is refused again; 0 disables de-duplication.
        dead_letter_scan: most dead letters read per queue by ``dead_letters()``.
        watchdog_interval: seconds between checks that an idle consumer still receives.
        idle_timeout: seconds without a claim after which buffered messages are handed
            back and the consumers paused.
        queue_expires: seconds after which RabbitMQ deletes a queue nobody used (no
            consumer, no redeclaration: ``x-expires``), with its messages; ``None`` (the
            default) keeps queues. For throwaway setups and test suites; it must exceed the
            longest delay (countdown, eta, retry) a queue's messages wait.
    """

    queue_type: QueueType = "quorum"
    delivery_limit: int = 20
    max_priority: int = 9
    prefetch: int | None = None
    consumer_timeout: int | None = None
    dedupe_url: str | None = None
    dedupe_ttl: float = 86400.0
    dead_letter_scan: int = 1000
    watchdog_interval: float = 1.5
    idle_timeout: float = 5.0
    queue_expires: float | None = None


def parse_options(url: str, options: Mapping[str, Any]) -> tuple[RabbitSettings, BrokerOptions]:
    """The connection settings and the broker's options from ``url``'s query and ``options``
    (which win).

    Raises:
        ConfigurationError: an unknown option, a value of the wrong type or out of range.
    """
    settings, own = parse_settings(url, options, owner="rabbitmq broker", own=_OWN)
    if own.get("queue_type", "quorum") not in ("quorum", "classic"):
        raise ConfigurationError("rabbitmq broker option queue_type must be quorum or classic")
    if not 1 <= own.get("max_priority", 9) <= 255:
        raise ConfigurationError("rabbitmq broker option max_priority must be 1..255")
    if own.get("prefetch") is not None and not 1 <= own["prefetch"] <= 65535:
        raise ConfigurationError("rabbitmq broker option prefetch must be 1..65535")
    if own.get("delivery_limit", 0) < 0:
        raise ConfigurationError("rabbitmq broker option delivery_limit must be >= 0")
    if own.get("queue_expires") is not None and not 0 < own["queue_expires"] <= 2**31 / 1000:
        raise ConfigurationError("rabbitmq broker option queue_expires must be 0 < s <= 2147483")
    return settings, BrokerOptions(**own)
