"""Periodic tasks: a scheduler that fires each slot exactly once, however many run.

>>> from datetime import timedelta
>>> from aqueue import App
>>> from aqueue.beat import crontab
>>> app = App("proj", broker="memory://doc")
>>> app.conf.beat_schedule = {
...     "auto-sms-rating": {"task": "auto_sms_rating", "schedule": crontab(minute="*/10")},
... }

Run a scheduler with ``aqueue beat proj``, inside workers with ``aqueue worker --beat``,
or embedded with ``async with app.beat():``; any number of them may run at once. Entries
change at run time through :class:`BeatSchedule` (``aqueue beat add|remove|pause|...``).
See docs/periodic-tasks.md.

Modules: :mod:`.schedules` (crontab, cron strings, intervals) over :mod:`.cron` (croniter)
and :mod:`.zones` (time zones, daylight saving); :mod:`.entries` (an entry's keys, checked;
slot task ids); :mod:`.plan` (which slots are due: the misfire policy); :mod:`.service` (the
scheduler, its lease); :mod:`.admin` (entries at run time); :mod:`.store` and its Redis,
SQLite and memory stores; :mod:`.clock` (the system's, or a virtual one for tests);
:mod:`.cli` (the ``aqueue beat`` commands).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aqueue.core.plugins import register_beat

from .admin import BeatSchedule, EntryInfo, UnknownEntry
from .clock import Clock, SystemClock, VirtualClock
from .schedules import Cron, Every, Schedule, crontab
from .service import Beat
from .store import BeatStore, store_for

if TYPE_CHECKING:
    from aqueue.core.app import App

__all__ = [
    "Beat",
    "BeatSchedule",
    "BeatStore",
    "Clock",
    "Cron",
    "EntryInfo",
    "Every",
    "Schedule",
    "SystemClock",
    "UnknownEntry",
    "VirtualClock",
    "crontab",
    "store_for",
]


def _check(app: App, name: str, raw: Any) -> None:
    from .entries import parse_entry

    conf = app.conf
    parse_entry(
        name,
        raw,
        timezone=conf.timezone,
        cron_deadline=conf.beat_cron_starting_deadline,
        tasks=app.tasks,
    )


register_beat(Beat, _check)
