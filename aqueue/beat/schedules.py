"""Schedules: when an entry's slots fall, as instants every scheduler computes alike.

Three kinds, behind one small interface (:class:`Schedule`):

* :class:`crontab` — Celery's: ``crontab(minute="*/10")``, ``crontab(hour=7, minute=30,
  day_of_week="mon")``. When both ``day_of_week`` and ``day_of_month`` are restricted a
  day must match **both** (Celery's rule: ``day_of_week="mon", day_of_month="1-7"`` is the
  first Monday of the month);
* :class:`Cron` — a cron(5) string, ``"*/10 * * * *"`` or ``"0 7 * * mon"``; both day
  fields restricted means **either** (cron's own rule);
* :class:`Every` — an interval (``timedelta(minutes=5)`` or seconds). Its slots are aligned
  to the epoch (or to the entry's ``start``), never to when a scheduler happened to start,
  so that any number of schedulers agree on them.

Cron schedules read the wall clock of a time zone (the entry's ``tz``, else the
``timezone`` setting, else UTC) with the daylight-saving rules of :mod:`.zones`. A slot is
an instant: whole microseconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta, tzinfo
from typing import Any, Protocol, runtime_checkable

import msgspec

from aqueue.core.errors import ConfigurationError

from .cron import CronExpression
from .zones import MICROS, wall_time, wall_to_instant, zone, zone_name

__all__ = ["Cron", "Every", "Schedule", "ScheduleSpec", "crontab", "from_spec", "to_schedule"]

#: the shortest interval: the scheduler's resolution
MIN_INTERVAL = 1.0


class ScheduleSpec(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """A schedule as stored: one of ``cron`` (with ``day_or`` and ``tz``) or ``every``."""

    cron: str | None = None
    #: cron(5)'s rule (either day field) when True, Celery crontab's (both) when False
    day_or: bool = True
    tz: str = "UTC"
    #: seconds between slots
    every: float | None = None
    #: an instant the interval's slots are aligned to (microseconds since the epoch)
    anchor: int = 0


@runtime_checkable
class Schedule(Protocol):
    """When an entry fires: instants (microseconds since the epoch)."""

    def next_after(self, moment: int) -> int:
        """The first slot strictly after ``moment``."""

    def last_until(self, moment: int) -> int:
        """The last slot at or before ``moment``."""

    def zoned(self, tz: tzinfo) -> Schedule:
        """This schedule in ``tz`` unless it names a zone itself (intervals ignore zones)."""

    def anchored(self, anchor: int) -> Schedule:
        """This schedule with interval slots aligned to ``anchor`` (cron ignores it)."""

    def spec(self) -> ScheduleSpec:
        """The stored form."""


class Cron:
    """A cron(5) expression read on the wall clock of ``tz``.

    Args:
        expr: five fields (minute hour day-of-month month day-of-week), e.g.
            ``"*/10 * * * *"``, ``"0 7 * * mon"``, or ``@hourly`` / ``@daily`` / ``@weekly``
            / ``@monthly`` / ``@yearly``.
        tz: an IANA zone name (``"Europe/Berlin"``); ``None``: the entry's or app's zone.
    """

    __slots__ = ("_expression", "_tz", "_zone_given")

    def __init__(self, expr: str, tz: str | None = None, *, day_or: bool = True) -> None:
        self._expression = CronExpression(expr, day_or=day_or)
        self._zone_given = tz is not None
        self._tz = zone(tz, "tz")

    @property
    def expr(self) -> str:
        """The expression (nicknames spelled out)."""
        return self._expression.expr

    @property
    def tz(self) -> tzinfo:
        """The zone whose wall clock it reads."""
        return self._tz

    def __repr__(self) -> str:
        return f"<Cron {self.expr!r} {zone_name(self._tz)}>"

    def __str__(self) -> str:
        kind = "cron" if self._expression.day_or else "crontab"
        return f"{kind} {self.expr} {zone_name(self._tz)}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cron):
            return NotImplemented
        return self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(self.spec())

    def next_after(self, moment: int) -> int:
        naive, _ = wall_time(moment, self._tz)
        for candidate in self._expression.after(naive):
            slot = wall_to_instant(candidate, self._tz)
            if slot > moment:
                return slot
            # a wall-clock time of a repeated hour whose first occurrence is past, or a
            # time in a gap that maps to the instant already passed: keep walking
        raise AssertionError("unreachable: after() ends by raising")  # pragma: no cover

    def last_until(self, moment: int) -> int:
        naive, skip = wall_time(moment, self._tz)
        # strictly before naive + 1 µs: a slot exactly at ``moment`` counts; in the second
        # pass of a repeated hour, the first pass's later wall-clock times are before it too
        start = naive + skip + timedelta(microseconds=1)
        for candidate in self._expression.before(start):
            slot = wall_to_instant(candidate, self._tz)
            if slot <= moment:
                return slot
        raise AssertionError("unreachable: before() ends by raising")  # pragma: no cover

    def zoned(self, tz: tzinfo) -> Cron:
        if self._zone_given or tz is self._tz:
            return self
        other = object.__new__(type(self))
        other._expression, other._zone_given, other._tz = self._expression, False, tz
        return other

    def anchored(self, anchor: int) -> Cron:
        return self

    def spec(self) -> ScheduleSpec:
        return ScheduleSpec(cron=self.expr, day_or=self._expression.day_or, tz=zone_name(self._tz))


Cronspec = int | str | Iterable[int]


def _field(value: Cronspec | None, name: str) -> str:
    """One of crontab()'s arguments as a cron field."""
    if value is None:
        return "*"
    if isinstance(value, bool):
        raise ConfigurationError(f"crontab {name} must be an int, a string or ints, not {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        text = value.replace(" ", "")
        if not text:
            raise ConfigurationError(f"crontab {name} is empty")
        return text
    try:
        items = sorted(set(value))
    except TypeError:
        raise ConfigurationError(
            f"crontab {name} must be an int, a string or ints, not {value!r}"
        ) from None
    if not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ConfigurationError(f"crontab {name} must be an int, a string or ints, not {value!r}")
    return ",".join(map(str, items))


class crontab(Cron):  # Celery's name, lowercase as Celery users write it
    """Celery's crontab: ``crontab(minute="*/10")``, ``crontab(hour=7, minute=30,
    day_of_week="mon-fri")``.

    Each argument is an int, a string pattern (``"*/15"``, ``"1,13,30-45"``, ``"mon-fri"``)
    or an iterable of ints; left out means every value. ``day_of_week`` counts from
    Sunday = 0. A day must match both ``day_of_week`` and ``day_of_month`` when both are
    given (Celery's rule, where cron(5) takes either).

    Args:
        tz: an IANA zone name; ``None``: the entry's ``tz``, the ``timezone`` setting, UTC.

    Raises:
        ConfigurationError: a value out of range, or a day that never occurs.
    """

    __slots__ = ()

    def __init__(
        self,
        minute: Cronspec = "*",
        hour: Cronspec = "*",
        day_of_week: Cronspec = "*",
        day_of_month: Cronspec = "*",
        month_of_year: Cronspec = "*",
        *,
        tz: str | None = None,
    ) -> None:
        fields = [
            _field(minute, "minute"),
            _field(hour, "hour"),
            _field(day_of_month, "day_of_month"),
            _field(month_of_year, "month_of_year"),
            _field(day_of_week, "day_of_week"),
        ]
        try:
            super().__init__(" ".join(fields), tz, day_or=False)
        except ConfigurationError as exc:
            args = (
                f"minute={minute!r}, hour={hour!r}, day_of_week={day_of_week!r}, "
                f"day_of_month={day_of_month!r}, month_of_year={month_of_year!r}"
            )
            raise ConfigurationError(f"crontab({args}): {exc}") from None

    def __repr__(self) -> str:
        m, h, dom, moy, dow = self.expr.split(" ")
        return f"<crontab: {m} {h} {dom} {moy} {dow} (m/h/dM/MY/d) {zone_name(self.tz)}>"


class Every:
    """Every ``period`` (a timedelta or seconds, at least one second), aligned to an anchor.

    The slots are ``anchor + k * period``: the epoch by default (``every=60`` fires at each
    whole minute, ``every=timedelta(hours=6)`` at 00:00, 06:00... UTC), the entry's ``start``
    when it has one.
    """

    __slots__ = ("anchor", "period")

    def __init__(self, period: timedelta | float, anchor: int = 0) -> None:
        seconds = period.total_seconds() if isinstance(period, timedelta) else period
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ConfigurationError(
                f"every must be a timedelta or a number of seconds, not {period!r}"
            )
        if not seconds >= MIN_INTERVAL or seconds == float("inf"):
            raise ConfigurationError(
                f"every must be at least {MIN_INTERVAL:g} second (the scheduler's resolution), "
                f"and finite; got {period!r}"
            )
        #: microseconds between slots
        self.period = round(seconds * MICROS)
        #: the instant slots are aligned to
        self.anchor = anchor

    def __repr__(self) -> str:
        return f"<Every {self.period / MICROS:g}s>"

    def __str__(self) -> str:
        return f"every {timedelta(microseconds=self.period)}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Every):
            return NotImplemented
        return (self.period, self.anchor) == (other.period, other.anchor)

    def __hash__(self) -> int:
        return hash((self.period, self.anchor))

    def next_after(self, moment: int) -> int:
        return self.anchor + ((moment - self.anchor) // self.period + 1) * self.period

    def last_until(self, moment: int) -> int:
        return self.anchor + ((moment - self.anchor) // self.period) * self.period

    def zoned(self, tz: tzinfo) -> Every:
        return self

    def anchored(self, anchor: int) -> Every:
        return self if anchor == self.anchor else Every(self.period / MICROS, anchor)

    def spec(self) -> ScheduleSpec:
        return ScheduleSpec(every=self.period / MICROS, anchor=self.anchor)


def to_schedule(value: Any, what: str = "schedule") -> Schedule:
    """A schedule from what ``beat_schedule`` and ``@app.periodic`` accept: a
    :class:`crontab` / :class:`Cron` / :class:`Every`, a cron string, a timedelta, or a
    number of seconds (Celery's ``schedule`` values).

    Raises:
        ConfigurationError: anything else, naming ``what``.
    """
    if isinstance(value, Cron | Every):
        return value
    if isinstance(value, str):
        return Cron(value)
    if isinstance(value, timedelta) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    ):
        return Every(value)
    if type(value).__name__ in ("crontab", "schedule", "solar"):  # Celery's own objects
        raise ConfigurationError(
            f"{what}: {value!r} is Celery's; use aqueue.beat.crontab (same arguments), a cron "
            "string, a timedelta or seconds (solar schedules are not supported)"
        )
    raise ConfigurationError(
        f"{what} must be a crontab(...), a cron string such as '*/10 * * * *', a timedelta or a "
        f"number of seconds, not {value!r}"
    )


def from_spec(spec: ScheduleSpec) -> Schedule:
    """The schedule a stored spec describes."""
    if spec.cron is not None:
        return Cron(spec.cron, spec.tz, day_or=spec.day_or)
    if spec.every is not None:
        return Every(spec.every, spec.anchor)
    raise ConfigurationError("stored schedule has neither cron nor every")
