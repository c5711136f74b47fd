"""Sending monitoring events: the worker's batching dispatcher, and producers' ``task-sent``.

What an event costs the worker (:class:`EventDispatcher`): when disabled, one attribute
check at each call site; when enabled, building a small struct and appending it to a
list. A background task publishes the list every 0.1 s (or at 500 events) in one call,
16 events to a topic message; a failed publish is logged at most once a minute and its
events dropped, so events never fail, block or slow a task.

Arguments and results are not in events by default, as they are not in logs: ``args``,
``kwargs`` and ``result`` are left out of the event (a monitor shows them as unknown)
unless ``event_include_arguments`` is on; then they are Celery's reprs, cut at 1024
characters as Celery's ``argsrepr`` / ``resultrepr`` are. Exceptions and tracebacks are
always sent (the worker logs them too). The event and its wire form: ``events.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import platform
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..__about__ import __version__
from .events import (
    EVENTS_TOPIC,
    HEARTBEAT_FREQ,
    REPR_MAX,
    SW_IDENT,
    Event,
    messages_kept,
    pack,
    topics_of,
)
from .protocols import Topics
from .serialization import SerializerName, decode

if TYPE_CHECKING:
    from .app import App
    from .message import MessageIn, MessageOut

log = logging.getLogger("aqueue.events")

#: seconds events wait in a worker's buffer before they are published together
FLUSH_INTERVAL = 0.1
#: events that make a buffer publish at once, without waiting for the interval
FLUSH_EVERY = 500
#: seconds a publish of events may take before its events are dropped
PUBLISH_TIMEOUT = 5.0
#: seconds between two log lines about events that could not be published
ERROR_LOG_EVERY = 60.0


# -- building events --------------------------------------------------------------------


def utcoffset() -> int:
    """Hours west of UTC, as Celery gives ``utcoffset`` (its sign, daylight saving included)."""
    if time.localtime().tm_isdst > 0:
        return time.altzone // 3600
    return time.timezone // 3600


def producer_hostname() -> str:
    """Celery's name for a sender that is no worker: ``gen<pid>@<host>``."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def bounded_repr(value: Any, limit: int = REPR_MAX) -> str:
    """``repr(value)`` cut at ``limit`` characters (``...`` marks the cut); never raises."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__}: repr() raised>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iso(timestamp: float | None) -> str | None:
    """A unix time as Celery sends ``eta`` and ``expires``: ISO 8601 with its offset."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


class _Stamp:
    """What every event of one sender carries: its name, pid, clock and offset."""

    #: one clock per process, as Celery's logical clock is per app
    _clock = itertools.count(1)

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.pid = os.getpid()
        self.utcoffset = utcoffset()

    def event(self, type_: str, at: float | None = None, **fields: Any) -> Event:
        return Event(
            type=type_,
            timestamp=time.time() if at is None else at,
            hostname=self.hostname,
            pid=self.pid,
            clock=next(self._clock),
            utcoffset=self.utcoffset,
            **fields,
        )


def _task_fields(
    msg: MessageIn | MessageOut, args: Any, kwargs: Any, with_arguments: bool
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "uuid": msg.id,
        "name": msg.task,
        "retries": msg.retries,
        "eta": iso(msg.eta),
        "expires": iso(msg.expires),
        "root_id": msg.root_id or msg.id,
        "parent_id": msg.parent_id,
    }
    if with_arguments:
        fields["args"] = bounded_repr(tuple(args) if args is not None else ())
        fields["kwargs"] = bounded_repr(dict(kwargs) if kwargs is not None else {})
    return fields


def sent_events(stamp: _Stamp, messages: Iterable[MessageOut], with_arguments: bool) -> list[Event]:
    """``task-sent`` of each message, stamped with its envelope's ``sent_at``: taken before
    the publish, so a monitor ordering a task's events by timestamp never finds its
    ``task-sent`` after the worker's ``task-received`` (stamped once it has the message,
    maybe before the publish returns to the sender)."""
    return [
        stamp.event(
            "task-sent",
            msg.sent_at or None,
            queue=msg.queue,
            exchange=msg.exchange,
            routing_key=msg.routing_key or msg.queue,
            **_task_fields(msg, msg.args, msg.kwargs, with_arguments),
        )
        for msg in messages
    ]


