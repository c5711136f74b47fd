"""Entries: every key checked once, one line naming the entry; slot ids; misfire plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aqueue import App
from aqueue.beat import crontab
from aqueue.beat.entries import Entry, parse_entry, slot_task_id
from aqueue.beat.plan import plan
from aqueue.beat.service import code_entries
from aqueue.beat.zones import MICROS, to_instant
from aqueue.core.errors import ConfigurationError

T0 = to_instant(datetime(2024, 6, 1, tzinfo=UTC))
MINUTE = 60 * MICROS


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"schedule": 10}, "has no 'task'"),
        ({"task": "t"}, "has no 'schedule'"),
        ({"task": "t", "schedule": 10, "kwarg": {}}, "unknown key 'kwarg'; did you mean 'kwargs'"),
        ({"task": 5, "schedule": 10}, "task must be a task name"),
        ({"task": "t", "schedule": "nope"}, "must have five fields"),
        ({"task": "t", "schedule": 10, "args": "ab"}, "args must be a list or tuple"),
        ({"task": "t", "schedule": 10, "kwargs": {1: 2}}, "kwargs must be a dict with str keys"),
        ({"task": "t", "schedule": 10, "options": {"queue": 5}}, "options: queue must be a str"),
        ({"task": "t", "schedule": 10, "options": {"task_id": "x"}}, "gives each slot its own id"),
        ({"task": "t", "schedule": 10, "options": {"countdown": 5}}, "use jitter="),
        ({"task": "t", "schedule": 10, "misfire": "later"}, "misfire must be one of"),
        ({"task": "t", "schedule": 10, "catch_up": 0}, "catch_up must be a whole number"),
        (
            {"task": "t", "schedule": 10, "misfire": "skip", "catch_up": 3},
            "needs misfire='catch_up'",
        ),
        ({"task": "t", "schedule": 10, "overlap": "queue"}, "overlap must be 'allow' or 'skip'"),
        ({"task": "t", "schedule": 10, "jitter": -1}, "jitter must be a number of seconds"),
        ({"task": "t", "schedule": 10, "misfire_grace": "1m"}, "misfire_grace must be a number"),
        ({"task": "t", "schedule": 10, "start": "monday"}, "start must be a datetime"),
        ({"task": "t", "schedule": 10, "start": 20, "end": 10}, "end must be after start"),
        ({"task": "t", "schedule": 10, "enabled": "yes"}, "enabled must be True or False"),
        ({"task": "t", "schedule": 10, "tz": "Nowhere/Land"}, "unknown time zone"),
        ({"task": "t", "schedule": 10, "args": [object()]}, "cannot be stored"),
    ],
)
def test_bad_entries_are_one_line_naming_the_entry(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle) as caught:
        parse_entry("report", raw)
    text = str(caught.value)
    assert text.startswith("beat entry 'report'") and "\n" not in text


def test_an_entry_takes_celery_keys_and_aqueue_policies() -> None:
    spec = parse_entry(
        "report",
        {
            "task": "proj.report",
            "schedule": crontab(hour=7, minute=30, day_of_week="mon"),
            "args": [1, 2],
            "kwargs": {"mode": "full"},
            "options": {"queue": "reports", "priority": 5, "expires": 600},
            "relative": True,
            "misfire": "catch_up",
            "catch_up": 3,
            "overlap": "skip",
            "jitter": 30,
            "start": datetime(2024, 1, 1),
        },
        timezone="Europe/Berlin",
    )
    assert spec.schedule.tz == "Europe/Berlin" and spec.schedule.day_or is False
    assert (spec.args, spec.kwargs) == ((1, 2), {"mode": "full"})
    assert (spec.misfire, spec.catch_up, spec.overlap, spec.jitter) == ("catch_up", 3, "skip", 30)
    # a naive start is read in the entry's zone
    assert spec.start == to_instant(datetime(2024, 1, 1, tzinfo=UTC) - timedelta(hours=1))


def test_celerys_cron_starting_deadline_makes_cron_entries_skip() -> None:
    cron = parse_entry("a", {"task": "t", "schedule": "* * * * *"}, cron_deadline=30)
    assert (cron.misfire, cron.misfire_grace) == ("skip", 30)
    chosen = parse_entry(
        "b", {"task": "t", "schedule": "* * * * *", "misfire": "once"}, cron_deadline=30
    )
    assert chosen.misfire == "once"
    interval = parse_entry("c", {"task": "t", "schedule": 60}, cron_deadline=30)
    assert interval.misfire == "once"


def test_overlap_skip_is_refused_for_a_task_without_results() -> None:
    app = App("ent", broker="memory://ent")

    @app.task(ignore_result=True)
    async def fire_and_forget() -> None: ...

    with pytest.raises(ConfigurationError, match="ignore_result=True"):
        parse_entry(
            "x",
            {"task": fire_and_forget, "schedule": 60, "overlap": "skip"},
            tasks=app.tasks,
        )


def test_code_entries_come_from_beat_schedule_and_periodic() -> None:
    app = App("codeentries", broker="memory://codeentries", timezone="America/New_York")

    @app.periodic(cron="0 7 * * mon", tz="Europe/Berlin", args=(1,), overlap="skip")
    async def weekly(n: int) -> int:
        return n

    @app.periodic(every=timedelta(seconds=30), name="half-minute")
    @app.task(queue="fast")
    async def often() -> None: ...

    app.conf.beat_schedule = {
        "seed": {"task": "auto_sms_rating", "schedule": crontab(minute="*/10")}
    }
    entries = code_entries(app)
    assert set(entries) == {weekly.name, "half-minute", "seed"}
    assert entries[weekly.name].schedule.tz == "Europe/Berlin"
    assert entries["seed"].schedule.tz == "America/New_York"  # the timezone setting
    assert entries["half-minute"].schedule.every == 30
    assert often.queue == "fast" and weekly.name in app.tasks
    app.conf.beat_schedule = {"half-minute": {"task": "x", "schedule": 5}}
    with pytest.raises(ConfigurationError, match="defined twice"):
        code_entries(app)


def test_periodic_checks_its_entry_when_it_decorates() -> None:
    app = App("periodicbad", broker="memory://periodicbad")
    with pytest.raises(ConfigurationError, match="one of cron=, every= or schedule="):
        app.periodic()
    with pytest.raises(ConfigurationError, match=r"beat entry 'x'.*five fields"):

        @app.periodic(cron="every monday", name="x")
        async def bad() -> None: ...


def test_slot_task_ids_are_deterministic_and_distinct() -> None:
    a = slot_task_id("proj", "report", T0)
    assert a == slot_task_id("proj", "report", T0)
    assert (
        len(
            {
                a,
                slot_task_id("proj", "report", T0 + 1),
                slot_task_id("proj", "other", T0),
                slot_task_id("other", "report", T0),
            }
        )
        == 4
    )
    # names containing the separator of a naive concatenation do not collide
    assert slot_task_id("a/b", "c", T0) != slot_task_id("a", "b/c", T0)


# -- planning: the misfire policy -----------------------------------------------------------


def entry(**keys: Any) -> Entry:
    raw = {"task": "t", "schedule": 60, **keys}
    return Entry.of("e", parse_entry("e", raw))


def test_on_time_slots_all_fire_whatever_the_policy() -> None:
    for policy in ("once", "skip", "catch_up"):
        # the leader took over 45 s late: three per-15-second slots are within the grace
        p = plan(entry(schedule=15, misfire=policy), T0, T0 - MINUTE, T0 + 45 * MICROS + 1)
        assert p.fire == [T0 + 15 * MICROS, T0 + 30 * MICROS, T0 + 45 * MICROS]
        assert (p.late, p.skipped, p.cover, p.next) == (
            False,
            0,
            T0 + 45 * MICROS,
            T0 + 60 * MICROS,
        )


def test_nothing_due_says_when_the_next_slot_is() -> None:
    p = plan(entry(), T0, T0 - MINUTE, T0 + 30 * MICROS)
    assert (p.fire, p.cover, p.next) == ([], None, T0 + MINUTE)


def test_late_slots_once_skip_and_catch_up() -> None:
    now = T0 + 10 * MINUTE + 30 * MICROS  # 10 slots since the last, all but the latest late
    once = plan(entry(misfire_grace=45), T0, 0, now)
    # the late ones run once (the first late slot's id: the same whoever plans), the on-time one too
    assert once.fire == [T0 + MINUTE, T0 + 10 * MINUTE] and once.late
    assert (once.skipped, once.cover) == (8, T0 + 10 * MINUTE)
    skip = plan(entry(misfire="skip", misfire_grace=45), T0, 0, now)
    assert skip.fire == [T0 + 10 * MINUTE] and skip.skipped == 9
    catch = plan(entry(misfire="catch_up", catch_up=3, misfire_grace=45), T0, 0, now)
    assert catch.fire == [T0 + MINUTE, T0 + 2 * MINUTE, T0 + 3 * MINUTE, T0 + 10 * MINUTE]
    assert catch.skipped == 6
    # the late slots chosen do not depend on when the plan is made
    later = plan(entry(misfire="catch_up", catch_up=3, misfire_grace=45), T0, 0, now + 5 * MINUTE)
    assert later.fire[:3] == catch.fire[:3]


def test_a_long_downtime_runs_once() -> None:
    p = plan(entry(), T0, 0, T0 + 30 * 24 * 60 * MINUTE)  # a month of minute slots missed
    assert len(p.fire) == 2 and p.late  # the first late slot, and the one on time
    assert p.skipped >= 1000  # counted up to a bound


def test_start_and_end_bound_the_slots() -> None:
    start, end = T0 + 5 * MINUTE, T0 + 8 * MINUTE
    bounded = entry(start=start / MICROS, end=end / MICROS)
    early = plan(bounded, None, T0, T0 + 2 * MINUTE)
    assert (early.fire, early.next) == ([], start)
    inside = plan(bounded, None, T0, start + 1)
    assert inside.fire == [start]
    done = plan(bounded, end, T0, end + 10 * MINUTE)
    assert (done.fire, done.next) == ([], None)
