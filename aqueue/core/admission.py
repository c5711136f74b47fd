"""Admission control: per-task rate limits and concurrency limits.

A task over its limit is **not run and not retried in a loop**: its message goes back to the
broker with a due time (the broker holds it, no worker memory), as a fresh delivery that
does not count towards ``max_deliveries``.

Rate limits (``rate_limit="10/s"``, ``"100/m"``, ``"1000/h"``) use GCRA with reservations:
each message reserves the next free slot and is delayed until it (the slot is recorded in
the message, so it is not reserved twice). Where the broker implements
:class:`~aqueue.core.protocols.SharedThrottle` (Redis), slots and limits hold across all
workers; otherwise (memory, SQLite) they hold per worker process.

Concurrency limits (``concurrency_limit=N``) cap running executions of a task; slots are
leases, renewed by the worker's heartbeat, so a dead worker's slots free themselves.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import ConfigurationError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smh])\s*$")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: header carrying the reserved rate slot in a delayed message: ``"<unix seconds> <rate>"``
#: (the rate it was reserved under; a message from before had only the seconds)
RATE_SLOT_HEADER = "x-aqueue-rate-slot"


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` executions per ``period`` seconds."""

    limit: float
    period: float

    @property
    def interval(self) -> float:
        return self.period / self.limit


def parse_rate(text: str) -> Rate:
    """Parse Celery's rate strings: ``"10/s"``, ``"100/m"``, ``"1000/h"``, ``"5/10s"``."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"bad rate_limit {text!r}: use N/s, N/m or N/h (e.g. '10/s', '100/m')"
        )
    count = float(match.group(1))
    multiple = float(match.group(2)) if match.group(2) else 1.0
    return Rate(count, multiple * _PERIODS[match.group(3)])


def rate_setting(value: str | float | None) -> str | None:
    """A rate as ``control rate_limit`` takes it (Celery's): ``"10/m"``, a bare number of
    tasks per second, or ``None`` / ``""`` / ``0`` for none; checked, as a task keeps it.

    Raises:
        ConfigurationError: not a rate.
    """
    if value in (None, "", "0", 0):
        return None
    text = str(value)
    rate = text if "/" in text else f"{text}/s"
    parse_rate(rate)
    return rate


def gcra_reserve(tat: float, now: float, rate: Rate) -> tuple[float, float]:
    """One GCRA reservation: returns ``(slot, new_tat)``.

    Allows a burst of ``limit`` and then one every ``interval``; the Redis script implements
    the same arithmetic.
    """
    tat = max(tat, now)
    tolerance = rate.period - rate.interval
    slot = max(now, tat - tolerance)
    return slot, tat + rate.interval


class LocalThrottle:
    """Per-process rate and concurrency limits (memory and SQLite brokers).

    Args:
        clock: returns unix seconds; tests inject a fake one to cover hours in no time.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._slots: dict[str, dict[str, float]] = {}

    async def reserve_rate(self, key: str, limit: float, period: float) -> float:
        now = self._clock()
        with self._lock:
            slot, self._tat[key] = gcra_reserve(self._tat.get(key, 0.0), now, Rate(limit, period))
        return slot

    async def reset_rate(self, key: str) -> None:
        with self._lock:
            self._tat.pop(key, None)

    async def acquire_slot(self, key: str, holder: str, limit: int, lease_seconds: float) -> bool:
        now = self._clock()
        with self._lock:
            holders = self._slots.setdefault(key, {})
            for h, until in list(holders.items()):
                if until <= now:
                    del holders[h]
            if holder in holders or len(holders) < limit:
                holders[holder] = now + lease_seconds
                return True
            return False

    async def release_slot(self, key: str, holder: str) -> None:
        with self._lock:
            self._slots.get(key, {}).pop(holder, None)

    def renew_slots(self, slots: Sequence[tuple[str, str]], lease_seconds: float) -> None:
        until = self._clock() + lease_seconds
        with self._lock:
            for key, holder in slots:
                holders = self._slots.get(key)
                if holders is not None and holder in holders:
                    holders[holder] = until