# -- producers: task-sent ---------------------------------------------------------------


class _ErrorLog:
    """Logs a failure to publish events at most once a minute (events are dropped)."""

    def __init__(self) -> None:
        self._last = -ERROR_LOG_EVERY
        self.dropped = 0

    def failed(self, exc: BaseException, count: int) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._last >= ERROR_LOG_EVERY:
            self._last = now
            log.warning(
                "could not publish %d monitoring event(s) (%s: %s); they are dropped "
                "(%d so far; logged at most once a minute)",
                count,
                type(exc).__name__,
                exc,
                self.dropped,
            )


class SentEvents:
    """``task-sent`` for a producer (``task_send_sent_event``): ``app.sent_events``.

    Published as soon as the task messages are, in one call per send (a bulk send: one for
    all), so a monitor sees ``task-sent`` before the worker's ``task-received`` (whose
    buffer waits at least ``FLUSH_INTERVAL``). A failure is logged and the events dropped:
    the send itself has succeeded and never fails because of them.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self._stamp: _Stamp | None = None
        self._errors = _ErrorLog()

    @property
    def enabled(self) -> bool:
        """Whether this app sends ``task-sent`` (``task_send_sent_event``)."""
        return self.app.conf.task_send_sent_event

    async def publish(self, messages: Sequence[MessageOut]) -> None:
        """Tell ``task-sent`` for ``messages``, which were just published. Never raises."""
        if not messages:
            return
        stamp = self._stamp
        if stamp is None or stamp.pid != os.getpid():  # a forked child is another sender
            # Celery's producer name, for a worker sending a task (a chain's next step) too
            stamp = self._stamp = _Stamp(producer_hostname())
        conf = self.app.conf
        try:
            bodies = pack(sent_events(stamp, messages, conf.event_include_arguments))
            topics = await topics_of(self.app)
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await topics.publish(EVENTS_TOPIC, bodies, cap=messages_kept(conf.event_max_kept))
        except Exception as exc:
            self._errors.failed(exc, len(messages))


# -- workers: the buffered dispatcher ---------------------------------------------------


class EventDispatcher:
    """A worker's events: appended by the executor, published in batches.

    Call sites check :attr:`enabled` first (the whole cost when disabled). ``enable()`` and
    ``disable()`` switch at run time (remote control's ``enable_events``); enabling a
    started worker tells ``worker-online``.

    Args:
        app: the worker's app (its broker's topics, its settings).
        hostname: the worker's node name.
        enabled: send events from the start (``-E`` / ``worker_send_task_events``).
        stats: the worker's ``(active, processed)`` for its heartbeats.
    """

    def __init__(
        self,
        app: App,
        hostname: str,
        *,
        enabled: bool,
        stats: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.with_arguments = app.conf.event_include_arguments
        self._cap = messages_kept(app.conf.event_max_kept)
        self._stamp = _Stamp(hostname)
        self._stats = stats
        self._buffer: list[Event] = []
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._errors = _ErrorLog()
        self._flusher: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None
        self._topics: Topics | None = None
        #: events published so far
        self.published = 0

    @property
    def dropped(self) -> int:
        """Events that could not be published (the broker failed, or had no topics)."""
        return self._errors.dropped

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start publishing in the background (and beating); ``worker-online`` if enabled."""
        if self._flusher is not None:
            return
        self._flusher = asyncio.create_task(self._flush_forever(), name="aqueue-events")
        self._heart = asyncio.create_task(self._beat_forever(), name="aqueue-event-heartbeat")
        if self.enabled:
            self._worker_event("worker-online")

    async def close(self) -> None:
        """``worker-offline`` if enabled, publish what is buffered, stop."""
        if self._flusher is None:
            return
        if self.enabled:
            self._worker_event("worker-offline")
        for task in (self._heart, self._flusher):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        self._heart = self._flusher = None
        await self.flush()

    def enable(self) -> None:
        """Send events from now on (``worker-online`` first, when the worker runs)."""
        if self.enabled:
            return
        self.enabled = True
        if self._flusher is not None:
            self._worker_event("worker-online")

    def disable(self) -> None:
        """Send no more events (those buffered are still published)."""
        self.enabled = False

    # -- the hot path: build and append -------------------------------------------------

    def _add(self, event: Event) -> None:
        buffer = self._buffer
        buffer.append(event)
        if len(buffer) == 1:
            self._wake.set()
        elif len(buffer) >= FLUSH_EVERY:
            self._full.set()

    def received(self, msg: MessageIn, fmt: SerializerName) -> None:
        args = kwargs = None
        if self.with_arguments:
            args, kwargs = raw_arguments(msg, fmt)
        self._add(
            self._stamp.event(
                "task-received", **_task_fields(msg, args, kwargs, self.with_arguments)
            )
        )

    def started(self, task_id: str) -> None:
        self._add(self._stamp.event("task-started", uuid=task_id))

    def succeeded(self, task_id: str, value: Any, runtime: float) -> None:
        result = bounded_repr(value) if self.with_arguments else None
        self._add(self._stamp.event("task-succeeded", uuid=task_id, result=result, runtime=runtime))

    def failed(self, task_id: str, exception: str, traceback: str) -> None:
        self._add(
            self._stamp.event("task-failed", uuid=task_id, exception=exception, traceback=traceback)
        )

    def retried(self, task_id: str, exception: str, traceback: str) -> None:
        self._add(
            self._stamp.event(
                "task-retried", uuid=task_id, exception=exception, traceback=traceback
            )
        )

    def revoked(self, task_id: str, *, terminated: bool, expired: bool, reason: str) -> None:
        self._add(
            self._stamp.event(
                "task-revoked",
                uuid=task_id,
                terminated=terminated,
                expired=expired,
                reason=reason,
            )
        )

    def rejected(self, task_id: str, reason: str) -> None:
        self._add(self._stamp.event("task-rejected", uuid=task_id, requeue=False, reason=reason))

    def _worker_event(self, type_: str) -> None:
        active, processed = self._stats()
        self._add(
            self._stamp.event(
                type_,
                freq=HEARTBEAT_FREQ,
                sw_ident=SW_IDENT,
                sw_ver=__version__,
                sw_sys=platform.system(),
                active=active,
                processed=processed,
                loadavg=_loadavg(),
            )
        )

    # -- publishing ---------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            # a batch collects for the interval (or until full): one publish for all of it
            try:
                async with asyncio.timeout(FLUSH_INTERVAL):
                    await self._full.wait()
            except TimeoutError:
                pass
            await self.flush()

    async def flush(self) -> None:
        """Publish what is buffered now, in one call. Never raises (but cancellation)."""
        batch, self._buffer = self._buffer, []
        self._wake.clear()
        self._full.clear()
        if not batch:
            return
        try:
            bodies = pack(batch)
            if self._topics is None:
                self._topics = await topics_of(self.app)
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self._topics.publish(EVENTS_TOPIC, bodies, cap=self._cap)
        except Exception as exc:
            self._errors.failed(exc, len(batch))
        else:
            self.published += len(batch)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_FREQ)
            if self.enabled:
                self._worker_event("worker-heartbeat")


def raw_arguments(msg: MessageIn, fmt: SerializerName) -> tuple[Any, Any]:
    """A received message's arguments, for their repr in events and ``inspect`` (``None``
    where they cannot be read: the worker refuses such a message itself)."""
    try:
        args = decode(msg.args, Any, fmt) if len(msg.args) else ()
        kwargs = decode(msg.kwargs, Any, fmt) if len(msg.kwargs) else {}
    except Exception:
        return None, None
    return args, kwargs
