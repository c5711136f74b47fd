"""The monitoring event stream: Celery's events, told by workers and producers to monitors.

Workers started with ``-E`` (``worker_send_task_events``) tell what happens to each task
(``task-received``, ``-started``, ``-succeeded``, ``-failed``, ``-retried``, ``-revoked``,
``-rejected``) and to themselves (``worker-online``, ``-heartbeat`` every 2 s, ``-offline``);
producers with ``task_send_sent_event`` tell ``task-sent``. Every event has Celery's name,
fields and field types, so tools written for Celery's stream (and the dashboard to come)
read ours as they are. See docs/fleet.md, "Events".

The stream is the broker's ``events`` topic (:class:`~aqueue.core.protocols.Topics`): a log
capped at ``event_max_kept`` messages that any number of monitors read, each on its own,
and that a monitor starting late can catch up on (``since``). Nothing waits for a reader:
with nobody listening an event costs its share of one publish per batch.

What an event costs the worker (:class:`EventDispatcher`): when disabled, one attribute
check at each call site; when enabled, building a small struct and appending it to a
list. A background task publishes the list every 0.1 s (or at 500 events) in one call;
a failed publish is logged at most once a minute and its events dropped, so events never
fail, block or slow a task.

Arguments and results are not in events by default, as they are not in logs: ``args``,
``kwargs`` and ``result`` are left out of the event (a monitor shows them as unknown)
unless ``event_include_arguments`` is on; then they are Celery's reprs, cut at 1024
characters as Celery's ``argsrepr`` / ``resultrepr`` are. Exceptions and tracebacks are
always sent (the worker logs them too).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import itertools
import logging
import os
import platform
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..__about__ import __version__
from .context import current_request
from .errors import ConfigurationError
from .protocols import KeepsTopics, Subscription, Topics
from .serialization import SerializerName, decode

if TYPE_CHECKING:
    from .app import App
    from .message import MessageIn, MessageOut

log = logging.getLogger("aqueue.events")

#: the topic of the stream
EVENTS_TOPIC = "events"
#: Celery's ``sw_ident`` is ``py-celery``
SW_IDENT = "py-aqueue"
#: seconds between a worker's heartbeats (Celery's ``freq``)
HEARTBEAT_FREQ = 2.0
#: seconds events wait in a worker's buffer before they are published together
FLUSH_INTERVAL = 0.1
#: events that make a buffer publish at once, without waiting for the interval
FLUSH_EVERY = 500
#: events per message of the topic (the stream keeps ``event_max_kept`` / this messages)
EVENTS_PER_MESSAGE = 16
#: longest repr of arguments or a result (Celery's ``argsrepr_maxsize``, ``resultrepr_maxsize``)
REPR_MAX = 1024
#: seconds a publish of events may take before its events are dropped
PUBLISH_TIMEOUT = 5.0
#: seconds between two log lines about events that could not be published
ERROR_LOG_EVERY = 60.0

TASK_EVENT_TYPES = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
)
WORKER_EVENT_TYPES = ("worker-online", "worker-heartbeat", "worker-offline")
EVENT_TYPES = TASK_EVENT_TYPES + WORKER_EVENT_TYPES


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One monitoring event: Celery's fields, those its type has (the others are ``None``
    and left off the wire). Read fields as attributes or, like Celery's dict events, with
    ``event["uuid"]`` / ``event.get("result")``; :meth:`to_dict` gives Celery's dict.
    """

    #: ``task-sent``, ..., ``worker-offline``
    type: str
    #: unix time it happened, seconds
    timestamp: float
    #: the node that sent it (a worker's name; ``gen<pid>@<host>`` for a producer)
    hostname: str
    pid: int
    #: a counter per sending process (Celery's logical clock): orders one sender's events
    clock: int
    #: the sender's offset from UTC in hours, positive west of Greenwich (Celery's sign)
    utcoffset: int
    # -- tasks
    uuid: str | None = None
    name: str | None = None
    #: repr of the positional arguments (only with ``event_include_arguments``)
    args: str | None = None
    #: repr of the keyword arguments (only with ``event_include_arguments``)
    kwargs: str | None = None
    retries: int | None = None
    #: ISO 8601, UTC
    eta: str | None = None
    #: ISO 8601, UTC
    expires: str | None = None
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    #: repr of the value (only with ``event_include_arguments``)
    result: str | None = None
    #: seconds the task ran
    runtime: float | None = None
    #: repr of the exception, e.g. ``ValueError('boom')``
    exception: str | None = None
    traceback: str | None = None
    terminated: bool | None = None
    signum: int | None = None
    expired: bool | None = None
    requeue: bool | None = None
    #: aqueue's own: why a task was rejected (``unknown_task``, ``bad_arguments``,
    #: ``max_deliveries``, ``decode_error``, ``worker_error``) or revoked
    reason: str | None = None
    # -- workers
    freq: float | None = None
    sw_ident: str | None = None
    sw_ver: str | None = None
    sw_sys: str | None = None
    #: tasks running now
    active: int | None = None
    #: messages claimed since the worker started
    processed: int | None = None
    loadavg: list[float] | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self.__struct_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key``, or ``default`` when the event has no such field (or it is
        ``None``)."""
        value = getattr(self, key, None) if key in self.__struct_fields__ else None
        return default if value is None else value

    def to_dict(self) -> dict[str, Any]:
        """The event as Celery's dict: the fields it has."""
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event | list[Event])


def encode_event(event: Event) -> bytes:
    """One event on the wire: a JSON object (never pickle)."""
    return _encoder.encode(event)


