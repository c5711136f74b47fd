"""Rate and concurrency limits shared by every worker of a Redis broker.

Implements :class:`aqueue.core.protocols.SharedThrottle` for :class:`RedisBroker`. Each
limit key gets its own hash tag: ``<prefix>:{throttle:<key>}:rate`` holds the GCRA
"theoretical arrival time" and ``<prefix>:{throttle:<key>}:slots`` is a sorted set of
holders scored by lease deadline. Both expire on their own once idle.

The arithmetic is :func:`aqueue.core.admission.gcra_reserve`'s, on the Redis server's clock;
a reserved slot is returned as the caller's ``time.time()`` plus the server-side delay, so
workers with skewed clocks still wait the right amount.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any

from aqueue.core.errors import BrokerError
from aqueue.transports.redis import redispy
from aqueue.transports.redis.clients import LazySyncClient
from aqueue.transports.redis.guard import guarded
from aqueue.transports.redis.keys import KeySpace
from aqueue.transports.redis.scripts import (
    HELPERS,
    Script,
    ScriptCall,
    command,
    run_scripts,
    run_scripts_sync,
)
from aqueue.transports.redis.settings import RedisSettings

_LUA = files(__package__) / "lua"
RESERVE_RATE = Script.load(_LUA / "reserve_rate.lua", uses=(HELPERS,))
ACQUIRE_SLOT = Script.load(_LUA / "acquire_slot.lua", uses=(HELPERS,))
RENEW_SLOTS = Script.load(_LUA / "renew_slots.lua", uses=(HELPERS,))


class RedisThrottle:
    """GCRA rate reservations and leased concurrency slots on Redis."""

    def __init__(
        self,
        settings: RedisSettings,
        client: Callable[[], Awaitable[redispy.AsyncClient]],
        sync: LazySyncClient,
    ) -> None:
        self._settings = settings
        self._client = client
        self._sync = sync
        self._keys = KeySpace(settings.prefix)

    def _key(self, key: str, kind: str) -> str:
        return self._keys.throttle(key) + kind

    async def _run(self, what: str, call: ScriptCall) -> Any:
        client = await self._client()
        [reply] = await guarded(
            self._settings, what, lambda: run_scripts(client, [call]), error=BrokerError
        )
        return reply

    async def reserve_rate(self, key: str, limit: float, period: float) -> float:
        """Reserve the next slot for ``key`` (GCRA, burst ``limit``); return its unix time."""
        delay = await self._run(
            "reserve_rate", (RESERVE_RATE, [self._key(key, "rate")], [repr(limit), repr(period)])
        )
        return time.time() + float(delay)

    async def reset_rate(self, key: str) -> None:
        """Forget the slots reserved for ``key`` (its rate changed)."""
        client = await self._client()
        rate = self._key(key, "rate")
        await guarded(
            self._settings, "reset_rate", lambda: command(client, "DEL", rate), error=BrokerError
        )

    async def acquire_slot(self, key: str, holder: str, limit: int, lease_seconds: float) -> bool:
        """Take one of ``limit`` leased slots of ``key`` for ``holder``; ``False`` if full."""
        args: list[str | bytes | int | float] = [holder, int(limit), repr(float(lease_seconds))]
        reply = await self._run("acquire_slot", (ACQUIRE_SLOT, [self._key(key, "slots")], args))
        return int(reply) == 1

    async def release_slot(self, key: str, holder: str) -> None:
        """Give a slot back."""
        client = await self._client()
        slots = self._key(key, "slots")
        await guarded(
            self._settings,
            "release_slot",
            lambda: command(client, "ZREM", slots, holder),
            error=BrokerError,
        )

    def renew_slots(self, slots: Sequence[tuple[str, str]], lease_seconds: float) -> None:
        """Extend slot leases of ``(key, holder)`` pairs in one round trip; thread-safe."""
        if not slots:
            return
        holders: dict[str, list[str]] = {}
        for key, holder in slots:
            holders.setdefault(key, []).append(holder)
        calls: list[ScriptCall] = [
            (RENEW_SLOTS, [self._key(key, "slots")], [repr(float(lease_seconds)), *names])
            for key, names in holders.items()
        ]
        try:
            run_scripts_sync(self._sync.get(), calls)
        except Exception as exc:
            raise BrokerError(
                f"renew_slots on {self._settings.redacted} failed: {self._settings.describe(exc)}"
            ) from None
