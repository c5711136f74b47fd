"""The scheduler: any number may run, one leads, each slot is published once.

Every :class:`Beat` of an app (``aqueue beat``, ``aqueue worker --beat``, ``async with
app.beat():``) syncs the code-defined entries into the store when it starts, then tries
to take the **leader lease** (see :mod:`.store`). The leader renews it every third of
``beat_lease_seconds`` and publishes the slots that fall due; the others retry about once
a second and take over within a few seconds of the leader's death, or at once when it
stops cleanly and gives the lease up.

Why a slot cannot run twice, even when leaders overlap:

1. the lease leaves one leader at a time, and a leader renews before any publish unless
   it renewed within the last third of the lease;
2. each slot's task id is derived from (app, entry, slot) (:func:`~.entries.slot_task_id`),
   and a broker does not queue an id twice: Redis refuses a known id for ``dedupe_ttl``
   (a day), SQLite and memory while it is queued or running; after it finished, a worker
   that receives it again sees its stored result and does not run it again;
3. the leader's record of what it published is fenced: a leader whose lease ran out
   cannot overwrite its successor's record, and a successor starts from the last record,
   publishing again (harmlessly: 2.) at most the slots its predecessor published and had
   not yet recorded.

On RabbitMQ, 2. holds within one process only unless the broker has ``dedupe_url`` (its
page, "De-duplication by id"): a slot published by a leader that died before recording it
can then be queued a second time by its successor, and run twice if both copies are taken
before either finishes (docs/periodic-tasks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec.structs import replace

from aqueue.core.errors import (
    AqueueError,
    ConfigurationError,
    EncodeError,
    MessageTooLarge,
    OptionError,
)
from aqueue.core.message import decode_result
from aqueue.core.states import READY_STATES

from .clock import Clock, SystemClock
from .entries import (
    Entry,
    EntrySpec,
    EntryState,
    decode_spec,
    decode_state,
    encode,
    parse_entry,
    slot_task_id,
)
from .plan import next_slot, plan
from .store import BeatStore, store_for
from .zones import MICROS, from_instant, instant

if TYPE_CHECKING:
    from aqueue.core.app import App

__all__ = ["Beat", "code_entries", "jitter_delay"]

log = logging.getLogger("aqueue.beat")

#: headers every scheduled task carries: its entry and its slot (ISO 8601, UTC)
ENTRY_HEADER = "beat-entry"
SLOT_HEADER = "beat-slot"


def code_entries(app: App) -> dict[str, EntrySpec]:
    """The entries the app defines in code (``beat_schedule`` and ``@app.periodic``), checked.

    Raises:
        ConfigurationError: a bad entry (one line naming it and the key), or a name used by
            both.
    """
    conf = app.conf
    out: dict[str, EntrySpec] = {}
    sources: list[tuple[str, Mapping[str, Any]]] = [
        ("beat_schedule", conf.beat_schedule),
        ("@app.periodic", app.periodic_entries),
    ]
    for source, entries in sources:
        if not isinstance(entries, Mapping):
            raise ConfigurationError(f"setting beat_schedule must be a dict, not {entries!r}")
        for name, raw in entries.items():
            if name in out:
                raise ConfigurationError(
                    f"beat entry {name!r} is defined twice ({source} and beat_schedule)"
                )
            out[name] = parse_entry(
                name,
                raw,
                timezone=conf.timezone,
                cron_deadline=conf.beat_cron_starting_deadline,
                tasks=app.tasks,
            )
    return out


@dataclass(slots=True)
class _Tracked:
    """An entry as the leader holds it between reloads."""

    entry: Entry
    paused: bool
    since: int
    state: EntryState


class Beat:
    """The periodic task scheduler of an app.

    ``async with app.beat():`` runs it in the current event loop (``aqueue beat`` and
    ``aqueue worker --beat`` do the same); ``await beat.run()`` runs it until
    :meth:`request_stop`.

    Args:
        app: the app; its result backend holds the schedules and the lease.
        clock: where time is read (a :class:`~aqueue.beat.clock.VirtualClock` in tests).
        store: a store object instead of the one the backend URL implies.
        lease_seconds: the leader lease (default: the ``beat_lease_seconds`` setting).
        max_interval: most seconds between two looks at the store (default: the
            ``beat_max_loop_interval`` setting): how soon run-time changes are seen.
        name: this scheduler's name in the lease (default: host, pid and a random part).
    """

    def __init__(
        self,
        app: App,
        *,
        clock: Clock | None = None,
        store: BeatStore | None = None,
        lease_seconds: float | None = None,
        max_interval: float | None = None,
        name: str | None = None,
    ) -> None:
        self.app = app
        self.clock: Clock = clock or SystemClock()
        self.store: BeatStore = store or store_for(app)
        self.lease_seconds = float(lease_seconds or app.conf.beat_lease_seconds)
        if not self.lease_seconds > 0:
            raise ConfigurationError("beat lease_seconds must be more than 0")
        self.max_interval = float(max_interval or app.conf.beat_max_loop_interval)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: whether this scheduler holds the lease (as of its last look)
        self.is_leader = False
        #: tasks this scheduler published
        self.published = 0
        self._code: dict[str, EntrySpec] | None = None
        self._synced = False
        self._entries: dict[str, _Tracked] = {}
        self._version = -1
        self._next_renew = 0.0
        self._lease_until = 0.0
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._started: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        role = "leader" if self.is_leader else "standby"
        return f"<Beat {self.app.name} {self.name} {role} store={self.store!r}>"

    @property
    def _renew_every(self) -> float:
        return self.lease_seconds / 3

    @property
    def _standby_poll(self) -> float:
        return min(1.0, self.lease_seconds / 3)

    # -- running --------------------------------------------------------------------------

    async def __aenter__(self) -> Beat:
        self._check()
        started = self._events()[1]
        self._task = asyncio.create_task(self.run(), name=f"aqueue-beat-{self.app.name}")
        waiter = asyncio.ensure_future(started.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()  # raises what stopped it
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.request_stop()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        if self._wake is None or self._started is None:
            self._wake, self._started = asyncio.Event(), asyncio.Event()
        return self._wake, self._started

    def _check(self) -> dict[str, EntrySpec]:
        if self._code is None:
            self._code = code_entries(self.app)
        return self._code

    def request_stop(self) -> None:
        """Stop after the current round (the lease is given up, so a standby takes over at
        once)."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Run until :meth:`request_stop`. Store and broker failures are logged and retried;
        only a bad code-defined entry raises (``ConfigurationError``, before anything runs).
        """
        code = self._check()
        wake, started = self._events()
        log.info(
            "beat %s starting: %d code entr%s, store %r",
            self.name,
            len(code),
            "y" if len(code) == 1 else "ies",
            self.store,
        )
        try:
            failing = False
            while not self._stopping:
                try:
                    deadline = await self._round()
                except (AqueueError, OSError) as exc:
                    # once at ERROR, then quietly each second until a round succeeds
                    level = logging.DEBUG if failing else logging.ERROR
                    log.log(level, "beat %s: %s (retrying every second)", self.name, exc)
                    failing = True
                    deadline = self.clock.now() + self._standby_poll
                else:
                    if failing:
                        log.warning("beat %s: the store and broker answer again", self.name)
                    failing = False
                started.set()
                if self._stopping:
                    break
                await self.clock.sleep_until(deadline, wake)
        finally:
            started.set()
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self.is_leader:
            self.is_leader = False
            with contextlib.suppress(AqueueError, OSError):
                await self.store.release(self.name)
            log.info("beat %s gave up the lease", self.name)
        with contextlib.suppress(AqueueError, OSError):
            await self.store.close()

    async def _round(self) -> float:
        """One look: lead or stand by, publish what is due; when to look again."""
        now = self.clock.now()
        if not self._synced:
            await self.store.connect()
            changed = await self.store.sync_code(
                {name: encode(spec) for name, spec in self._check().items()}, instant(now)
            )
            if changed:
                log.info("beat synced code entries: %s", ", ".join(sorted(changed)))
            self._synced = True
        if not await self._lead(now):
            return now + self._standby_poll
        version = await self.store.version()
        if version != self._version:
            await self._load()
        deadline = now + self.max_interval
        for name in sorted(self._entries):
            upcoming = await self._run_entry(self._entries[name])
            if not self.is_leader:
                return self.clock.now() + self._standby_poll
            if upcoming is not None:
                deadline = min(deadline, upcoming / MICROS)
        return min(deadline, self._next_renew)

    async def _lead(self, now: float) -> bool:
        """Take or renew the lease when due; whether this scheduler leads."""
        if self.is_leader and now < self._next_renew:
            return True
        try:
            held = await self.store.acquire(self.name, self.lease_seconds, now)
        except BaseException:
            if now >= self._lease_until:  # unreachable past the lease: surely not leading
                self.is_leader = False
            raise
        if held:
            if not self.is_leader:
                log.info("beat %s leads (lease %gs)", self.name, self.lease_seconds)
                self._version = -1  # whatever the last leader recorded: read it
            self._next_renew = now + self._renew_every
            self._lease_until = now + self.lease_seconds
        elif self.is_leader:
            log.warning("beat %s lost the lease: another scheduler leads", self.name)
        self.is_leader = held
        return held

    async def _still_leading(self) -> bool:
        """Renew first if the last renewal is a third of the lease old."""
        return await self._lead(self.clock.now())

    async def _load(self) -> None:
        snapshot = await self.store.snapshot()
        entries: dict[str, _Tracked] = {}
        for name, stored in snapshot.entries.items():
            try:
                entry = Entry.of(name, decode_spec(stored.spec))
                state = decode_state(stored.state)
            except (msgspec.DecodeError, msgspec.ValidationError, ConfigurationError) as exc:
                log.error("beat entry %r cannot be read, skipped: %s", name, exc)
                continue
            entries[name] = _Tracked(entry, stored.paused, stored.since, state)
        self._entries = entries
        self._version = snapshot.version

    async def _record(self, tracked: _Tracked, state: EntryState) -> bool:
        stored = await self.store.record(
            self.name, tracked.entry.name, encode(state), self.clock.now()
        )
        if stored:
            tracked.state = state
        else:  # the lease ran out (or the entry was removed meanwhile): look again
            self._version = -1
            self._next_renew = 0.0
            await self._still_leading()
        return stored

    async def _run_entry(self, tracked: _Tracked) -> int | None:
        """Publish the entry's due slots; its next slot (``None``: none to wait for)."""
        entry, state = tracked.entry, tracked.state
        if not entry.spec.enabled or tracked.paused:
            return None
        if state.pending:  # a misfire plan recorded by this or an earlier leader
            fire, cover = list(state.pending), state.last_slot
        else:
            due = plan(entry, state.last_slot, tracked.since, instant(self.clock.now()))
            if due.cover is None:
                return due.next
            fire, cover = due.fire, due.cover
            if due.late:
                note = (
                    f"misfire ({entry.spec.misfire}): {len(fire)} slot(s) run, "
                    f"{due.skipped} skipped"
                )
                log.warning("beat entry %r missed slots: %s", entry.name, note)
                state = replace(
                    state,
                    last_slot=cover,
                    pending=tuple(fire),
                    skipped=state.skipped + due.skipped,
                    note=note,
                )
                if not await self._record(tracked, state):
                    return None
        for slot in fire:
            if not await self._still_leading():
                return None
            state = await self._fire(entry, slot, state)
        state = replace(state, last_slot=cover, pending=())
        if not await self._record(tracked, state):
            return None
        return next_slot(entry, state.last_slot, tracked.since)

    async def _fire(self, entry: Entry, slot: int, state: EntryState) -> EntryState:
        """Publish one slot's task (or skip it by the overlap policy); the new state."""
        spec, app = entry.spec, self.app
        if spec.overlap == "skip" and await self._unfinished(state):
            log.info(
                "beat entry %r: slot %s skipped, its last run (%s) is unfinished",
                entry.name,
                _iso(slot),
                state.last_task_id,
            )
            note = f"overlap: slot {_iso(slot)} skipped, {state.last_task_id} unfinished"
            return replace(state, skipped=state.skipped + 1, note=note)
        task_id = slot_task_id(app.name, entry.name, slot)
        options = dict(spec.options)
        headers = {**options.pop("headers", {}), ENTRY_HEADER: entry.name, SLOT_HEADER: _iso(slot)}
        if spec.jitter:
            options["eta"] = slot / MICROS + jitter_delay(task_id, spec.jitter)
        try:
            await app.send_task(
                spec.task,
                spec.args,
                spec.kwargs,
                task_id=task_id,
                headers=headers,
                **options,
            )
        except (OptionError, MessageTooLarge, EncodeError, ConfigurationError) as exc:
            # the entry itself is at fault: sending it again cannot help
            log.error("beat entry %r: slot %s not sent: %s", entry.name, _iso(slot), exc)
            return replace(state, skipped=state.skipped + 1, note=f"error: {exc}")
        self.published += 1
        log.info(
            "beat sent %s (entry %r, slot %s) id %s", spec.task, entry.name, _iso(slot), task_id
        )
        return replace(
            state,
            last_task_id=task_id,
            last_task_slot=slot,
            last_sent_at=self.clock.now(),
            runs=state.runs + 1,
        )

    async def _unfinished(self, state: EntryState) -> bool:
        """Whether the entry's last task has not finished (by its stored result)."""
        if state.last_task_id is None:
            return False
        backend = await self.app.result_backend()
        raw = await backend.get(state.last_task_id)
        if raw is None:  # queued or running, unless its record expired long ago
            expires = self.app.conf.result_expires
            sent = state.last_sent_at
            return expires is None or sent is None or self.clock.now() - sent < expires
        return decode_result(raw).state not in READY_STATES


def _iso(slot: int) -> str:
    return from_instant(slot).isoformat()


def jitter_delay(task_id: str, jitter: float) -> float:
    """A delay in ``[0, jitter)`` derived from the task id: every scheduler picks the same."""
    return int(task_id.replace("-", "")[:8], 16) / 2**32 * jitter
