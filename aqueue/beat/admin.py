"""Entries at run time: add, replace, remove, pause, resume, and what each did last.

:class:`BeatSchedule` works on the store every scheduler of the app reads, so a change is
seen by all of them without a restart (within ``beat_max_loop_interval``). Entries
defined in code (``beat_schedule``, ``@app.periodic``) are changed in code only; pausing
and resuming works on them too. ``aqueue beat list|add|remove|pause|resume|next`` are
this class from the command line.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from aqueue.core.errors import AqueueError, ConfigurationError

from .clock import Clock, SystemClock
from .entries import Entry, EntrySpec, decode_spec, decode_state, encode, parse_entry
from .plan import next_slot
from .schedules import from_spec
from .store import BeatStore, StoredEntry, store_for
from .zones import from_instant, instant, zone

if TYPE_CHECKING:
    from aqueue.core.app import App

__all__ = ["BeatSchedule", "EntryInfo", "UnknownEntry"]

#: characters of a last result's repr shown
_RESULT_CHARS = 200


class UnknownEntry(AqueueError, LookupError):
    """No beat entry has that name."""


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """An entry, its policies, and what the scheduler did with it last (times in UTC)."""

    name: str
    task: str
    #: the schedule in words (``cron */10 * * * * Europe/Berlin``, ``every 0:00:30``)
    schedule: str
    #: ``"code"`` (beat_schedule, @app.periodic) or ``"runtime"`` (added through the API/CLI)
    source: str
    enabled: bool
    paused: bool
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    misfire: str
    catch_up: int
    misfire_grace: float
    overlap: str
    jitter: float
    start: dt.datetime | None
    end: dt.datetime | None
    #: the next slot (``None``: paused, disabled or ended)
    next_run: dt.datetime | None
    #: the slot of the last task published, and when it was published
    last_run: dt.datetime | None
    last_sent_at: dt.datetime | None
    last_task_id: str | None
    #: that task's state (PENDING until a worker stored something) and result
    last_state: str | None
    last_result: str | None
    runs: int
    skipped: int
    #: why the last skipped slot was skipped
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (times in ISO 8601)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, dt.datetime):
                out[key] = value.isoformat()
        out["args"] = list(self.args)
        return out


class BeatSchedule:
    """The stored entries of an app (``async with BeatSchedule(app) as schedule: ...``).

    Args:
        app: the app; its result backend holds the entries.
        store: a store object instead of the one the backend URL implies.
        clock: where "now" is read (the next run of an entry).
    """

    def __init__(
        self, app: App, *, store: BeatStore | None = None, clock: Clock | None = None
    ) -> None:
        self.app = app
        self.store = store or store_for(app)
        self.clock = clock or SystemClock()

    async def __aenter__(self) -> BeatSchedule:
        await self.store.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.store.close()

    async def add(
        self,
        name: str,
        task: Any,
        schedule: Any = None,
        *,
        cron: str | None = None,
        every: dt.timedelta | float | None = None,
        replace: bool = False,
        **keys: Any,
    ) -> EntryInfo:
        """Add an entry (or, with ``replace=True``, change a run-time one; its record kept).

        ``task`` is a task name (or a Task). The schedule is one of ``schedule``
        (``crontab(...)``, a cron string, a timedelta or seconds), ``cron`` or ``every``;
        ``keys`` are the other keys of an entry (``args``, ``kwargs``, ``options``, ``tz``,
        ``misfire``, ``catch_up``, ``misfire_grace``, ``overlap``, ``jitter``, ``start``,
        ``end``, ``enabled``).

        Raises:
            ConfigurationError: a bad key, a name that exists (without ``replace``) or
                that is defined in code.
        """
        given = [v for v in (schedule, cron, every) if v is not None]
        if len(given) != 1:
            raise ConfigurationError(f"beat entry {name!r}: give one of schedule=, cron= or every=")
        spec = self._parse(name, {**keys, "task": task, "schedule": given[0]})
        outcome = await self.store.put(
            name, encode(spec), instant(self.clock.now()), replace=replace
        )
        if outcome == "code":
            raise ConfigurationError(
                f"beat entry {name!r} is defined in code (beat_schedule or @app.periodic): "
                "change it there (pause and resume work on it)"
            )
        if outcome == "exists":
            raise ConfigurationError(
                f"beat entry {name!r} exists: pass replace=True (--replace) to change it"
            )
        return await self.get(name, results=False)

    def _parse(self, name: str, raw: dict[str, Any]) -> EntrySpec:
        conf = self.app.conf
        return parse_entry(
            name,
            raw,
            timezone=conf.timezone,
            cron_deadline=conf.beat_cron_starting_deadline,
            tasks=self.app.tasks,
        )

    async def remove(self, name: str) -> None:
        """Remove a run-time entry and its record.

        Raises:
            UnknownEntry: no such entry.
            ConfigurationError: it is defined in code (remove it there, or pause it).
        """
        outcome = await self.store.remove(name)
        if outcome == "missing":
            raise UnknownEntry(f"no beat entry named {name!r}")
        if outcome == "code":
            raise ConfigurationError(
                f"beat entry {name!r} is defined in code: remove it there, or pause it"
            )

    async def pause(self, name: str) -> None:
        """Stop firing the entry until :meth:`resume` (slots meanwhile are late then: its
        misfire policy decides). Raises :class:`UnknownEntry`."""
        if not await self.store.set_paused(name, True):
            raise UnknownEntry(f"no beat entry named {name!r}")

    async def resume(self, name: str) -> None:
        """Fire the entry again. Raises :class:`UnknownEntry`."""
        if not await self.store.set_paused(name, False):
            raise UnknownEntry(f"no beat entry named {name!r}")

    async def leader(self) -> str | None:
        """The name of the scheduler holding the lease (``None``: none leads)."""
        return (await self.store.snapshot()).leader

    async def entries(self, *, results: bool = True) -> list[EntryInfo]:
        """Every entry, by name; with ``results``, each last task's state and result too
        (one read of the result backend per entry)."""
        snapshot = await self.store.snapshot()
        now = instant(self.clock.now())
        infos = [self._info(name, stored, now) for name, stored in sorted(snapshot.entries.items())]
        if results:
            infos = [await self._with_result(info) for info in infos]
        return infos

    async def get(self, name: str, *, results: bool = True) -> EntryInfo:
        """One entry. Raises :class:`UnknownEntry`."""
        snapshot = await self.store.snapshot()
        stored = snapshot.entries.get(name)
        if stored is None:
            raise UnknownEntry(f"no beat entry named {name!r}")
        info = self._info(name, stored, instant(self.clock.now()))
        return await self._with_result(info) if results else info

    async def upcoming(self, name: str, count: int = 5) -> list[dt.datetime]:
        """The entry's next ``count`` slots from now, in its schedule's zone (a cron
        schedule's) or UTC. Raises :class:`UnknownEntry`."""
        snapshot = await self.store.snapshot()
        stored = snapshot.entries.get(name)
        if stored is None:
            raise UnknownEntry(f"no beat entry named {name!r}")
        spec = decode_spec(stored.spec)
        entry = Entry.of(name, spec)
        tz = zone(spec.schedule.tz) if spec.schedule.cron is not None else dt.UTC
        now = instant(self.clock.now())
        after = max(now, (spec.start - 1) if spec.start is not None else now)
        out: list[dt.datetime] = []
        slot = entry.schedule.next_after(after)
        while len(out) < count and (spec.end is None or slot <= spec.end):
            out.append(from_instant(slot, tz))
            slot = entry.schedule.next_after(slot)
        return out

    def _info(self, name: str, stored: StoredEntry, now: int) -> EntryInfo:
        spec = decode_spec(stored.spec)
        state = decode_state(stored.state)
        entry = Entry.of(name, spec)
        upcoming: int | None = None
        if spec.enabled and not stored.paused:
            upcoming = next_slot(entry, state.last_slot, stored.since)
            if upcoming is not None and upcoming < now:  # overdue: the leader is at it
                upcoming = now
        return EntryInfo(
            name=name,
            task=spec.task,
            schedule=str(from_spec(spec.schedule)),
            source="code" if stored.code else "runtime",
            enabled=spec.enabled,
            paused=stored.paused,
            args=spec.args,
            kwargs=spec.kwargs,
            options=spec.options,
            misfire=spec.misfire,
            catch_up=spec.catch_up,
            misfire_grace=spec.misfire_grace,
            overlap=spec.overlap,
            jitter=spec.jitter,
            start=_time(spec.start),
            end=_time(spec.end),
            next_run=_time(upcoming),
            last_run=_time(state.last_task_slot),
            last_sent_at=(
                None
                if state.last_sent_at is None
                else dt.datetime.fromtimestamp(state.last_sent_at, dt.UTC)
            ),
            last_task_id=state.last_task_id,
            last_state=None,
            last_result=None,
            runs=state.runs,
            skipped=state.skipped,
            note=state.note,
        )

    async def _with_result(self, info: EntryInfo) -> EntryInfo:
        if info.last_task_id is None or self.app.backend_url is None:
            return info
        handle = self.app.AsyncResult(info.last_task_id)
        state = await handle.state()
        value = handle.result
        shown = None if value is None and state != "SUCCESS" else repr(value)
        if shown is not None and len(shown) > _RESULT_CHARS:
            shown = shown[: _RESULT_CHARS - 3] + "..."
        return replace(info, last_state=state, last_result=shown)


def _time(micros: int | None) -> dt.datetime | None:
    return None if micros is None else from_instant(micros)
