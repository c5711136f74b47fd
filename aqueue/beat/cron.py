"""Cron expressions: croniter behind the one small interface the schedules use.

croniter (the ``cron`` extra) is imported on first use, so an app without cron schedules
does not need it, and one with them gets a one-line error naming the install command.
Expressions are walked over **naive wall-clock times**: pure calendar arithmetic, with
daylight saving time left to :mod:`.zones`, which maps each wall-clock time to an instant.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from aqueue.core.errors import ConfigurationError

__all__ = ["CronExpression"]

#: the nicknames croniter reads, and what they mean
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: days per month, February's longest
_MONTH_DAYS = dict(enumerate((31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31), start=1))
#: a schedule with no match in this many candidates is broken (a wall-clock hour has at
#: most 60 minute slots; a repeated hour is the most a search ever skips)
_SEARCH_LIMIT = 10_000


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigurationError(
            'cron schedules need croniter, which is not installed: pip install "aqueue[cron]"'
        ) from None
    return croniter


class CronExpression:
    """A five-field cron expression (minute hour day-of-month month day-of-week).

    Args:
        expr: the expression, or a nickname (``@daily``, ``@weekly``...).
        day_or: cron(5)'s rule when both day fields are restricted: a day matching either
            runs. ``False`` is Celery's ``crontab`` rule: it must match both.
        what: how errors name it.

    Raises:
        ConfigurationError: not five fields, a value out of range, or a day that never
            occurs (the 30th of February).
    """

    __slots__ = ("_walk", "day_or", "expr")

    def __init__(self, expr: str, *, day_or: bool = True, what: str = "cron") -> None:
        if not isinstance(expr, str):
            raise ConfigurationError(f"{what} must be a cron string, not {expr!r}")
        text = " ".join(expr.split())
        text = NICKNAMES.get(text.lower(), text)
        if len(text.split(" ")) != 5:
            raise ConfigurationError(
                f"{what} {expr!r} must have five fields (minute hour day-of-month month "
                "day-of-week), or be @hourly, @daily, @weekly, @monthly or @yearly; for "
                "periods under a minute use every="
            )
        croniter = _croniter()
        try:
            fields = croniter.expand(text)[0]
            # parsing is most of croniter's cost: one parsed walker, moved to each start
            self._walk = croniter(text, datetime(2000, 1, 1), day_or=day_or)
        except (ValueError, TypeError, KeyError) as exc:  # CroniterBadCronError is a ValueError
            # (older croniter versions put a whole traceback in the message: keep its end)
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ConfigurationError(
                f"{what} {expr!r} is not a valid cron expression: {reason}"
            ) from None
        if not day_or or fields[4] == ["*"]:
            days, months = fields[2], fields[3]
            days = range(1, 32) if days == ["*"] else [d for d in days if isinstance(d, int)]
            months = range(1, 13) if months == ["*"] else months
            if days and not any(day <= _MONTH_DAYS[int(m)] for m in months for day in days):
                raise ConfigurationError(
                    f"{what} {expr!r}: its day of the month never occurs in its months"
                )
        self.expr = text
        self.day_or = day_or

    def __repr__(self) -> str:
        return f"CronExpression({self.expr!r}, day_or={self.day_or})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CronExpression):
            return NotImplemented
        return (self.expr, self.day_or) == (other.expr, other.day_or)

    def __hash__(self) -> int:
        return hash((self.expr, self.day_or))

    def after(self, start: datetime) -> Iterator[datetime]:
        """The matching wall-clock times strictly after ``start`` (naive), in order.

        One walk at a time per expression (the walker is shared): consume or drop the
        iterator before starting another, as the schedules do.
        """
        walk = self._walk
        walk.set_current(start, force=True)
        for _ in range(_SEARCH_LIMIT):
            yield walk.get_next(datetime)
        raise ConfigurationError(f"cron {self.expr!r}: no time matches it")

    def before(self, start: datetime) -> Iterator[datetime]:
        """The matching wall-clock times strictly before ``start`` (naive), latest first
        (one walk at a time, as :meth:`after`)."""
        walk = self._walk
        walk.set_current(start, force=True)
        for _ in range(_SEARCH_LIMIT):
            yield walk.get_prev(datetime)
        raise ConfigurationError(f"cron {self.expr!r}: no time matches it")
