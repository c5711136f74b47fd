"""Time zones, and the daylight-saving rules of every schedule that reads a wall clock.

A cron schedule names wall-clock times ("07:00 on Mondays, Berlin time"). Twice a year a
zone with daylight saving time breaks the one-to-one link between wall-clock times and
instants, and aqueue settles both cases one way, for every schedule:

* **a skipped wall-clock time** (spring forward: 02:30 does not exist in Berlin on the last
  Sunday of March) fires at the next valid time: the instant the clocks jump (03:00 local).
  Several slots inside the gap fire once, together, at that instant;
* **a repeated wall-clock time** (fall back: 02:30 happens twice on the last Sunday of
  October) fires once, at its first occurrence.

Instants are whole microseconds since the Unix epoch (UTC), so slots compare, hash and
name task ids exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aqueue.core.errors import ConfigurationError

__all__ = ["MICROS", "from_instant", "instant", "to_instant", "wall_time", "zone"]

#: microseconds per second
MICROS = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def zone(name: str | None, what: str = "timezone") -> tzinfo:
    """The zone named ``name`` (an IANA name such as ``Europe/Berlin``); ``None`` is UTC.

    Raises:
        ConfigurationError: no such zone (the message names ``what``, the setting or option).
    """
    if name is None or name in ("UTC", "utc"):
        return UTC
    if not isinstance(name, str):
        raise ConfigurationError(
            f"{what} must be an IANA time zone name such as 'Europe/Berlin', not {name!r}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"{what}: unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin' "
            "or 'UTC' (on systems without a zone database: pip install tzdata)"
        ) from None


def zone_name(tz: tzinfo) -> str:
    """The name :func:`zone` reads back."""
    return "UTC" if tz is UTC else str(tz)


def to_instant(moment: datetime) -> int:
    """An aware datetime as microseconds since the epoch (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * MICROS + delta.microseconds


def instant(seconds: float) -> int:
    """Unix seconds (a clock's reading) as microseconds since the epoch."""
    return round(seconds * MICROS)


def from_instant(micros: int, tz: tzinfo = UTC) -> datetime:
    """Microseconds since the epoch as an aware datetime in ``tz``."""
    return (_EPOCH + timedelta(microseconds=micros)).astimezone(tz)


def wall_time(micros: int, tz: tzinfo) -> tuple[datetime, timedelta]:
    """The naive wall-clock time in ``tz`` at an instant, and how far a search for the slots
    after it must skip ahead to leave a repeated hour it is in the second pass of.

    In the second pass of a repeated hour (``fold=1``) the wall-clock times just after it
    were already seen in the first pass; they belong to instants before this one.
    """
    local = from_instant(micros, tz)
    naive = local.replace(tzinfo=None)
    if local.fold == 1:
        first = naive.replace(tzinfo=tz, fold=0).utcoffset()
        second = naive.replace(tzinfo=tz, fold=1).utcoffset()
        if first is not None and second is not None and first > second:
            return naive, first - second
    return naive, timedelta(0)


def wall_to_instant(naive: datetime, tz: tzinfo) -> int:
    """The instant a wall-clock time in ``tz`` fires at, by the rules of this module.

    An existing time maps to its first occurrence (``fold=0``: the repeated hour fires
    once). A time in a gap maps to the end of the gap: the instant the clocks jumped.
    """
    if tz is UTC:
        return to_instant(naive.replace(tzinfo=UTC))
    first = naive.replace(tzinfo=tz, fold=0)
    micros = to_instant(first)
    if from_instant(micros, tz).replace(tzinfo=None) == naive:
        return micros
    # In a gap: fold=0 reads it with the offset before the jump (a later instant), fold=1
    # with the offset after it (an earlier one). The jump lies between the two; find the
    # first second whose offset is the later one (zone transitions fall on whole seconds).
    after = naive.replace(tzinfo=tz, fold=1).utcoffset()
    low = to_instant(naive.replace(tzinfo=tz, fold=1)) // MICROS  # an instant before the jump
    high = micros // MICROS  # an instant after it
    while high - low > 1:
        mid = (low + high) // 2
        if from_instant(mid * MICROS, tz).utcoffset() == after:
            high = mid
        else:
            low = mid
    return high * MICROS
