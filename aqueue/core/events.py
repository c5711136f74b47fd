"""The monitoring event stream: Celery's events, told by workers and producers to monitors.

Workers started with ``-E`` (``worker_send_task_events``) tell what happens to each task
(``task-received``, ``-started``, ``-succeeded``, ``-failed``, ``-retried``, ``-revoked``,
``-rejected``) and to themselves (``worker-online``, ``-heartbeat`` every 2 s, ``-offline``);
producers with ``task_send_sent_event`` tell ``task-sent``. Every event has Celery's name,
fields and field types, so tools written for Celery's stream (and the dashboard to come)
read ours as they are. See docs/fleet.md, "Events".

The stream is the broker's ``events`` topic (:class:`~aqueue.core.protocols.Topics`): a log
capped at ``event_max_kept`` events that any number of monitors read, each on its own,
and that a monitor starting late can catch up on (``since``). Nothing waits for a reader:
with nobody listening an event costs its share of one publish per batch.

This module is the event itself (:class:`Event`), its wire form (JSON, up to 16 events to
a topic message) and the reading side (``app.events()``, :class:`EventStream`); sending is
``emitting.py`` (the worker's batching :class:`~aqueue.core.emitting.EventDispatcher`, and
producers' ``task-sent``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import ConfigurationError, SubscriptionClosed
from .protocols import KeepsTopics, Subscription, Topics

if TYPE_CHECKING:
    from .app import App

#: the topic of the stream
EVENTS_TOPIC = "events"
#: Celery's ``sw_ident`` is ``py-celery``
SW_IDENT = "py-aqueue"
#: seconds between a worker's heartbeats (Celery's ``freq``)
HEARTBEAT_FREQ = 2.0
#: events per message of the topic (the stream keeps ``event_max_kept`` / this messages)
EVENTS_PER_MESSAGE = 16
#: longest repr of arguments or a result (Celery's ``argsrepr_maxsize``, ``resultrepr_maxsize``)
REPR_MAX = 1024

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
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return []
    return decoded if isinstance(decoded, list) else [decoded]


def messages_kept(event_max_kept: int) -> int:
    """The topic's cap in messages: never more than ``event_max_kept`` events kept (each
    message holds at most ``EVENTS_PER_MESSAGE``)."""
    return max(1, event_max_kept // EVENTS_PER_MESSAGE)


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
        except SubscriptionClosed:  # the broker closed (the app did): the stream ends
            await self.aclose()
            return []
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
