"""Prometheus metrics: a worker's own (``aqueue worker --metrics-port``) and the fleet's
(``metrics_app(app)``, the dashboard's ``/metrics``). Needs ``aqueue[prometheus]``.

Two views, because they answer different questions and are counted in different places:

* :class:`WorkerMetrics` counts what one worker process ran, as it runs it: a middleware
  (runtime, in flight) and receivers of the task signals (final states, retries, dead
  letters). Nothing is installed unless asked for, so a worker without metrics pays
  nothing (not one ``if``). Each worker process serves its own registry on its own port:
  Prometheus scrapes every process and sums (``sum by (task) (rate(...))``); a worker that
  re-executes itself (``--max-tasks-per-child``) is the same process id on the same port,
  its counters start again from zero, which ``rate()`` and ``increase()`` read as a counter
  reset (docs/observability.md).
* :class:`FleetMetrics` reads the fleet at scrape time (queue depths, dead letters, the
  worker registry) and counts tasks by name and state from the monitoring event stream
  (``app.events()``, workers started with ``-E``). :func:`metrics_app` serves it as an
  ASGI app.

Names start with ``aqueue_`` and carry their unit (``_seconds``, ``_total``). The tables
are in docs/observability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core import signals, states
from ..core.errors import AqueueError, ConfigurationError, DecodeError
from ..core.message import decode_message
from ..core.middleware import ExecuteNext, Middleware
from ..core.protocols import PeeksHead

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
        start_http_server,
    )
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - the extra is missing
    raise ConfigurationError(
        'Prometheus metrics need prometheus-client: pip install "aqueue[prometheus]"'
    ) from None

if TYPE_CHECKING:
    from ..core.app import App
    from ..core.context import Request
    from ..core.events import Event
    from ..core.worker import Worker

__all__ = ["RUNTIME_BUCKETS", "FleetMetrics", "MetricsApp", "WorkerMetrics", "metrics_app"]

log = logging.getLogger("aqueue.metrics")

#: runtime histogram buckets, seconds: from a millisecond task to a five-minute one
RUNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

#: the state of a dead-lettered task (Celery's name; aqueue stores no record of it)
REJECTED = "REJECTED"

#: the ``state`` label of a task that ended (Celery's state names)
FINAL_STATES = (states.SUCCESS, states.FAILURE, states.RETRY, states.REVOKED, REJECTED)


# -- one worker process --------------------------------------------------------------------


class WorkerMetrics(Middleware):
    """What one worker process ran, counted as it runs.

    ``install()`` adds it to the app's middleware and connects its signal receivers;
    ``serve(port)`` exposes its registry over HTTP (``aqueue worker --metrics-port``).
    Receivers count only the tasks of ``app`` (signals are process-wide).
    """

    def __init__(self, app: App, registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.tasks = Counter(
            "aqueue_tasks_total",
            "Tasks this worker finished, by task name and final state",
            ["task", "state"],
            registry=r,
        )
        self.runtime = Histogram(
            "aqueue_task_runtime_seconds",
            "Seconds each task body ran in this worker (every attempt), by task name",
            ["task"],
            buckets=RUNTIME_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "aqueue_task_retries_total",
            "Retries this worker queued, by task name",
            ["task"],
            registry=r,
        )
        self.dead_letters = Counter(
            "aqueue_dead_letters_total",
            "Messages this worker dead-lettered, by queue and reason",
            ["queue", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "aqueue_worker_tasks_in_flight", "Task bodies running in this worker now", registry=r
        )
        self.concurrency = Gauge(
            "aqueue_worker_concurrency", "Tasks this worker runs at once (its pool)", registry=r
        )
        self.up = Gauge("aqueue_worker_up", "1 while this worker consumes, else 0", registry=r)
        # labelled children by label values: ``labels()`` costs a locked lookup per call,
        # a dict hit a quarter of that (the counts are on every task's path)
        self._finished: dict[tuple[str, str], Any] = {}
        self._runtimes: dict[str, Any] = {}
        self._server: Any = None
        self._receivers: list[tuple[signals.Signal, Callable[..., None]]] = [
            (signals.task_postrun, self._on_postrun),
            (signals.task_retry, self._on_retry),
            (signals.task_revoked, self._on_revoked),
            (signals.task_rejected, self._on_rejected),
            (signals.worker_ready, self._on_ready),
            (signals.worker_shutdown, self._on_shutdown),
        ]

    def install(self) -> WorkerMetrics:
        """Count from now on: add the middleware and connect the receivers."""
        if self not in self.app.middleware:
            self.app.add_middleware(self)
        for signal, receiver in self._receivers:
            signal.connect(receiver)
        return self

    def uninstall(self) -> None:
        """Stop counting (what was counted stays in the registry)."""
        if self in self.app.middleware:
            self.app.middleware.remove(self)
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve the registry in the text format on ``address:port`` (a daemon thread)."""
        self._server = start_http_server(port, addr=address, registry=self.registry)

    def shutdown(self) -> None:
        """Stop serving (an embedding program, a test)."""
        if isinstance(self._server, tuple):  # (server, thread) since prometheus-client 0.17
            self._server[0].shutdown()
            self._server[0].server_close()
        self._server = None

    # -- the middleware: around each task body --------------------------------------------

    async def execute(self, request: Request, call_next: ExecuteNext) -> Any:
        """Time the task body and count it in flight while it runs."""
        self.in_flight.inc()
        start = time.perf_counter()
        try:
            return await call_next()
        finally:
            elapsed = time.perf_counter() - start
            runtime = self._runtimes.get(request.task)
            if runtime is None:
                runtime = self._runtimes[request.task] = self.runtime.labels(request.task)
            runtime.observe(elapsed)
            self.in_flight.dec()

    def _finish(self, task: str, state: str) -> None:
        key = (task, state)
        counter = self._finished.get(key)
        if counter is None:
            counter = self._finished[key] = self.tasks.labels(task, state)
        counter.inc()

    # -- the receivers: final states -----------------------------------------------------

    def _ours(self, sender: Any) -> bool:
        return getattr(sender, "app", self.app) is self.app

    def _on_postrun(self, sender: Any, *, state: str, **_: Any) -> None:
        if self._ours(sender):
            self._finish(sender.name, state)

    def _on_retry(self, sender: Any, **_: Any) -> None:
        if self._ours(sender):
            self._finish(sender.name, states.RETRY)
            self.retries.labels(sender.name).inc()

    def _on_revoked(self, sender: Any, **_: Any) -> None:
        if self._ours(sender):  # a task revoked before it was decoded has no sender
            self._finish(getattr(sender, "name", ""), states.REVOKED)

    def _on_rejected(
        self, sender: Any, *, task: str | None, queue: str, reason: str, **_: Any
    ) -> None:
        self._finish(task or "", REJECTED)
        self.dead_letters.labels(queue, reason).inc()

    def _on_ready(self, worker: Worker, **_: Any) -> None:
        if worker.app is self.app:
            self.concurrency.set_function(lambda: worker.concurrency)
            self.up.set(1)

    def _on_shutdown(self, worker: Worker, **_: Any) -> None:
        if worker.app is self.app:
            self.up.set(0)


