"""``rpc://`` result backend: results pushed to a reply queue of the process that sent the task.

Celery's "rpc" backend on RabbitMQ. Each backend object (one per client process and event
loop) declares one exclusive, auto-delete reply queue ``<prefix>.reply.<uuid>`` and consumes
it with one consumer; every message it sends carries that queue's name in the header
``x-aqueue-reply-to`` (the app merges :meth:`RPCBackend.reply_headers` into each message).
A worker learns where a task's records go when it starts handling its message
(:meth:`RPCBackend.observe`, called by the executor) and publishes each record there through
the default exchange, transient, unconfirmed and ``mandatory``. A record RabbitMQ returns
means its reply queue is gone (the sender exited, e.g. a web request that enqueued and moved
on): the queue is logged once and remembered, and its later records are dropped without
being sent (see :class:`GoneQueues`). The receiving process keeps the records it
received in a bounded in-memory cache (fenced by attempt, like every backend), which
``get`` / ``get_many`` / ``watch`` read; watchers of many tasks share the one consumer.

Limits (docs/brokers/rabbitmq.md, "Results over rpc://"):

* only the process that sent a task can wait for it; ``app.AsyncResult(id)`` elsewhere
  never completes;
* results are transient: lost if the caller is not connected when they arrive, and
  forgotten when it exits;
* revocations, canvases (chains, groups, chords, ``GroupResult.save``) and workers'
  de-duplication of redelivered tasks need a shared backend (``backend="redis://..."``):
  revoking, applying a canvas or joining a chord raises :class:`ConfigurationError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
)
from aiormq.abc import DeliveredMessage

from ..brokers.rabbitmq_link import AMQP_ERRORS, LoopEndClose, hear_returns
from ..brokers.rabbitmq_topology import CONTENT_TYPE, RabbitSettings, parse_settings
from ..core import states
from ..core.control import REVOKE_FENCE
from ..core.errors import BrokerError, ConfigurationError
from ..core.urls import redact

log = logging.getLogger("aqueue.backend.rpc")

#: message header naming the reply queue a task's records go to
REPLY_HEADER = "x-aqueue-reply-to"
_STATE_HEADER = "x-aqueue-state"
_ATTEMPT_HEADER = "x-aqueue-attempt"
#: only queues named like the ones this backend declares are ever published to
_REPLY_NAME = re.compile(r"\.reply\.[0-9a-f]{32}\Z")
#: settings of the AMQP URL that apply to the reply connection; the others are the broker's
_AMQP_OPTIONS = frozenset({"prefix", "heartbeat", "connect_timeout", "operation_timeout"})
_OWN_OPTIONS = ("cache_size", "routes_size")
_SHARED = 'a shared result backend, e.g. backend="redis://localhost:6379/0"'
#: AMQP delivery mode of a record: transient (results live in the receiver's memory only)
_TRANSIENT = 1


@dataclass(slots=True)
class _Entry:
    state: str
    attempt: int
    body: bytes


class GoneQueues:
    """Reply queues RabbitMQ returned a record for: their process is gone, so their records
    are dropped instead of sent (each would be routed nowhere and returned, costing the
    worker and RabbitMQ more than the task itself).

    A reply queue also vanishes for a moment while its process reconnects (it is declared
    again under the same name), so "gone" is not forever: once ``recheck`` seconds have
    passed since the last return, the next record is sent as a probe, and if RabbitMQ does
    not return it within ``grace`` seconds the queue counts as alive again. A gone queue
    therefore costs one publish per ``recheck + grace`` seconds, and a process whose reply
    queue came back loses at most that long of records beyond the outage itself.
    """

    #: seconds after a return during which records for the queue are dropped
    recheck = 2.0
    #: seconds a probe has to come back before the queue counts as alive again
    grace = 0.5

    def __init__(self, max_queues: int = 10_000) -> None:
        #: queue -> (drop its records until this monotonic time, whether a probe is out)
        self._until: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._logged: OrderedDict[str, None] = OrderedDict()
        self._max = max_queues

    def __bool__(self) -> bool:
        return bool(self._until)

    def returned(self, queue: str, now: float) -> bool:
        """RabbitMQ returned a record for ``queue``; ``True`` the first time (log it)."""
        self._until[queue] = (now + self.recheck, False)
        self._until.move_to_end(queue)
        while len(self._until) > self._max:
            self._until.popitem(last=False)
        if queue in self._logged:
            return False
        self._logged[queue] = None
        while len(self._logged) > self._max:
            self._logged.popitem(last=False)
        return True

    def sendable(self, queue: str, now: float) -> bool:
        """Whether a record for ``queue`` should be published now."""
        entry = self._until.get(queue)
        if entry is None:
            return True
        until, probing = entry
        if now < until:
            return False
        if probing:  # the probe was not returned: the queue exists again
            del self._until[queue]
        else:  # this record is the probe
            self._until[queue] = (now + self.grace, True)
        return True


class RPCBackend:
    """Results over RabbitMQ reply queues; ``rpc://`` or ``rpc://user:password@host:port/vhost``.

    Args:
        url: ``rpc://`` uses the broker's RabbitMQ (its ``amqp://`` / ``amqps://`` URL, with
            its ``prefix``); ``rpc://user:password@host:port/vhost`` names one explicitly.
            Query parameters of either form may set the options below.
        broker_url: the app's broker URL (the app passes it; needed for bare ``rpc://``).
        cache_size: most records kept in this process (least recently used dropped first);
            default 10000.
        routes_size: most task ids a worker remembers the reply queue of; default 100000.
        prefix, heartbeat, connect_timeout, operation_timeout: as for the RabbitMQ broker.
    """

    def __init__(self, url: str = "rpc://", *, broker_url: str | None = None, **options: Any):
        self.url = url
        amqp_url, query = _amqp_url(url, broker_url)
        merged: dict[str, Any] = {**query, **options}
        self._cache_size = _positive(merged.pop("cache_size", 10000), "cache_size")
        self._routes_size = _positive(merged.pop("routes_size", 100000), "routes_size")
        amqp_options = {k: v for k, v in merged.items() if k in _AMQP_OPTIONS}
        for key in sorted(set(merged) - _AMQP_OPTIONS):
            log.debug("rpc:// backend ignores option %r", key)
        self._settings: RabbitSettings = parse_settings(amqp_url, amqp_options)
        #: this process's reply queue; stable across reconnections
        self.reply_queue = f"{self._settings.prefix}.reply.{uuid.uuid4().hex}"
        self._password = urlsplit(self._settings.client_url).password
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._routes: OrderedDict[str, str] = OrderedDict()
        self._watchers: dict[str, set[asyncio.Queue[bytes]]] = {}
        self._conn: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        #: the channel's aiormq channel, which records are published on
        self._raw: aiormq.Channel | None = None
        #: publish ``mandatory`` (RabbitMQ returns what it cannot route) only where the
        #: returns are heard (:func:`hear_returns`); otherwise RabbitMQ drops them silently
        self._mandatory = False
        self.gone = GoneQueues()
        #: records dropped because their reply queue is gone
        self.dropped = 0
        self._lost: asyncio.Event | None = None
        self._up: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._loop_end = LoopEndClose(self.close, self._settings.operation_timeout)

    def __repr__(self) -> str:
        return f"<RPCBackend {redact(self.url)} via {self._settings.redacted}>"

    # -- hooks the app and the executor call --------------------------------------------

    def reply_headers(self) -> dict[str, str]:
        """Headers for every message this process sends: where its records must go."""
        return {REPLY_HEADER: self.reply_queue}

    def observe(self, task_id: str, headers: Mapping[str, str]) -> None:
        """A worker took a message of ``task_id``: remember where its records go."""
        reply = headers.get(REPLY_HEADER)
        if not isinstance(reply, str) or not _REPLY_NAME.search(reply):
            if reply is not None:
                log.debug("task %s: ignoring reply queue %r (not an aqueue one)", task_id, reply)
            return
        routes = self._routes
        routes[task_id] = reply
        routes.move_to_end(task_id)
        while len(routes) > self._routes_size:
            routes.popitem(last=False)

    # -- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, declare the reply queue and consume it; idempotent."""
        if self._lock is None:
            self._lock = asyncio.Lock()
            self._up = asyncio.Event()
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return
            self._closing = False
            await self._open()
            if self._supervisor is None or self._supervisor.done():
                self._supervisor = asyncio.get_running_loop().create_task(
                    self._supervise(), name="aqueue-rpc-results"
                )
            self._loop_end.arm()

    async def close(self) -> None:
        """Close the connection (the reply queue goes with it); idempotent.

        Not calling it is quiet too: when the event loop ends, the backend closes itself.
        """
        self._loop_end.disarm()
        self._closing = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            try:
                await supervisor
            except asyncio.CancelledError:
                pass
        conn, self._conn, self._channel, self._raw = self._conn, None, None, None
        if self._up is not None:
            self._up.clear()
        if conn is not None:
            await self._close_quietly(conn)

    async def _open(self) -> None:
        s = self._settings
        try:
            async with asyncio.timeout(s.connect_timeout):
                conn = await aio_pika.connect(
                    s.client_url,
                    timeout=s.connect_timeout,
                    client_properties={
                        "connection_name": f"aqueue {s.prefix} results pid {os.getpid()}"
                    },
                )
        except TimeoutError:
            raise BrokerError(
                f"rpc:// results: could not connect to RabbitMQ at {s.redacted} "
                f"within {s.connect_timeout}s"
            ) from None
        except Exception as exc:
            raise BrokerError(
                f"rpc:// results: could not connect to RabbitMQ at {s.redacted}: {self._scrub(exc)}"
            ) from None
        try:
            async with asyncio.timeout(s.operation_timeout):
                channel = await conn.channel(publisher_confirms=False)
                queue = await channel.declare_queue(
                    self.reply_queue, exclusive=True, auto_delete=True
                )
                await queue.consume(self._on_message, no_ack=True)
                raw = await channel.get_underlay_channel()
                assert isinstance(raw, aiormq.Channel)
        except Exception as exc:
            await self._close_quietly(conn)
            raise BrokerError(
                f"rpc:// results: could not declare reply queue {self.reply_queue} on "
                f"{s.redacted}: {self._scrub(exc)}"
            ) from None
        lost = asyncio.Event()

        def on_close(*_: Any) -> None:
            lost.set()

        conn.close_callbacks.add(on_close)
        channel.close_callbacks.add(on_close)
        self._mandatory = hear_returns(raw, self._on_return)
        self._conn, self._channel, self._raw, self._lost = conn, channel, raw, lost
        assert self._up is not None
        self._up.set()
        log.debug("rpc:// results: consuming %s on %s", self.reply_queue, s.redacted)

    async def _supervise(self) -> None:
        """Reconnect (and declare the same reply queue again) whenever the connection drops."""
        try:
            await self._reconnect_forever()
        except asyncio.CancelledError:
            conn = self._conn
            if not self._closing and conn is not None:  # the loop is ending: close it cleanly
                self._closing = True
                await self._close_quietly(conn)
            raise

    async def _reconnect_forever(self) -> None:
        while True:
            lost = self._lost
            assert lost is not None and self._up is not None and self._lock is not None
            await lost.wait()
            if self._closing:
                return
            self._up.clear()
            conn, self._conn, self._channel, self._raw = self._conn, None, None, None
            log.warning(
                "rpc:// results: connection to %s lost; reconnecting (results sent to this "
                "process meanwhile are lost)",
                self._settings.redacted,
            )
            if conn is not None:
                await self._close_quietly(conn)
            delay = 0.1
            while not self._closing:
                try:
                    async with self._lock:  # connect() may have reconnected meanwhile
                        if self._channel is None or self._channel.is_closed:
                            await self._open()
                    break
                except BrokerError as exc:
                    log.warning("%s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

    async def _close_quietly(self, conn: AbstractConnection) -> None:
        try:
            async with asyncio.timeout(self._settings.operation_timeout):
                await conn.close()
        except Exception as exc:  # closing is best effort
            log.debug("closing the rpc:// connection failed: %s", type(exc).__name__)

    def _scrub(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        return text.replace(self._password, "***") if self._password else text

    # -- receiving ----------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task_id = message.correlation_id
        headers = message.headers or {}
        state = headers.get(_STATE_HEADER)
        attempt = headers.get(_ATTEMPT_HEADER)
        if isinstance(state, bytes):
            state = state.decode("utf-8", "replace")
        if not (isinstance(task_id, str) and isinstance(state, str) and isinstance(attempt, int)):
            log.debug("rpc:// results: dropping a reply without task id, state or attempt")
            return
        self._deliver(task_id, message.body, state, attempt)

    def _on_return(self, message: DeliveredMessage) -> None:
        """RabbitMQ returned a record (called by the channel's reader): its queue is gone."""
        queue = getattr(message.delivery, "routing_key", None)
        if isinstance(queue, str) and self.gone.returned(queue, time.monotonic()):
            log.info(
                "rpc:// results: reply queue %s does not exist (the process that sent those "
                "tasks exited or lost its connection); its results are dropped",
                queue,
            )

    def _deliver(self, task_id: str, body: bytes, state: str, attempt: int) -> bool:
        """Keep a record that supersedes the cached one and hand it to the watchers."""
        cache = self._cache
        current = cache.get(task_id)
        if current is not None and not states.supersedes(attempt, current.attempt, current.state):
            return False
        cache[task_id] = _Entry(state, attempt, body)
        cache.move_to_end(task_id)
        while len(cache) > self._cache_size:
            cache.popitem(last=False)
        for queue in self._watchers.get(task_id, ()):
            queue.put_nowait(body)
        return True

    # -- the ResultBackend protocol -----------------------------------------------------

    async def store(
        self, task_id: str, record: bytes, *, state: str, attempt: int, ttl: float | None
    ) -> bool:
        if state == states.REVOKED and attempt >= REVOKE_FENCE:
            raise ConfigurationError(
                "the rpc:// result backend cannot store revocations: a revocation must be "
                f"seen by every worker, and rpc:// results reach only the sender. Use {_SHARED}"
            )
        if state == "META":
            raise ConfigurationError(
                "the rpc:// result backend cannot run canvases (chains, groups, chords) or "
                f"save groups: their state must be shared between processes. Use {_SHARED}"
            )
        route = self._routes.get(task_id)
        if state in states.READY_STATES:
            self._routes.pop(task_id, None)
        if route is None:
            log.debug("no reply queue known for task %s: its %s record is dropped", task_id, state)
            return True
        if route == self.reply_queue:  # sent by this process: no round trip
            return self._deliver(task_id, record, state, attempt)
        if self.gone and not self.gone.sendable(route, time.monotonic()):
            self.dropped += 1
            return True
        await self._publish(route, task_id, record, state, attempt)
        return True

    async def _publish(
        self, route: str, task_id: str, record: bytes, state: str, attempt: int
    ) -> None:
        """Send a record to another process's reply queue; transient, best effort.

        Straight on the aiormq channel, without waiting for the socket write: no aio-pika
        message object, no drain per record.
        """
        raw = self._raw
        timeout = self._settings.operation_timeout
        try:
            if raw is None or raw.is_closed:
                raw = await self._publishing()
            properties = aiormq.spec.Basic.Properties(
                content_type=CONTENT_TYPE,
                delivery_mode=_TRANSIENT,
                correlation_id=task_id,
                message_id=task_id,
                headers={_STATE_HEADER: state, _ATTEMPT_HEADER: attempt},
            )
            await raw.basic_publish(
                record,
                routing_key=route,
                properties=properties,
                mandatory=self._mandatory,
                wait=False,
                timeout=timeout,
            )
        except (TimeoutError, *AMQP_ERRORS) as exc:
            log.warning(
                "rpc:// results: the %s record of task %s was not sent (%s)",
                state,
                task_id,
                "no connection" if isinstance(exc, TimeoutError) else self._scrub(exc),
            )

    async def _publishing(self) -> aiormq.Channel:
        """The channel records go out on, once connected (within ``operation_timeout``).

        Raises:
            TimeoutError: not connected in time.
            ChannelInvalidStateError: the connection was lost again meanwhile.
            BrokerError: the first connection attempt failed.
        """
        if self._up is None or self._closing:
            await self.connect()
        assert self._up is not None
        async with asyncio.timeout(self._settings.operation_timeout):
            await self._up.wait()
        raw = self._raw
        if raw is None or raw.is_closed:  # lost again already: being reopened
            raise aiormq.exceptions.ChannelInvalidStateError("the connection was lost")
        return raw

    async def get(self, task_id: str) -> bytes | None:
        entry = self._cache.get(task_id)
        return entry.body if entry is not None else None

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        cache = self._cache
        out: list[bytes | None] = []
        for task_id in task_ids:
            entry = cache.get(task_id)
            out.append(entry.body if entry is not None else None)
        return out

    async def watch(self, task_id: str) -> AsyncGenerator[bytes, None]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        watchers = self._watchers.setdefault(task_id, set())
        watchers.add(queue)
        entry = self._cache.get(task_id)
        if entry is not None:
            queue.put_nowait(entry.body)
        try:
            while True:
                yield await queue.get()
        finally:
            watchers.discard(queue)
            if not watchers and self._watchers.get(task_id) is watchers:
                del self._watchers[task_id]

    async def forget(self, task_id: str) -> None:
        self._cache.pop(task_id, None)

    async def chord_join(
        self, chord_id: str, member_id: str, size: int, *, failed: bool, ttl: float | None
    ) -> bool:
        raise ConfigurationError(
            f"chord {chord_id}: the rpc:// result backend cannot join chords (the members' "
            f"results reach only the sender). Use {_SHARED}"
        )


def _amqp_url(url: str, broker_url: str | None) -> tuple[str, dict[str, str]]:
    """The AMQP URL to connect to, and this backend's own options from the query."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "rpc":
        raise ConfigurationError(f"not an rpc:// URL: {redact(url)!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.netloc:  # rpc://user:password@host:port/vhost
        scheme, netloc, path, fragment = "amqp", parts.netloc, parts.path, ""
    elif broker_url is not None and urlsplit(broker_url).scheme.lower() in ("amqp", "amqps"):
        broker = urlsplit(broker_url)  # rpc://: the broker's server, vhost and options
        scheme, netloc, path, fragment = broker.scheme, broker.netloc, broker.path, broker.fragment
        query = {**dict(parse_qsl(broker.query, keep_blank_values=True)), **query}
    else:
        raise ConfigurationError(
            "rpc:// sends results over the broker's RabbitMQ, so the broker must be amqp:// "
            f"or amqps:// (it is {redact(broker_url) if broker_url else 'not given'}); "
            "or name the server: rpc://user:password@host:5672/vhost"
        )
    own = {k: query.pop(k) for k in _OWN_OPTIONS if k in query}
    return urlunsplit((scheme, netloc, path, urlencode(query), fragment)), own


def _positive(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ConfigurationError(f"rpc:// backend option {name} must be a positive integer")
    return number
