"""What the dashboard knows: tasks and workers, built from the monitoring event stream.

Like Celery's ``events.state.State`` (which Flower reads): one :class:`TaskInfo` per task id
and one :class:`WorkerInfo` per node name, updated by every event. At start the model
catches up on what the stream still keeps (``since``), then follows it live. Memory is
bounded: past ``max_tasks`` the least recently updated tasks are forgotten.

Events do not carry everything: a task whose events were trimmed, or that finished before
anyone sent events, is read from the result backend on demand (:meth:`State.task_info`),
and workers come from the registry as well as from their heartbeats.

Arguments, keyword arguments and results are kept as the events give them (reprs, and only
when workers send them: ``event_include_arguments``); whether they are *shown* is the
web layer's choice (``show_arguments``), never this model's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from aqueue.core import states

if TYPE_CHECKING:
    from aqueue.core.app import App
    from aqueue.core.events import Event

log = logging.getLogger("aqueue.web")

#: the state a task event puts a task in (Celery's and Flower's names)
EVENT_STATES: dict[str, str] = {
    "task-sent": states.PENDING,
    "task-received": states.RECEIVED,
    "task-started": states.STARTED,
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-retried": states.RETRY,
    "task-revoked": states.REVOKED,
    "task-rejected": "REJECTED",
}

#: the ``TaskInfo`` field that records when each event came (Flower's names)
EVENT_TIMES: dict[str, str] = {
    "task-sent": "sent",
    "task-received": "received",
    "task-started": "started",
    "task-succeeded": "succeeded",
    "task-failed": "failed",
    "task-retried": "retried",
    "task-revoked": "revoked",
    "task-rejected": "rejected",
}

#: states after which no later non-final event moves the task back (an event of the next
#: attempt, after a retry, still does: RETRY is not final)
FINAL_STATES = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED, "REJECTED"})

#: fields copied from a task event when it carries them
_COPIED = (
    "name",
    "args",
    "kwargs",
    "retries",
    "eta",
    "expires",
    "exchange",
    "routing_key",
    "root_id",
    "parent_id",
    "result",
    "runtime",
    "exception",
    "traceback",
)

#: events kept per task for its timeline (a task retried many times keeps its first ones)
MAX_TIMELINE = 100

#: the fields that hold a task's data, hidden unless the dashboard shows arguments
ARGUMENT_FIELDS = ("args", "kwargs", "result")


@dataclass(slots=True)
class TaskInfo:
    """One task, with the fields (names and types) of Flower's ``/api/task/info``."""

    uuid: str
    name: str | None = None
    state: str = states.PENDING
    received: float | None = None
    sent: float | None = None
    started: float | None = None
    rejected: float | None = None
    succeeded: float | None = None
    failed: float | None = None
    retried: float | None = None
    revoked: float | None = None
    args: str | None = None
    kwargs: str | None = None
    eta: str | None = None
    expires: str | None = None
    retries: int | None = None
    worker: str | None = None
    result: str | None = None
    exception: str | None = None
    timestamp: float | None = None
    runtime: float | None = None
    traceback: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    clock: int | None = None
    client: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    children: list[str] = field(default_factory=list)
    queue: str | None = None
    #: (event type, unix time, node) in the order they came: the task page's timeline
    timeline: list[tuple[str, float, str]] = field(default_factory=list)

    def as_dict(self, *, show_arguments: bool) -> dict[str, Any]:
        """Flower's task dict: its field names, ``root``/``parent`` as ids (Flower
        serialises them so), argument fields ``None`` unless ``show_arguments``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("timeline", "queue"):
                continue
            out[f.name] = getattr(self, f.name)
        out["children"] = list(self.children)
        out["root"] = self.root_id
        out["parent"] = self.parent_id
        if not show_arguments:
            for name in ARGUMENT_FIELDS:
                out[name] = None
        return out


@dataclass(slots=True)
class WorkerInfo:
    """One worker as its events show it (the registry and inspect add the rest)."""

    hostname: str
    pid: int | None = None
    online: bool = False
    last_heartbeat: float | None = None
    freq: float = 2.0
    active: int | None = None
    processed: int | None = None
    loadavg: list[float] | None = None
    sw_ident: str | None = None
    sw_ver: str | None = None
    sw_sys: str | None = None

    def alive(self, now: float | None = None) -> bool:
        """Celery's rule: online, with a heartbeat less than two intervals old (plus a
        second of slack)."""
        if not self.online or self.last_heartbeat is None:
            return False
        return (now or time.time()) - self.last_heartbeat < self.freq * 2 + 1


class State:
    """Tasks and workers from the event stream; :meth:`run` keeps it up to date.

    ``changes`` counts every applied event, and :meth:`wait_change` lets the live endpoint
    wait for the next one without polling.
    """

    def __init__(self, app: App, *, max_tasks: int = 10_000, catch_up: float = 3600.0) -> None:
        self.app = app
        self.max_tasks = max_tasks
        self.catch_up = catch_up
        self.tasks: OrderedDict[str, TaskInfo] = OrderedDict()
        self.workers: dict[str, WorkerInfo] = {}
        self.counts: dict[str, int] = {}
        #: children seen before their parent (events of two processes can cross): linked
        #: when the parent's first event comes
        self._orphans: OrderedDict[str, list[str]] = OrderedDict()
        #: unix times of the last minute's finished tasks (throughput)
        self._done: deque[float] = deque()
        self._failed: deque[float] = deque()
        self.changes = 0
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        #: why events cannot be read, shown on every page (None: reading them)
        self.problem: str | None = None
        self.events_seen = 0

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Start following the stream in this event loop (idempotent)."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self.run(), name="aqueue-web-state")

    async def stop(self) -> None:
        """Stop following the stream."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def run(self) -> None:
        """Catch up on the events kept from ``catch_up`` seconds ago, then follow them;
        a broken stream is read again (from where it broke) after a pause."""
        since = time.time() - self.catch_up
        delay = 0.5
        while True:
            try:
                stream = self.app.events(since=since)
                try:
                    self.problem = None
                    async for event in stream:
                        since = event.timestamp
                        self.apply(event)
                        delay = 0.5
                finally:
                    await stream.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.problem = f"cannot read events: {type(exc).__name__}: {exc}"
                log.warning("dashboard: %s; trying again in %.1fs", self.problem, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def wait_change(self, seen: int, timeout: float) -> int:
        """Wait until ``changes`` moves past ``seen`` (or ``timeout``); the new count."""
        if self.changes != seen:
            return self.changes
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        return self.changes

    # -- applying events --------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Update the model with one event (task or worker)."""
        self.events_seen += 1
        if event.type.startswith("task-"):
            self._apply_task(event)
        elif event.type.startswith("worker-"):
            self._apply_worker(event)
        else:
            return
        self.changes += 1
        self._changed.set()

    def _task(self, task_id: str) -> TaskInfo:
        task = self.tasks.get(task_id)
        if task is None:
            task = self.tasks[task_id] = TaskInfo(uuid=task_id)
            task.children.extend(self._orphans.pop(task_id, ()))
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(task_id)
        return task

    def _apply_task(self, event: Event) -> None:
        if event.uuid is None:
            return
        task = self._task(event.uuid)
        kind = event.type
        when = event.timestamp
        if len(task.timeline) < MAX_TIMELINE:
            task.timeline.append((kind, when, event.hostname))
        at = EVENT_TIMES.get(kind)
        if at is not None:
            setattr(task, at, when)
        for name in _COPIED:
            value = getattr(event, name)
            if value is not None:
                setattr(task, name, value)
        if event.queue is not None:
            task.queue = event.queue
        if kind == "task-sent":
            task.client = event.hostname
        else:
            task.worker = event.hostname
        task.clock = event.clock
        new = EVENT_STATES.get(kind)
        if new is not None and (task.state not in FINAL_STATES or new in FINAL_STATES):
            task.state = new
            task.timestamp = when
        if new in FINAL_STATES:
            self.counts[new] = self.counts.get(new, 0) + 1
            self._done.append(when)
            if new == states.FAILURE:
                self._failed.append(when)
        if task.parent_id and task.parent_id != task.uuid:
            parent = self.tasks.get(task.parent_id)
            if parent is None:
                waiting = self._orphans.setdefault(task.parent_id, [])
                if task.uuid not in waiting:
                    waiting.append(task.uuid)
                while len(self._orphans) > self.max_tasks:
                    self._orphans.popitem(last=False)
            elif task.uuid not in parent.children:
                parent.children.append(task.uuid)

    def _apply_worker(self, event: Event) -> None:
        worker = self.workers.get(event.hostname)
        if worker is None:
            worker = self.workers[event.hostname] = WorkerInfo(hostname=event.hostname)
        worker.pid = event.pid
        worker.online = event.type != "worker-offline"
        worker.last_heartbeat = event.timestamp
        if event.freq:
            worker.freq = event.freq
        for name in ("active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"):
            value = getattr(event, name)
            if value is not None:
                setattr(worker, name, value)

    # -- reading ------------------------------------------------------------------------------

    def throughput(self, window: float = 60.0) -> tuple[float, int]:
        """(tasks finished a second, failures) over the last ``window`` seconds."""
        cutoff = time.time() - window
        for times in (self._done, self._failed):
            while times and times[0] < cutoff:
                times.popleft()
        return len(self._done) / window, len(self._failed)

    def iter_tasks(self) -> Iterator[TaskInfo]:
        """Tasks, most recently updated first."""
        return reversed(list(self.tasks.values()))

    def task_names(self) -> list[str]:
        """Every task name seen."""
        return sorted({t.name for t in self.tasks.values() if t.name})

    def state_counts(self) -> dict[str, int]:
        """How many tasks the model holds in each state."""
        out: dict[str, int] = {}
        for t in self.tasks.values():
            out[t.state] = out.get(t.state, 0) + 1
        return out

    async def task_info(self, task_id: str) -> TaskInfo | None:
        """The task as events show it, completed from the result backend (its state when
        the events of its end were missed, result, traceback, children); ``None`` when
        neither knows it."""
        task = self.tasks.get(task_id)
        record = await self._read_result(task_id)
        if record is None:
            return task
        if task is None:
            task = TaskInfo(uuid=task_id)
        stored_state, name, result, traceback, worker, retries, children, done = record
        if stored_state != states.PENDING and (
            task.state not in FINAL_STATES or stored_state in FINAL_STATES
        ):
            task.state = stored_state
        task.name = task.name or name
        if task.result is None and result is not None:
            task.result = result
        task.traceback = task.traceback or traceback
        task.worker = task.worker or worker
        if task.retries is None:
            task.retries = retries
        for child in children:
            if child not in task.children:
                task.children.append(child)
        if task.timestamp is None:
            task.timestamp = done
        return task

    async def _read_result(
        self, task_id: str
    ) -> (
        tuple[str, str | None, str | None, str | None, str | None, int, list[str], float | None]
        | None
    ):
        """The stored record's fields, or ``None`` (no backend, no record, unreadable)."""
        if self.app.backend_url is None:
            return None
        handle = self.app.AsyncResult(task_id)
        try:
            stored = await handle.state()
            if stored == states.PENDING:
                return None
            value = handle.result
            result = repr(value) if stored == states.SUCCESS else None
            children = [c.id for c in handle.children]
            done = handle.date_done
        except Exception as exc:
            log.debug("dashboard: result of %s unreadable (%s)", task_id, type(exc).__name__)
            return None
        return (
            stored,
            handle.name,
            result,
            handle.traceback,
            handle.worker,
            handle.retries,
            children,
            done.timestamp() if done is not None else None,
        )
