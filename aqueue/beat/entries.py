"""Entries: what to send, on which schedule, under which policies; checked once, stored as data.

An entry comes from ``app.conf.beat_schedule`` (Celery's dicts), from ``@app.periodic``,
or from :meth:`Schedules.add <aqueue.beat.Schedules.add>` at run time. All three go through
:func:`parse_entry`, which checks every key and returns an :class:`EntrySpec`: plain data,
stored in the backend so that every scheduler reads the same definition.

Keys of an entry (Celery's first)::

    task        the task's name (or the Task)                  required
    schedule    crontab(...), a cron string, timedelta, seconds  required
    args, kwargs, options                                       as apply_async takes them
    relative    Celery's; aqueue aligns intervals to the epoch (or start) anyway
    tz          the zone a cron schedule reads (default: the timezone setting, else UTC)
    misfire     'once' (default), 'skip' or 'catch_up': what late slots do
    catch_up    with misfire='catch_up': at most this many late slots run (default 10)
    misfire_grace   seconds after its time a slot still runs as usual (default 60)
    overlap     'allow' (default) or 'skip': skip a slot while the last run is unfinished
    jitter      seconds: each slot's task is due up to this much after the slot
    start, end  datetimes (or unix seconds): no slot before start or after end
    enabled     False keeps the entry without running it
"""

from __future__ import annotations

import difflib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Final

import msgspec

from aqueue.core.errors import ConfigurationError, OptionError
from aqueue.core.options import check_options
from aqueue.core.task import Task

from .schedules import Schedule, ScheduleSpec, from_spec, to_schedule
from .zones import MICROS, from_instant, to_instant, zone

__all__ = [
    "ENTRY_KEYS",
    "Entry",
    "EntrySpec",
    "EntryState",
    "decode_spec",
    "decode_state",
    "encode",
    "parse_entry",
    "slot_task_id",
]

MISFIRE_POLICIES: Final = ("once", "skip", "catch_up")
OVERLAP_POLICIES: Final = ("allow", "skip")
#: the keys an entry may have
ENTRY_KEYS: Final = frozenset(
    {
        "task",
        "schedule",
        "args",
        "kwargs",
        "options",
        "relative",
        "tz",
        "misfire",
        "catch_up",
        "misfire_grace",
        "overlap",
        "jitter",
        "start",
        "end",
        "enabled",
    }
)
#: call options an entry cannot carry: the scheduler sets ids and due times itself, and a
#: stored entry holds data only (no canvases)
_REFUSED_OPTIONS: Final = {
    "task_id": "the scheduler gives each slot its own id",
    "eta": "the slot is the time; use jitter= to spread tasks after it",
    "countdown": "the slot is the time; use jitter= to spread tasks after it",
    "link": "callbacks are not stored with schedules",
    "link_error": "callbacks are not stored with schedules",
    "parent_id": "a scheduled task starts its own workflow",
    "root_id": "a scheduled task starts its own workflow",
    "group_id": "a scheduled task starts its own workflow",
}
DEFAULT_GRACE: Final = 60.0
DEFAULT_CATCH_UP: Final = 10
MAX_NAME: Final = 200
#: the namespace of every slot's task id (uuid5)
SLOT_NAMESPACE: Final = uuid.UUID("6f1c2c43-7d55-5b0e-9a3e-0c1b8e6f2a15")


class EntrySpec(msgspec.Struct, frozen=True, omit_defaults=True):
    """An entry as stored: checked, times as microseconds since the epoch."""

    task: str
    schedule: ScheduleSpec
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {}
    misfire: str = "once"
    catch_up: int = DEFAULT_CATCH_UP
    misfire_grace: float = DEFAULT_GRACE
    overlap: str = "allow"
    jitter: float = 0.0
    start: int | None = None
    end: int | None = None
    enabled: bool = True