# -- the fleet -----------------------------------------------------------------------------


class FleetMetrics(Collector):
    """The fleet as a Prometheus collector: read at scrape time, plus task counts from events.

    Call :meth:`refresh` before each collection (``metrics_app`` does): the broker's reads
    are async, a collector's ``collect()`` is not. :meth:`start` follows ``app.events()`` in
    the background to count tasks by name and state (from workers that send events: ``-E``).

    Args:
        app: the app whose broker, queues and workers are shown.
        queues: the queues to measure (default: those the app's configuration sends to).
        events: count tasks from the event stream.
        dead_letter_limit: dead letters are counted by listing them, up to this many per
            queue (a bigger backlog shows as this number).
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        events: bool = True,
        dead_letter_limit: int = 100,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.app = app
        self.queues = list(queues) if queues is not None else None
        self.follow_events = events
        self.dead_letter_limit = dead_letter_limit
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.tasks = Counter(
            "aqueue_fleet_tasks_total",
            "Tasks the fleet finished, by task name and final state (from events: workers -E)",
            ["task", "state"],
            registry=r,
        )
        self.runtime = Histogram(
            "aqueue_fleet_task_runtime_seconds",
            "Seconds successful tasks ran, by task name (from events: workers -E)",
            ["task"],
            buckets=RUNTIME_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "aqueue_fleet_task_retries_total",
            "Retries queued across the fleet, by task name (from events: workers -E)",
            ["task"],
            registry=r,
        )
        r.register(self)
        self._snapshot: list[Metric] = []
        self._names: OrderedDict[str, str] = OrderedDict()
        self._follower: asyncio.Task[None] | None = None
        self._closed = False

    # -- scrape time -------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read queue depths, dead letters and workers now, for the next ``collect()``."""
        app = self.app
        broker = await app.connected_broker()
        queues = self.queues if self.queues is not None else app.router().named(app.tasks.values())
        depth = GaugeMetricFamily(
            "aqueue_queue_messages",
            "Messages waiting in each queue (ready or delayed)",
            labels=["queue"],
        )
        dead = GaugeMetricFamily(
            "aqueue_queue_dead_letters",
            "Dead letters kept for each queue (listed up to a limit)",
            labels=["queue"],
        )
        head_age = GaugeMetricFamily(
            "aqueue_queue_oldest_message_age_seconds",
            "Seconds the message next in line has waited since it was sent (brokers that can "
            "read it without taking it: memory, SQLite, Redis)",
            labels=["queue"],
        )
        peeks = broker if isinstance(broker, PeeksHead) else None
        now = time.time()
        for queue in queues:
            depth.add_metric([queue], await broker.size(queue))
            if peeks is not None:
                head = await peeks.peek_head(queue)
                age = message_age(head, now, app.conf.max_message_bytes)
                head_age.add_metric([queue], age)
            if broker.capabilities.dead_letters:
                letters = await broker.dead_letters(queue, self.dead_letter_limit)
                dead.add_metric([queue], len(letters))
        up = GaugeMetricFamily(
            "aqueue_fleet_worker_up",
            "1 for a worker whose heartbeats arrive, 0 for one missing",
            labels=["worker"],
        )
        concurrency = GaugeMetricFamily(
            "aqueue_fleet_worker_concurrency", "Each worker's pool size", labels=["worker"]
        )
        held = GaugeMetricFamily(
            "aqueue_fleet_worker_held_messages",
            "Messages each worker held at its last heartbeat (running or waiting)",
            labels=["worker"],
        )
        try:
            workers = await app.control.workers()
        except ConfigurationError:  # no registry on this broker (amqp with rpc://)
            workers = []
        for w in workers:
            name = [w.info.hostname]
            up.add_metric(name, 0 if w.missing else 1)
            concurrency.add_metric(name, w.info.concurrency)
            held.add_metric(name, w.held)
        self._snapshot = [depth, dead, up, concurrency, held]
        if peeks is not None:
            self._snapshot.append(head_age)

    def collect(self) -> Iterator[Metric]:
        """What the last :meth:`refresh` read (the counters are collected on their own)."""
        yield from self._snapshot

    # -- the event stream ----------------------------------------------------------------

    async def start(self) -> None:
        """Follow the event stream in the background (once; no-op without ``events``).

        Events from the moment of this call on are counted (read with ``since``, so none
        is missed while the subscription is being made).
        """
        if self._follower is not None or self._closed or not self.follow_events:
            return
        since = time.time()
        self._follower = asyncio.create_task(self._follow(since), name="aqueue-metrics-events")

    async def close(self) -> None:
        """Stop following the event stream (for good: scrapes after this do not restart it)."""
        self._closed = True
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def _follow(self, since: float) -> None:
        """Count events until closed; a broken stream is read again from the last event."""
        while True:
            try:
                stream = self.app.events(since=since, types="task-*")
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        since = max(since, event.timestamp + 1e-6)
                        self.count(event)
                return
            except ConfigurationError as exc:  # a broker without topics carries no events
                log.warning("metrics: no task counts from events: %s", exc)
                return
            except AqueueError as exc:
                log.warning("metrics: the event stream failed (%s); reading it again in 1 s", exc)
                await asyncio.sleep(1.0)

    def count(self, event: Event) -> None:
        """Count one task event (public so that a program reading events can feed it)."""
        kind, uuid = event.type, event.uuid or ""
        if kind in ("task-sent", "task-received"):  # the events that carry the name
            self._names[uuid] = event.name or ""
            if len(self._names) > _NAMES_KEPT:
                self._names.popitem(last=False)
            return
        name = self._names.get(uuid, "")
        if kind == "task-succeeded":
            self.tasks.labels(name, states.SUCCESS).inc()
            if event.runtime is not None:
                self.runtime.labels(name).observe(event.runtime)
        elif kind == "task-failed":
            self.tasks.labels(name, states.FAILURE).inc()
        elif kind == "task-retried":
            self.tasks.labels(name, states.RETRY).inc()
            self.retries.labels(name).inc()
        elif kind == "task-revoked":
            self.tasks.labels(name, states.REVOKED).inc()
        elif kind == "task-rejected":
            self.tasks.labels(name, REJECTED).inc()
        else:
            return
        self._names.pop(uuid, None)  # a retried task is received again, by the same id


