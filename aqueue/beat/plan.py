"""Which slots of an entry to publish now: the misfire policy, as a pure function of time.

A slot is **on time** while it is at most ``misfire_grace`` seconds old: it is published,
whatever the policy (a leader that took over a few seconds late still sends every slot it
missed). Older slots are **late** (nobody was leading when they fell due) and the entry's
misfire policy decides:

* ``once`` (Celery's behaviour): the late slots together run once, now;
* ``skip``: they are dropped;
* ``catch_up``: the first ``catch_up`` of them run, the rest are dropped.

The choice of late slots depends only on what was recorded (the last slot dealt with) and
never on the moment of planning, so a leader that takes over from one that died half-way
picks the same slots, under the same task ids. (The scheduler records such a plan before
publishing it, see :mod:`.service`.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .entries import Entry
from .zones import MICROS

__all__ = ["Plan", "count_slots", "next_slot", "plan"]

#: on-time slots published in one round at most (an entry of one second with a grace of a
#: day would otherwise list 86 400); older ones are treated as late
MAX_ON_TIME = 1000
#: late slots counted at most (a skip of more is reported as "at least" this many)
MAX_COUNTED = 1000


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with an entry now."""

    #: slots to publish, oldest first
    fire: list[int]
    #: the last slot this plan deals with (the entry's ``last_slot`` once done); ``None``
    #: when nothing is due
    cover: int | None
    #: late slots the policy dropped (at least this many)
    skipped: int
    #: whether late slots were involved (the plan is recorded before it is published)
    late: bool
    #: the entry's next slot after ``cover`` (``None``: it has ended)
    next: int | None


def plan(entry: Entry, last: int | None, since: int, now: int) -> Plan:
    """The slots of ``entry`` due at ``now`` (all instants in microseconds).

    Args:
        last: the last slot dealt with, ``None`` before the first.
        since: when the entry was first stored: only slots after it are due.
        now: the clock's reading.
    """
    spec, schedule = entry.spec, entry.schedule
    after = since if last is None else last
    if spec.start is not None:
        after = max(after, spec.start - 1)
    end = now if spec.end is None else min(now, spec.end)
    first = schedule.next_after(after)
    if first > end:
        upcoming = first if spec.end is None or first <= spec.end else None
        return Plan([], None, 0, False, upcoming)
    edge = now - round(spec.misfire_grace * MICROS)  # a slot at or before it is late
    on_time: list[int] = []
    slot = schedule.next_after(max(after, edge))
    while slot <= end and len(on_time) < MAX_ON_TIME:
        on_time.append(slot)
        slot = schedule.next_after(slot)
    cover = on_time[-1] if on_time else schedule.last_until(end)
    if on_time and slot <= end:  # more on time than one round takes: the rest next round
        cover = on_time[-1]
    late_until = on_time[0] - 1 if on_time else cover
    late = first <= late_until
    fire: list[int] = []
    skipped = 0
    if late:
        if spec.misfire == "once":
            fire.append(first)
            skipped = count_slots(entry, first, late_until)
        elif spec.misfire == "catch_up":
            slot = first
            while slot <= late_until and len(fire) < spec.catch_up:
                fire.append(slot)
                slot = schedule.next_after(slot)
            skipped = count_slots(entry, fire[-1], late_until)
        else:
            skipped = 1 + count_slots(entry, first, late_until)
    fire.extend(on_time)
    following = schedule.next_after(cover)
    upcoming = following if spec.end is None or following <= spec.end else None
    return Plan(fire, cover, skipped, late, upcoming)


def count_slots(entry: Entry, after: int, until: int) -> int:
    """Slots strictly after ``after`` and at most ``until`` (up to ``MAX_COUNTED``)."""
    count = 0
    slot = entry.schedule.next_after(after)
    while slot <= until and count < MAX_COUNTED:
        count += 1
        slot = entry.schedule.next_after(slot)
    return count


def next_slot(entry: Entry, last: int | None, since: int) -> int | None:
    """The entry's next slot after what was recorded (``None``: it has ended)."""
    spec = entry.spec
    after = since if last is None else last
    if spec.start is not None:
        after = max(after, spec.start - 1)
    slot = entry.schedule.next_after(after)
    return slot if spec.end is None or slot <= spec.end else None