def pack(events: Sequence[Event]) -> list[bytes]:
    """Events as topic messages: JSON arrays of up to ``EVENTS_PER_MESSAGE`` events each.

    Why several per message: a busy worker tells three events per task, and one broker
    append per event (a Redis ``XADD``) would cost the worker a quarter of its throughput.
    """
    step = EVENTS_PER_MESSAGE
    return [_encoder.encode(events[i : i + step]) for i in range(0, len(events), step)]


def unpack(body: bytes) -> list[Event]:
    """The events of one topic message (an object or an array of them); ``[]`` for bytes
    that hold no events (skipped by readers)."""
    try:
        decoded = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []
    return decoded if isinstance(decoded, list) else [decoded]


def messages_kept(event_max_kept: int) -> int:
    """The topic's cap in messages: never more than ``event_max_kept`` events kept (each
    message holds at most ``EVENTS_PER_MESSAGE``)."""
    return max(1, event_max_kept // EVENTS_PER_MESSAGE)


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

    def event(self, type_: str, **fields: Any) -> Event:
        return Event(
            type=type_,
            timestamp=time.time(),
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
    """``task-sent`` of each message."""
    return [
        stamp.event(
            "task-sent",
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
        self._stamps: dict[str, _Stamp] = {}
        self._errors = _ErrorLog()

    @property
    def enabled(self) -> bool:
        """Whether this app sends ``task-sent`` (``task_send_sent_event``)."""
        return self.app.conf.task_send_sent_event

    async def publish(self, messages: Sequence[MessageOut]) -> None:
        """Tell ``task-sent`` for ``messages``, which were just published. Never raises."""
        if not messages:
            return
        request = current_request()  # sent by a task: the worker it runs on sent it
        hostname = (request.hostname if request is not None else None) or producer_hostname()
        stamp = self._stamps.get(hostname)
        if stamp is None:
            stamp = self._stamps[hostname] = _Stamp(hostname)
        conf = self.app.conf
        try:
            bodies = pack(sent_events(stamp, messages, conf.event_include_arguments))
            topics = await topics_of(self.app)
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await topics.publish(EVENTS_TOPIC, bodies, cap=messages_kept(conf.event_max_kept))
        except Exception as exc:
            self._errors.failed(exc, len(messages))


async def topics_of(app: App) -> Topics:
    """The connected broker's topics.

    Raises:
        ConfigurationError: the broker carries no topics, so no events.
    """
    broker = await app.connected_broker()
    if not isinstance(broker, KeepsTopics):
        raise ConfigurationError(
            f"broker {type(broker).__name__} has no topics (aqueue.core.protocols.Topics): "
            "it carries no monitoring events"
        )
    return broker.topics


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
            args, kwargs = _raw_arguments(msg, fmt)
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


def _raw_arguments(msg: MessageIn, fmt: SerializerName) -> tuple[Any, Any]:
    """A received message's arguments, for their repr (``None`` where they cannot be read:
    the worker refuses such a message itself)."""
    try:
        args = decode(msg.args, Any, fmt) if len(msg.args) else ()
        kwargs = decode(msg.kwargs, Any, fmt) if len(msg.kwargs) else {}
    except Exception:
        return None, None
    return args, kwargs


# -- reading ----------------------------------------------------------------------------


class EventStream:
    """``app.events()``: the events of the stream, as they come.

    ``async for event in app.events(): ...`` reads until the loop ends; breaking out (or
    ``aclose()``) ends the subscription. With ``since`` (unix time), the events still kept
    that happened from then on come first. ``types`` keeps only events whose type matches
    one of its globs (``"task-*"``, ``"worker-heartbeat"``).
    """

    def __init__(
        self,
        app: App,
        *,
        since: float | None = None,
        types: str | Sequence[str] | None = None,
        poll: float = 1.0,
    ) -> None:
        self.app = app
        self.since = since
        self.types = [types] if isinstance(types, str) else list(types or ())
        self._poll = poll
        self._sub: Subscription | None = None
        self._pending: list[Event] = []
        self._closed = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._pending:
                return self._pending.pop(0)
            if self._closed:
                raise StopAsyncIteration
            batch = await self.next_batch(self._poll)
            self._pending.extend(batch)

    async def subscribe(self) -> None:
        """Start reading now (done by the first read): nothing published later is missed.

        Raises:
            ConfigurationError: the broker carries no topics, so no events.
        """
        if self._sub is None:
            topics = await topics_of(self.app)
            self._sub = await topics.subscribe(EVENTS_TOPIC, since=self.since)

    async def next_batch(self, timeout: float) -> list[Event]:
        """The events that came next (those ``types`` keeps); ``[]`` after ``timeout``."""
        await self.subscribe()
        assert self._sub is not None
        try:
            bodies = await self._sub.get(timeout)
        except BaseException:
            await self.aclose()
            raise
        events = [e for body in bodies for e in unpack(body)]
        if self.types:
            events = [e for e in events if matches(e.type, self.types)]
        return events

    async def aclose(self) -> None:
        """End the subscription. Idempotent."""
        self._closed = True
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.close()

    async def __aenter__(self) -> EventStream:
        await self.subscribe()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def matches(type_: str, patterns: Sequence[str]) -> bool:
    """Whether an event type matches one of ``patterns`` (globs)."""
    return any(fnmatch.fnmatchcase(type_, p) for p in patterns)


async def iterate(stream: EventStream) -> AsyncGenerator[Event, None]:
    """``stream`` as an async generator, closing its subscription when the loop ends."""
    try:
        async for event in stream:
            yield event
    finally:
        await stream.aclose()