#: task names remembered by id between ``task-received`` and the task's end
_NAMES_KEPT = 100_000


# -- the ASGI app ----------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class MetricsApp:
    """An ASGI app serving :class:`FleetMetrics` in Prometheus's text format, at any path
    it is mounted on (``app.mount("/metrics", metrics_app(aqueue_app))``).

    It starts following events on its first request (or at ``start()``, or at the ASGI
    lifespan's startup when it is the main app); ``close()`` stops that.
    """

    def __init__(self, fleet: FleetMetrics) -> None:
        self.fleet = fleet

    async def start(self) -> None:
        await self.fleet.start()

    async def close(self) -> None:
        await self.fleet.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", b"text/plain; charset=utf-8")
            return
        await self.fleet.start()
        await self.fleet.refresh()
        body = generate_latest(self.fleet.registry)
        if scope["method"] == "HEAD":
            body = b""
        await _respond(send, 200, body, CONTENT_TYPE_LATEST.encode())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def metrics_app(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    events: bool = True,
    dead_letter_limit: int = 100,
) -> MetricsApp:
    """The fleet's ``/metrics`` as an ASGI app (the dashboard mounts it). See FleetMetrics."""
    return MetricsApp(
        FleetMetrics(app, queues=queues, events=events, dead_letter_limit=dead_letter_limit)
    )


def message_age(body: bytes | None, now: float, max_bytes: int) -> float:
    """Seconds since a message was sent (its envelope's ``sent_at``); 0 for none, or for a
    message that does not say (an undecodable one, another producer's)."""
    if body is None:
        return 0.0
    try:
        sent = decode_message(body, max_bytes).sent_at
    except DecodeError:
        return 0.0
    return max(0.0, now - sent) if sent else 0.0
