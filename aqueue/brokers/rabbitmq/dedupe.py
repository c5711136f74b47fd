"""De-duplication of published ids: RabbitMQ itself has none.

:func:`make_dedupe` picks the store the options ask for: none (``dedupe_ttl=0``), this
process's memory (the default), or Redis (``dedupe_url``), shared by every producer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from aqueue.core.errors import BrokerError, ConfigurationError

from .options import BrokerOptions

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("aqueue.broker.rabbitmq")


class Dedupe(Protocol):
    """Remembers published ids for a window; ``add`` says whether an id is new."""

    async def add(self, ids: Sequence[str], ttls: Sequence[float]) -> list[bool]:
        """Record ``ids`` (each for its TTL, seconds); ``True`` where the id was new."""

    async def discard(self, ids: Sequence[str]) -> None:
        """Forget ``ids`` (their publish failed or its fate is unknown)."""

    async def close(self) -> None:
        """Release connections."""


class NoDedupe:
    """``dedupe_ttl=0``: every publish is a new message."""

    async def add(self, ids: Sequence[str], ttls: Sequence[float]) -> list[bool]:
        return [True] * len(ids)

    async def discard(self, ids: Sequence[str]) -> None:
        return None

    async def close(self) -> None:
        return None


class LocalDedupe:
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

    async def close(self) -> None:
        return None


class RedisDedupe:
    """``SET key 1 NX PX ttl`` in Redis: de-duplication across every producer.

    The Redis URL is parsed by the Redis settings (which keep its password out of every
    message) and the client is theirs.
    """

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        try:
            from aqueue.transports.redis.settings import parse_settings
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ConfigurationError(
                'dedupe_url needs the redis extra: pip install "aqueue[redis]"'
            ) from exc
        self._settings = parse_settings(
            url,
            {
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "operation_timeout": timeout,
            },
            what="rabbitmq broker dedupe_url",
        )
        self._client: aioredis.Redis = self._settings.async_client()
        self._prefix = prefix
        self._timeout = timeout

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
                f"de-duplication store {self._settings.redacted} failed "
                f"({self._settings.describe(exc)}); nothing was published"
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


def make_dedupe(prefix: str, options: BrokerOptions, timeout: float) -> Dedupe:
    """The de-duplication store ``options`` ask for; ``timeout`` bounds each call."""
    if options.dedupe_ttl <= 0:
        return NoDedupe()
    if options.dedupe_url:
        return RedisDedupe(options.dedupe_url, prefix, timeout)
    return LocalDedupe()
