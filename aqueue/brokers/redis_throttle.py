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
from typing import Any

import redis.asyncio as aioredis

from aqueue.core.errors import BrokerError

from .redis_connection import (
    LazySyncClient,
    Script,
    ScriptCall,
    command,
    guarded,
    run_scripts,
    run_scripts_sync,
)
from .redis_settings import RedisSettings

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: rate key; ARGV: limit, period -> seconds until the reserved slot (string)
RESERVE_RATE = Script(
    "reserve_rate",
    _NOW
    + """
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval = period / limit
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local slot = math.max(now, tat - (period - interval))
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.17g', new_tat),
           'PX', math.ceil((new_tat - now + period) * 1000))
return string.format('%.17g', slot - now)
""",
)

# KEYS: slots key; ARGV: holder, limit, lease_seconds -> 1 if held, 0 if full
ACQUIRE_SLOT = Script(
    "acquire_slot",
    _NOW
    + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], string.format('%.17g', now + lease), ARGV[1])
local ttl = math.ceil(lease * 1000)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
""",
)

# KEYS: slots key; ARGV: lease_seconds, holders... -> number renewed
RENEW_SLOTS = Script(
    "renew_slots",
    _NOW
    + """
local lease = tonumber(ARGV[1])
local deadline = string.format('%.17g', now + lease)
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
end
local ttl = math.ceil(lease * 1000)
if n > 0 and redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return n
""",
)


class RedisThrottle:
    """GCRA rate reservations and leased concurrency slots on Redis."""

    def __init__(
        self,
        settings: RedisSettings,
        client: Callable[[], Awaitable[aioredis.Redis]],
        sync: LazySyncClient,
    ) -> None:
        self._settings = settings
        self._client = client
        self._sync = sync

    def _key(self, key: str, kind: str) -> str:
        return f"{self._settings.prefix}:{{throttle:{key}}}:{kind}"

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
