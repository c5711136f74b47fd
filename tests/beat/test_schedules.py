"""Schedules: crontab, cron strings and intervals, and the daylight-saving rules.

Berlin changes at 01:00 UTC (2024-03-31: 02:00 CET -> 03:00 CEST; 2024-10-27: 03:00 CEST ->
02:00 CET), New York at 02:00 local (2024-03-10: EST -> EDT at 07:00 UTC; 2024-11-03:
EDT -> EST at 06:00 UTC, so 01:00-01:59 happens twice).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from aqueue.beat import Cron, Every, crontab
from aqueue.beat.schedules import Schedule, from_spec, to_schedule
from aqueue.beat.zones import from_instant, to_instant
from aqueue.core.errors import ConfigurationError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def slots(schedule: Schedule, start: datetime, count: int, tz: ZoneInfo) -> list[str]:
    """The next ``count`` slots after ``start``, as local wall-clock text with the offset."""
    moment = to_instant(start)
    out = []
    for _ in range(count):
        moment = schedule.next_after(moment)
        out.append(from_instant(moment, tz).strftime("%m-%d %H:%M%z"))
    return out


def gaps(schedule: Schedule, start: datetime, count: int) -> list[float]:
    """Real minutes between consecutive slots."""
    moment = schedule.next_after(to_instant(start))
    out = []
    for _ in range(count):
        following = schedule.next_after(moment)
        out.append((following - moment) / 60e6)
        moment = following
    return out


# -- the seed's crontab(minute="*/10") across both changes, in two zones --------------------


def test_every_ten_minutes_over_spring_forward_berlin() -> None:
    seed = crontab(minute="*/10", tz="Europe/Berlin")
    got = slots(seed, datetime(2024, 3, 31, 0, 35, tzinfo=UTC), 4, BERLIN)
    # 02:00-02:50 do not exist: they fire at 03:00 CEST, the next valid time, once
    assert got == ["03-31 01:40+0100", "03-31 01:50+0100", "03-31 03:00+0200", "03-31 03:10+0200"]
    assert gaps(seed, datetime(2024, 3, 31, 0, 35, tzinfo=UTC), 3) == [10, 10, 10]


def test_every_ten_minutes_over_spring_forward_new_york() -> None:
    seed = crontab(minute="*/10", tz="America/New_York")
    got = slots(seed, datetime(2024, 3, 10, 6, 35, tzinfo=UTC), 4, NEW_YORK)
    assert got == ["03-10 01:40-0500", "03-10 01:50-0500", "03-10 03:00-0400", "03-10 03:10-0400"]


def test_every_ten_minutes_over_fall_back_fires_the_repeated_hour_once() -> None:
    seed = crontab(minute="*/10", tz="Europe/Berlin")
    got = slots(seed, datetime(2024, 10, 27, 0, 35, tzinfo=UTC), 4, BERLIN)
    # 02:00-02:50 happen twice: each fires at its first occurrence (CEST) only
    assert got == ["10-27 02:40+0200", "10-27 02:50+0200", "10-27 03:00+0100", "10-27 03:10+0100"]
    assert gaps(seed, datetime(2024, 10, 27, 0, 35, tzinfo=UTC), 2) == [10, 70]
    ny = crontab(minute="*/10", tz="America/New_York")
    got = slots(ny, datetime(2024, 11, 3, 5, 35, tzinfo=UTC), 4, NEW_YORK)
    assert got == ["11-03 01:40-0400", "11-03 01:50-0400", "11-03 02:00-0500", "11-03 02:10-0500"]


def test_a_search_from_inside_the_second_pass_finds_the_next_new_time() -> None:
    seed = crontab(minute="*/10", tz="Europe/Berlin")
    second_pass = datetime(2024, 10, 27, 1, 15, tzinfo=UTC)  # 02:15 CET, the second 02:15
    assert slots(seed, second_pass, 1, BERLIN) == ["10-27 03:00+0100"]
    last = from_instant(seed.last_until(to_instant(second_pass)), BERLIN)
    assert last.strftime("%H:%M%z") == "02:50+0200"  # the first pass's last slot


def test_daily_job_in_the_skipped_hour_fires_at_the_jump() -> None:
    daily = Cron("30 2 * * *", "Europe/Berlin")
    got = slots(daily, datetime(2024, 3, 29, tzinfo=UTC), 4, BERLIN)
    assert got == ["03-29 02:30+0100", "03-30 02:30+0100", "03-31 03:00+0200", "04-01 02:30+0200"]
    ny = Cron("30 2 * * *", "America/New_York")
    got = slots(ny, datetime(2024, 3, 9, 12, tzinfo=UTC), 2, NEW_YORK)
    assert got == ["03-10 03:00-0400", "03-11 02:30-0400"]


def test_daily_job_in_the_repeated_hour_fires_once() -> None:
    daily = Cron("30 2 * * *", "Europe/Berlin")
    got = slots(daily, datetime(2024, 10, 25, tzinfo=UTC), 4, BERLIN)
    assert got == ["10-25 02:30+0200", "10-26 02:30+0200", "10-27 02:30+0200", "10-28 02:30+0100"]
    ny = Cron("30 1 * * *", "America/New_York")
    got = slots(ny, datetime(2024, 11, 2, 12, tzinfo=UTC), 2, NEW_YORK)
    assert got == ["11-03 01:30-0400", "11-04 01:30-0500"]


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK])
def test_weekly_schedule_keeps_its_wall_clock_time_all_year(tz: ZoneInfo) -> None:
    weekly = crontab(hour=7, minute=30, day_of_week="sat", tz=str(tz))
    moment = to_instant(datetime(2024, 1, 1, tzinfo=UTC))
    fired = []
    while True:
        moment = weekly.next_after(moment)
        local = from_instant(moment, tz)
        if local.year > 2024:
            break
        fired.append(local)
    assert len(fired) == 52
    assert all((t.weekday(), t.hour, t.minute) == (5, 7, 30) for t in fired)
    offsets = {t.utcoffset() for t in fired}
    assert len(offsets) == 2  # summer and winter time both seen


def test_last_until_walks_back_over_the_same_slots() -> None:
    for schedule in (
        crontab(minute="*/10", tz="Europe/Berlin"),
        Cron("30 2 * * *", "America/New_York"),
        Every(timedelta(minutes=7)),
    ):
        moment = to_instant(datetime(2024, 10, 26, 20, tzinfo=UTC))
        forward = []
        for _ in range(40):
            moment = schedule.next_after(moment)
            forward.append(moment)
        assert schedule.last_until(forward[-1]) == forward[-1]
        back = [forward[-1]]
        for _ in range(39):
            back.append(schedule.last_until(back[-1] - 1))
        assert back[::-1] == forward


# -- Celery's crontab and cron strings ------------------------------------------------------


def test_crontab_days_must_match_both_fields_and_cron_strings_either() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
    first_monday = crontab(minute=0, hour=0, day_of_week="mon", day_of_month="1-7")
    got = slots(first_monday, start, 3, ZoneInfo("UTC"))
    assert got == ["02-05 00:00+0000", "03-04 00:00+0000", "04-01 00:00+0000"]
    either = Cron("0 0 1-7 * mon")
    got = slots(either, start, 3, ZoneInfo("UTC"))
    assert got == ["01-02 00:00+0000", "01-03 00:00+0000", "01-04 00:00+0000"]


def test_crontab_takes_ints_strings_and_iterables() -> None:
    assert crontab(minute=[0, 30], hour="8-17/3", day_of_week={1, 3}).expr == "0,30 8-17/3 * * 1,3"
    assert crontab().expr == "* * * * *"
    assert Cron("@weekly").expr == "0 0 * * 0"
    assert Cron(" 0   7 * * mon ").expr == "0 7 * * mon"


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: crontab(minute=61), "minute=61.*not a valid cron expression"),
        (lambda: crontab(day_of_month=30, month_of_year=2), "never occurs"),
        (lambda: crontab(hour=True), "crontab hour must be an int"),
        (lambda: crontab(minute=["x"]), "crontab minute must be an int"),
        (lambda: Cron("* * * *"), "must have five fields"),
        (lambda: Cron("* * * * * *"), "for periods under a minute use every="),
        (lambda: Cron("0 7 * * funday"), "not a valid cron expression"),
        (lambda: Cron("0 7 * * *", "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (lambda: Every(0.5), "at least 1 second"),
        (lambda: Every(float("inf")), "finite"),
        (lambda: Every("10"), "timedelta or a number of seconds"),  # type: ignore[arg-type]
        (lambda: to_schedule(object()), "must be a crontab"),
        (lambda: to_schedule(True), "must be a crontab"),
    ],
)
def test_bad_schedules_are_one_line_errors(make: object, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle) as caught:
        make()  # type: ignore[operator]
    assert "\n" not in str(caught.value)


def test_celery_schedule_objects_name_the_aqueue_spelling() -> None:
    class crontab:
        pass

    with pytest.raises(ConfigurationError, match=r"aqueue\.beat\.crontab"):
        to_schedule(crontab())


# -- intervals ------------------------------------------------------------------------------


def test_intervals_are_aligned_to_the_epoch_or_an_anchor() -> None:
    every = Every(timedelta(hours=6))
    got = slots(every, datetime(2024, 5, 1, 13, 5, tzinfo=UTC), 3, ZoneInfo("UTC"))
    assert got == ["05-01 18:00+0000", "05-02 00:00+0000", "05-02 06:00+0000"]
    anchored = every.anchored(to_instant(datetime(2024, 5, 1, 1, 30, tzinfo=UTC)))
    got = slots(anchored, datetime(2024, 5, 1, 13, 5, tzinfo=UTC), 2, ZoneInfo("UTC"))
    assert got == ["05-01 13:30+0000", "05-01 19:30+0000"]
    assert Every(1).next_after(to_instant(datetime(2024, 1, 1, tzinfo=UTC))) % 1_000_000 == 0


def test_specs_round_trip() -> None:
    for schedule in (
        crontab(minute="*/10", tz="Europe/Berlin"),
        Cron("0 7 * * mon", "America/New_York"),
        Every(90, anchor=5_000_000),
        to_schedule(timedelta(seconds=30)),
        to_schedule("*/5 * * * *"),
    ):
        assert from_spec(schedule.spec()) == schedule


def test_without_croniter_cron_schedules_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r'pip install "aqueue\[cron\]"'):
        crontab(minute="*/10")
    assert Every(60).next_after(0) == 60_000_000  # intervals do not need it
