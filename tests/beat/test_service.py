"""The scheduler under a virtual clock: weeks of slots, daylight saving, misfires, policies,
run-time changes and two schedulers, in memory and in milliseconds."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from aqueue import App
from aqueue.beat import Beat, BeatSchedule, VirtualClock, crontab, store_for
from aqueue.beat.entries import slot_task_id
from aqueue.beat.service import jitter_delay
from aqueue.beat.zones import to_instant
from aqueue.core.errors import BrokerError, PublishTimeout
from aqueue.core.message import MessageOut, ResultOut, encode
from aqueue.core.middleware import Middleware, PublishNext

from .conftest import published
from .faults import FaultyStore

DAY = 86400.0
UTC_ZONE = ZoneInfo("UTC")
#: a lease and loop interval longer than the spans these tests move through: the scheduler
#: then wakes for its slots only (renewals are not what they test)
QUIET = {"lease_seconds": 400 * DAY, "max_interval": 400 * DAY}


@pytest.fixture
async def app() -> AsyncIterator[App]:
    the_app = App("beatsvc", broker=f"memory://beat{uuid.uuid4().hex[:10]}")

    @the_app.task(name="auto_sms_rating")
    async def auto_sms_rating() -> None: ...

    async with the_app:
        yield the_app


def local_slots(messages: list, tz: ZoneInfo) -> list[str]:
    return [
        datetime.fromisoformat(m.headers["beat-slot"]).astimezone(tz).strftime("%m-%d %H:%M%z")
        for m in messages
    ]


async def test_the_seed_schedule_fires_every_slot_once_for_weeks(app: App) -> None:
    app.conf.beat_schedule = {
        "auto-sms-rating": {"task": "auto_sms_rating", "schedule": crontab(minute="*/10")}
    }
    start = datetime(2024, 6, 1, 0, 0, 30, tzinfo=UTC)
    clock = VirtualClock(start)
    async with app.beat(clock=clock, **QUIET) as beat:
        await clock.advance(14 * DAY)
    messages = await published(app)
    assert len(messages) == beat.published == 14 * 144
    expected = [
        to_instant(start.replace(second=0) + timedelta(minutes=10 * (i + 1)))
        for i in range(14 * 144)
    ]
    assert [m.id for m in messages] == [
        slot_task_id(app.name, "auto-sms-rating", s) for s in expected
    ]
    assert {m.task for m in messages} == {"auto_sms_rating"}
    assert all(m.headers["beat-entry"] == "auto-sms-rating" for m in messages)


@pytest.mark.parametrize(
    ("zone", "midnight", "change", "count", "gap"),
    [
        # spring forward: 02:00-02:50 never exist and fire at 03:00, so every ten real
        # minutes still has its slot (36 in six hours)
        (
            "Europe/Berlin",
            datetime(2024, 3, 30, 23, tzinfo=UTC),
            ["01:50+0100", "03:00+0200"],
            36,
            10,
        ),
        (
            "America/New_York",
            datetime(2024, 3, 10, 5, tzinfo=UTC),
            ["01:50-0500", "03:00-0400"],
            36,
            10,
        ),
        # fall back: the repeated hour fires once, so six slots fewer and one 70-minute gap
        (
            "Europe/Berlin",
            datetime(2024, 10, 26, 22, tzinfo=UTC),
            ["02:50+0200", "03:00+0100"],
            30,
            70,
        ),
        (
            "America/New_York",
            datetime(2024, 11, 3, 4, tzinfo=UTC),
            ["01:50-0400", "02:00-0500"],
            30,
            70,
        ),
    ],
)
async def test_the_seed_schedule_across_daylight_saving_changes(
    app: App, zone: str, midnight: datetime, change: list[str], count: int, gap: int
) -> None:
    app.conf.update(timezone=zone)
    app.conf.beat_schedule = {
        "auto-sms-rating": {"task": "auto_sms_rating", "schedule": crontab(minute="*/10")}
    }
    clock = VirtualClock(midnight)  # local midnight of the day of the change
    async with app.beat(clock=clock, **QUIET):
        await clock.advance(6 * 3600)
    messages = await published(app)
    got = [s.split(" ")[1] for s in local_slots(messages, ZoneInfo(zone))]
    at = got.index(change[0])
    assert got[at : at + 2] == change
    assert len(got) == count == len({m.id for m in messages})
    instants = [datetime.fromisoformat(m.headers["beat-slot"]) for m in messages]
    steps = [(b - a).total_seconds() / 60 for a, b in itertools.pairwise(instants)]
    assert steps[at] == gap and all(step == 10 for i, step in enumerate(steps) if i != at)


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York"])
async def test_a_weekly_schedule_fires_at_its_wall_clock_time_for_a_year(
    app: App, zone: str
) -> None:
    @app.periodic(cron="30 7 * * sat", tz=zone, name="weekend-recommendations")
    async def recommend() -> None: ...

    clock = VirtualClock(datetime(2024, 1, 1, tzinfo=UTC))
    async with app.beat(clock=clock, **QUIET):
        await clock.advance_to(datetime(2025, 1, 1, tzinfo=UTC))
    fired = [
        datetime.fromisoformat(m.headers["beat-slot"]).astimezone(ZoneInfo(zone))
        for m in await published(app)
    ]
    assert len(fired) == 52
    assert all((t.weekday(), t.hour, t.minute) == (5, 7, 30) for t in fired)
    assert len({t.utcoffset() for t in fired}) == 2  # through both changes


# -- misfires: a scheduler down for a while -----------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # 10:00 fired; down from 10:05 to 14:30: 11:00..14:00 are late. Run once: under
        # the first late slot's id, which any leader picks alike
        ({}, ["11:00"]),
        ({"misfire": "skip"}, []),
        ({"misfire": "catch_up", "catch_up": 2}, ["11:00", "12:00"]),
        ({"misfire": "catch_up", "catch_up": 9}, ["11:00", "12:00", "13:00", "14:00"]),
    ],
)
async def test_misfire_policies_after_downtime(
    app: App, policy: dict[str, object], expected: list[str]
) -> None:
    app.conf.beat_schedule = {"hourly": {"task": "auto_sms_rating", "schedule": 3600, **policy}}
    clock = VirtualClock(datetime(2024, 6, 1, 9, 30, tzinfo=UTC))
    async with app.beat(clock=clock, **QUIET):
        await clock.advance_to(datetime(2024, 6, 1, 10, 5, tzinfo=UTC))
    assert [s.split(" ")[1][:5] for s in local_slots(await published(app), UTC_ZONE)] == ["10:00"]
    await clock.advance_to(datetime(2024, 6, 1, 14, 30, tzinfo=UTC))  # nobody runs
    async with app.beat(clock=clock, **QUIET):
        after_restart = [s.split(" ")[1][:5] for s in local_slots(await published(app), UTC_ZONE)]
        await clock.advance(3600)
    assert after_restart == expected
    assert [s.split(" ")[1][:5] for s in local_slots(await published(app), UTC_ZONE)] == ["15:00"]
    async with BeatSchedule(app, clock=clock) as schedule:
        [info] = await schedule.entries()
    assert (info.runs, info.skipped) == (2 + len(expected), 4 - len(expected))
    assert "misfire" in (info.note or "")


async def test_a_short_gap_is_no_misfire(app: App) -> None:
    # a leader that takes over a few seconds late sends every slot it missed, late
    app.conf.beat_schedule = {
        "second": {"task": "auto_sms_rating", "schedule": 1, "misfire": "skip"}
    }
    clock = VirtualClock(datetime(2024, 6, 1, 12, tzinfo=UTC))
    async with app.beat(clock=clock, **QUIET):
        await clock.advance(3)
    await clock.advance(5)  # down for five seconds
    async with app.beat(clock=clock, **QUIET):
        await clock.advance(2)
    slots = [m.headers["beat-slot"][-14:-6] for m in await published(app)]
    assert slots == [f"12:00:{s:02d}" for s in range(1, 11)]


# -- policies ---------------------------------------------------------------------------------


async def test_overlap_skip_waits_for_the_last_run_to_finish(app: App) -> None:
    app.conf.beat_schedule = {
        "slow": {"task": "auto_sms_rating", "schedule": 60, "overlap": "skip"}
    }
    clock = VirtualClock(datetime(2024, 6, 1, 12, 0, 30, tzinfo=UTC))
    backend = await app.result_backend()
    async with app.beat(clock=clock, **QUIET):
        await clock.advance(60)
        [first] = await published(app)  # 12:01, still unfinished (no result yet)
        await clock.advance(120)
        assert await published(app) == []  # 12:02 and 12:03 skipped
        record = ResultOut(id=first.id, state="SUCCESS", task=first.task, attempt=1)
        await backend.store(
            first.id, encode(record, "msgpack"), state="SUCCESS", attempt=1, ttl=None
        )
        await clock.advance(60)
        [second] = await published(app)
    assert second.headers["beat-slot"].startswith("2024-06-01T12:04")
    async with BeatSchedule(app, clock=clock) as schedule:
        [info] = await schedule.entries()
    assert (info.runs, info.skipped) == (2, 2) and "overlap" in (info.note or "")
    assert info.last_state == "PENDING"  # the 12:04 run has no result yet


async def test_jitter_spreads_tasks_after_their_slot_the_same_way_everywhere(app: App) -> None:
    sent: list[MessageOut] = []

    class Record(Middleware):
        async def publish(self, message: MessageOut, call_next: PublishNext) -> None:
            sent.append(message)
            await call_next(message)

    app.add_middleware(Record())
    app.conf.beat_schedule = {"spread": {"task": "auto_sms_rating", "schedule": 60, "jitter": 30}}
    # slots ahead of the real clock, so that their due times are kept (a due time already
    # past is sent as "now")
    clock = VirtualClock(time.time() // 60 * 60 + 3600 + 30)
    async with app.beat(clock=clock, **QUIET):
        await clock.advance(600)
    assert len(sent) == 10
    delays = []
    for m in sent:
        slot = datetime.fromisoformat(m.headers["beat-slot"]).timestamp()
        assert m.eta is not None and slot <= m.eta < slot + 30
        delays.append(m.eta - slot)
        # any scheduler agrees, to the microsecond (an eta near 1.8e9 s carries ~2e-7 s of
        # float error: a relative tolerance of 1e-6 of a 0.04 s delay failed now and then)
        assert m.eta - slot == pytest.approx(jitter_delay(m.id, 30), abs=1e-6)
    assert len(set(delays)) > 1


async def test_start_end_and_enabled(app: App) -> None:
    app.conf.beat_schedule = {
        "window": {
            "task": "auto_sms_rating",
            "schedule": 3600,
            "start": datetime(2024, 6, 1, 12, 30, tzinfo=UTC),
            "end": datetime(2024, 6, 1, 15, 30, tzinfo=UTC),
        },
        "off": {"task": "auto_sms_rating", "schedule": 60, "enabled": False},
    }
    clock = VirtualClock(datetime(2024, 6, 1, 10, tzinfo=UTC))
    async with app.beat(clock=clock, **QUIET):
        await clock.advance(DAY)
    # the interval is aligned to start: 12:30, 13:30, 14:30, 15:30
    got = [m.headers["beat-slot"][11:16] for m in await published(app)]
    assert got == ["12:30", "13:30", "14:30", "15:30"]
    async with BeatSchedule(app, clock=clock) as schedule:
        infos = {i.name: i for i in await schedule.entries()}
    assert infos["window"].next_run is None and infos["off"].next_run is None


# -- run-time changes ----------------------------------------------------------------------


async def test_entries_added_paused_resumed_and_removed_at_run_time(app: App) -> None:
    clock = VirtualClock(datetime(2024, 6, 1, 12, 0, 30, tzinfo=UTC))
    async with (
        app.beat(clock=clock, lease_seconds=400 * DAY, max_interval=5),
        BeatSchedule(app, clock=clock) as schedule,
    ):
        await schedule.add("minutely", "auto_sms_rating", every=60, args=[7], misfire="skip")
        await clock.advance(5)  # the scheduler looks again within max_interval
        await clock.advance(180)
        assert len(await published(app)) == 3  # 12:01, 12:02, 12:03
        await schedule.pause("minutely")
        await clock.advance(300)
        assert await published(app) == []
        await schedule.resume("minutely")
        await clock.advance(125)
        # 12:04-12:07 were more than misfire_grace (60 s) late: skipped by the entry's
        # policy; 12:08 was within it, so it still runs
        assert [m.headers["beat-slot"][11:16] for m in await published(app)] == [
            "12:08",
            "12:09",
            "12:10",
        ]
        await schedule.add("minutely", "auto_sms_rating", every=120, replace=True)
        await clock.advance(240)
        assert [m.headers["beat-slot"][11:16] for m in await published(app)] == ["12:12", "12:14"]
        await schedule.remove("minutely")
        await clock.advance(600)
        assert await published(app) == []
        assert await schedule.entries() == []


async def test_two_schedulers_one_leads_the_other_takes_over(app: App) -> None:
    app.conf.beat_schedule = {"tick": {"task": "auto_sms_rating", "schedule": 1}}
    clock = VirtualClock(datetime(2024, 6, 1, 12, tzinfo=UTC))
    first = Beat(app, clock=clock, lease_seconds=6, max_interval=60, name="first")
    second = Beat(app, clock=clock, lease_seconds=6, max_interval=60, name="second")
    async with first:
        async with second:
            await clock.advance(30)
            assert (first.is_leader, second.is_leader) == (True, False)
        await clock.advance(30)  # the second stopped; the first goes on
    assert second.published == 0
    third = Beat(app, clock=clock, lease_seconds=6, max_interval=60, name="third")
    async with third:  # the first stopped cleanly: its lease is free at once
        await clock.advance(30)
        assert third.is_leader
    messages = await published(app)
    slots = [m.headers["beat-slot"] for m in messages]
    assert len(slots) == len(set(slots)) == first.published + third.published == 90


# -- outages ---------------------------------------------------------------------------------


async def test_a_store_outage_is_logged_once_and_survived(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.beat_schedule = {"minutely": {"task": "auto_sms_rating", "schedule": 60}}
    clock = VirtualClock(datetime(2024, 6, 1, 12, 0, 30, tzinfo=UTC))
    store = FaultyStore(store_for(app))
    with caplog.at_level(logging.DEBUG, logger="aqueue.beat"):
        async with app.beat(clock=clock, store=store, **QUIET):
            await clock.advance(60)
            store.down = True
            await clock.advance(60)  # from 12:02 to 12:02:30, a round a second, each failing
            store.down = False
            await clock.advance(60)
    slots = [m.headers["beat-slot"][11:16] for m in await published(app)]
    assert slots == ["12:01", "12:02", "12:03"]  # 12:02 sent 31 s late, once the store answered
    outage = [r for r in caplog.records if "the test's outage" in r.getMessage()]
    assert len(outage) == 31 and [r.levelno for r in outage].count(logging.ERROR) == 1
    assert any("answer again" in r.getMessage() for r in caplog.records)


async def test_a_failed_publish_is_sent_again(app: App) -> None:
    failures = [BrokerError("broker down"), PublishTimeout("no answer")]

    class Flaky(Middleware):
        async def publish(self, message: MessageOut, call_next: PublishNext) -> None:
            if failures:
                raise failures.pop(0)
            await call_next(message)

    app.add_middleware(Flaky())
    app.conf.beat_schedule = {"minutely": {"task": "auto_sms_rating", "schedule": 60}}
    clock = VirtualClock(datetime(2024, 6, 1, 12, 0, 30, tzinfo=UTC))
    async with app.beat(clock=clock, **QUIET):
        await clock.advance(120)
    slots = [m.headers["beat-slot"][11:16] for m in await published(app)]
    assert slots == ["12:01", "12:02"] and not failures