class EntryState(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the scheduler recorded about an entry (written by the leader only)."""

    #: the last slot dealt with (published or skipped); later slots are still to come
    last_slot: int | None = None
    #: the last task published, its slot, and when (clock seconds)
    last_task_id: str | None = None
    last_task_slot: int | None = None
    last_sent_at: float | None = None
    #: tasks published, and slots skipped (misfire or overlap policy)
    runs: int = 0
    skipped: int = 0
    #: why the last slot skipped was skipped
    note: str | None = None
    #: late slots a misfire plan decided to run and that are not yet published
    pending: tuple[int, ...] = ()


_ENCODER = msgspec.msgpack.Encoder()
_SPEC_DECODER = msgspec.msgpack.Decoder(EntrySpec)
_STATE_DECODER = msgspec.msgpack.Decoder(EntryState)


def encode(value: EntrySpec | EntryState) -> bytes:
    """A spec or state as stored (msgpack)."""
    return _ENCODER.encode(value)


def decode_spec(data: bytes) -> EntrySpec:
    """A stored spec."""
    return _SPEC_DECODER.decode(data)


def decode_state(data: bytes | None) -> EntryState:
    """A stored state (``None``: nothing recorded yet)."""
    return EntryState() if not data else _STATE_DECODER.decode(data)


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored entry, ready to plan with: its spec and its schedule."""

    name: str
    spec: EntrySpec
    schedule: Schedule

    @classmethod
    def of(cls, name: str, spec: EntrySpec) -> Entry:
        """The entry for a stored spec (its interval aligned to ``start`` when it has one)."""
        schedule = from_spec(spec.schedule)
        return cls(name, spec, schedule)


def slot_task_id(app_name: str, entry: str, slot: int) -> str:
    """The task id of an entry's slot: the same in every scheduler, so a slot published twice
    is one task (the broker refuses an id that is queued; the worker does not run an id
    that already finished)."""
    moment = from_instant(slot).isoformat()
    return str(uuid.uuid5(SLOT_NAMESPACE, json.dumps([app_name, entry, moment])))


def check_name(name: Any) -> str:
    """An entry name: a non-empty printable string of at most 200 characters."""
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        raise ConfigurationError(f"an entry name must be a non-empty printable str, not {name!r}")
    if len(name) > MAX_NAME:
        raise ConfigurationError(f"entry name {name[:40]!r}... is longer than {MAX_NAME}")
    return name


def parse_entry(
    name: str,
    raw: Mapping[str, Any],
    *,
    timezone: str | None = None,
    cron_deadline: float | None = None,
    tasks: Mapping[str, Task[Any, Any]] | None = None,
) -> EntrySpec:
    """Check an entry's keys and values; the entry as stored.

    Args:
        name: the entry's name (for errors).
        raw: the entry's keys (see the module docstring).
        timezone: the app's ``timezone`` setting, for cron schedules without ``tz``.
        cron_deadline: Celery's ``beat_cron_starting_deadline``: cron entries that do not
            choose a misfire policy skip slots later than this many seconds.
        tasks: the app's registered tasks, to refuse ``overlap='skip'`` for a task whose
            results are not stored.

    Raises:
        ConfigurationError: one line naming the entry and the key.
    """
    where = f"beat entry {name!r}"
    check_name(name)
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where} must be a dict with 'task' and 'schedule', not {raw!r}")
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(ENTRY_KEYS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigurationError(f"{where}: unknown key {unknown[0]!r}{hint}")
    for required in ("task", "schedule"):
        if raw.get(required) is None:
            raise ConfigurationError(f"{where} has no {required!r}")
    task = raw["task"]
    if isinstance(task, Task):
        task = task.name
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"{where}: task must be a task name (str), not {task!r}")
    tz = zone(raw.get("tz", timezone), f"{where}: tz" if "tz" in raw else "setting timezone")
    start = _moment(raw.get("start"), tz, f"{where}: start")
    end = _moment(raw.get("end"), tz, f"{where}: end")
    if start is not None and end is not None and end <= start:
        raise ConfigurationError(f"{where}: end must be after start")
    try:
        schedule = to_schedule(raw["schedule"], f"{where}: schedule")
    except ConfigurationError as exc:
        text = str(exc)
        raise ConfigurationError(text if text.startswith(where) else f"{where}: {text}") from None
    schedule = schedule.zoned(tz).anchored(start if start is not None else 0)
    args = raw.get("args") or ()
    if isinstance(args, str | bytes) or not isinstance(args, list | tuple):
        raise ConfigurationError(f"{where}: args must be a list or tuple, not {args!r}")
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigurationError(f"{where}: kwargs must be a dict with str keys, not {kwargs!r}")
    options = _options(raw.get("options") or {}, where)
    relative = raw.get("relative", False)
    if not isinstance(relative, bool):
        raise ConfigurationError(f"{where}: relative must be True or False")
    explicit_misfire = "misfire" in raw or "catch_up" in raw
    misfire = raw.get("misfire", "catch_up" if "catch_up" in raw else "once")
    if misfire not in MISFIRE_POLICIES:
        raise ConfigurationError(
            f"{where}: misfire must be one of {', '.join(map(repr, MISFIRE_POLICIES))}, "
            f"not {misfire!r}"
        )
    catch_up = raw.get("catch_up", DEFAULT_CATCH_UP)
    if isinstance(catch_up, bool) or not isinstance(catch_up, int) or catch_up < 1:
        raise ConfigurationError(f"{where}: catch_up must be a whole number, 1 or more")
    if "catch_up" in raw and misfire != "catch_up":
        raise ConfigurationError(f"{where}: catch_up needs misfire='catch_up'")
    grace = _seconds(raw.get("misfire_grace", DEFAULT_GRACE), f"{where}: misfire_grace")
    if cron_deadline is not None and not explicit_misfire and schedule.spec().cron is not None:
        misfire, grace = "skip", cron_deadline  # Celery's beat_cron_starting_deadline
    overlap = raw.get("overlap", "allow")
    if overlap not in OVERLAP_POLICIES:
        raise ConfigurationError(
            f"{where}: overlap must be 'allow' or 'skip' (skip a slot while the last run is "
            f"unfinished), not {overlap!r}"
        )
    known = (tasks or {}).get(task)
    if overlap == "skip" and known is not None and known.ignore_result:
        raise ConfigurationError(
            f"{where}: overlap='skip' reads the last run's result, and task {task} has "
            "ignore_result=True"
        )
    jitter = _seconds(raw.get("jitter", 0.0), f"{where}: jitter")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigurationError(f"{where}: enabled must be True or False, not {enabled!r}")
    spec = EntrySpec(
        task=task,
        schedule=schedule.spec(),
        args=tuple(args),
        kwargs=dict(kwargs),
        options=options,
        misfire=misfire,
        catch_up=catch_up,
        misfire_grace=grace,
        overlap=overlap,
        jitter=jitter,
        start=start,
        end=end,
        enabled=enabled,
    )
    try:
        encode(spec)
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise ConfigurationError(
            f"{where}: its args, kwargs or options cannot be stored: {exc}"
        ) from None
    return spec


def _options(options: Any, where: str) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{where}: options must be a dict, not {options!r}")
    for name in options:
        if name in _REFUSED_OPTIONS:
            raise ConfigurationError(
                f"{where}: option {name!r} is not for schedules: {_REFUSED_OPTIONS[name]}"
            )
    try:
        check_options(options)
    except OptionError as exc:
        raise ConfigurationError(f"{where}: options: {exc}") from None
    return dict(options)


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigurationError(f"{what} must be a number of seconds, 0 or more, not {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{what} must be finite")
    return float(value)


def _moment(value: Any, tz: tzinfo, what: str) -> int | None:
    """A start or end as an instant: an aware datetime, a naive one read in the entry's
    zone, or unix seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return to_instant(value if value.tzinfo else value.replace(tzinfo=tz))
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return round(value * MICROS)
    raise ConfigurationError(f"{what} must be a datetime or unix seconds, not {value!r}")
