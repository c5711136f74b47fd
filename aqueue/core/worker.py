"""The worker: claim deliveries, run them with bounded concurrency, keep their leases.

``async with app.worker(queues=["celery"], concurrency=100):`` runs one inside an existing
event loop; ``await app.worker(...).run()`` runs until ``stop()`` (the CLI wires SIGTERM and
SIGINT to it).

Shutdown is graceful: stop claiming, hand unstarted deliveries back at once (they do not
count as deliveries), let running tasks finish within ``shutdown_timeout``, then cancel the
rest and hand them back at once too, so nobody waits for a lease to expire.

Retirement (``max_tasks_per_child``, ``max_memory_per_child``) is how a worker asks to be
replaced: it stops claiming, runs what it holds (a memory retirement hands back what has
not started), stops, and says why in :attr:`Worker.retired`. ``aqueue worker`` then
replaces the process (docs/cli.md, "Recycling"); an embedded worker just stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from . import signals, states
from .emitting import EventDispatcher, bounded_repr, raw_arguments
from .errors import ConfigurationError, DecodeError
from .execution import Executor, is_terminate
from .message import MessageIn, decode_message, decode_result
from .offload import ProcessPool, set_current_pool
from .offload_child import rss_kib
from .presence import Presence, new_worker_id, pick_registry, worker_info
from .protocols import (
    Broker,
    ClaimsRecords,
    Delivery,
    KeepsTopics,
    KeepsWorkers,
    Lease,
    ListsScheduled,
    RoutesByExchange,
    SettlesInBackground,
    SharedThrottle,
    StopsConsuming,
)
from .remote import ControlError, Mailbox
from .routing import router_of
from .serialization import format_of
from .signed_results import underlying
from .urls import redact

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("aqueue.worker")

_CLAIM_WAIT = 5.0  # seconds an idle claim blocks before the loop looks around again
_ERROR_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_TERMINATE_CHECK = 1.0  # seconds between checks for running tasks revoked with terminate
_MEMORY_CHECK = 1.0  # seconds between checks of the resident memory (max_memory_per_child)
_REVOKED_KEPT = 50_000  # revoked ids a worker remembers (``inspect revoked``; Celery's)
_SCHEDULED_LISTED = 1000  # ETA messages ``inspect scheduled`` lists per queue


def expand_hostname(pattern: str) -> str:
    """Celery's node name patterns: ``%h`` host, ``%n`` name part, ``%d`` domain part."""
    host = socket.gethostname()
    name, _, domain = host.partition(".")
    return pattern.replace("%h", host).replace("%n", name).replace("%d", domain)


class Worker:
    """Runs an app's tasks from one or more queues.

    Args:
        app: the app whose tasks run here.
        queues: queue names, earlier ones first; default: every queue ``task_queues``
            declares, else ``[conf.task_default_queue]`` (Celery's rule).
        concurrency: tasks running at once; default ``conf.worker_concurrency``.
        prefetch: deliveries held at once, running or waiting (at least ``concurrency``);
            one whose task body has returned no longer counts while its result is stored
            and its message acked.
        hostname: node name, ``%h`` expanded; default ``aqueue@%h``.
        burst: stop once nothing is claimable and nothing is running.
        shutdown_timeout: seconds running tasks get to finish on stop.
        lease_seconds: lease length; renewed every third of it.
        exclude_queues: queues not to consume, even if ``queues`` (or the default) has
            them (Celery's ``-X``).
        max_tasks_per_child: claim at most this many messages, run them, then retire.
        max_memory_per_child: retire once the process's resident memory passes this many
            KiB (checked every second): what has not started is handed back, what runs
            finishes.
        task_events: send monitoring events (Celery's ``-E``); default
            ``conf.worker_send_task_events``. ``worker.events.enable()`` / ``disable()``
            switch them at run time (docs/fleet.md, "Events").
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        prefetch: int | None = None,
        hostname: str | None = None,
        burst: bool = False,
        shutdown_timeout: float | None = None,
        lease_seconds: float | None = None,
        exclude_queues: Sequence[str] | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        task_events: bool | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        # Celery's default: every queue task_queues declares, else the default queue
        wanted = list(queues) if queues else router_of(conf).consumed_by_default()
        excluded = set(exclude_queues or ())
        self.queues = [q for q in wanted if q not in excluded]
        if not self.queues:
            raise ValueError(
                f"no queue left to consume: {', '.join(wanted)} excluded (-X/exclude_queues)"
            )
        self.concurrency = concurrency or conf.worker_concurrency
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.prefetch = max(
            prefetch or conf.worker_prefetch or self.concurrency * conf.worker_prefetch_multiplier,
            self.concurrency,
        )
        for name, limit in (
            ("max_tasks_per_child", max_tasks_per_child),
            ("max_memory_per_child", max_memory_per_child),
        ):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1, or None for no limit")
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        #: messages claimed so far (counted against ``max_tasks_per_child``)
        self.claimed = 0
        #: why the worker retired (a limit was reached), or ``None``
        self.retired: str | None = None
        #: whether something asked it to stop for good (a signal, ``control shutdown``, its
        #: supervisor's death): a worker retiring meanwhile is then not replaced
        self.stop_requested = False
        self.hostname = expand_hostname(hostname or "aqueue@%h")
        #: unique per worker object: its registry id, and the owner its claims give
        self.owner = new_worker_id(self.hostname)
        self.burst = burst
        self.shutdown_timeout = (
            conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        )
        self.lease_seconds = lease_seconds or conf.lease_seconds
        #: the lease a claim takes: shorter while the presence thread has yet to list and
        #: renew it (see ``start``)
        self._claim_lease = self.lease_seconds
        self._held: dict[str, Delivery] = {}
        self._held_lock = threading.Lock()  # the heartbeat thread reads _held
        self._started: set[str] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._exclusive = asyncio.Lock()
        self._claiming = asyncio.Event()
        self._claiming.set()
        self._handed_back: set[str] = set()
        self._claim_in_flight: asyncio.Future[list[Delivery]] | None = None
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stop_begun = False
        #: the task that ran start() (None until then, or after a start that failed): a
        #: stop() while it runs waits for it (see stop())
        self._starting: asyncio.Task[None] | None = None
        self._start_done = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        #: its entry in the broker's worker registry, if the broker keeps one
        self.presence: Presence | None = None
        self._heartbeat_interval = conf.worker_heartbeat_interval
        self._lost_timeout = conf.worker_lost_timeout
        if self._lost_timeout < 2 * self._heartbeat_interval:
            raise ConfigurationError(
                "setting worker_lost_timeout must be at least twice worker_heartbeat_interval "
                f"(got {self._lost_timeout} and {self._heartbeat_interval})"
            )
        self._pool = ThreadPoolExecutor(min(self.concurrency, 64), thread_name_prefix="aqueue-task")
        self._executor: Executor | None = None
        self._handlers: dict[str, asyncio.Task[None]] = {}
        self._terminated: set[str] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._memory_watch: asyncio.Task[None] | None = None
        self._retiring: asyncio.Task[None] | None = None
        #: retiring and handing back what waits: nothing that has not started may start
        self._no_new_starts = False
        self._lifespans = contextlib.AsyncExitStack()
        self._process_pool: ProcessPool | None = None
        self.lost_leases = 0
        # held deliveries whose task body is done (their result and ack are in flight)
        self._finishing: set[str] = set()
        # whether claimed deliveries carry their stored records (``prior``), read by the
        # claim itself, so no separate lookup per batch is needed
        self._records_inline = False
        #: unix time it started
        self.started_at = 0.0
        #: task ids this worker was told were revoked (newest last, bounded)
        self.revoked_ids: dict[str, None] = {}
        self._mailbox: Mailbox | None = None
        # permits taken out of _slots by pool_shrink (tasks that hold one each)
        self._shrinking: list[asyncio.Task[bool]] = []
        self._prefetch_explicit = bool(prefetch or conf.worker_prefetch)
        #: monitoring events (``events.py``)
        self.events = EventDispatcher(
            app,
            self.hostname,
            enabled=conf.worker_send_task_events if task_events is None else task_events,
            stats=lambda: (len(self._started), self.claimed),
        )

    def __repr__(self) -> str:
        return f"<Worker {self.hostname} queues={','.join(self.queues)}>"

    @property
    def executor(self) -> Executor:
        """Counters of what ran: ``succeeded``, ``failed``, ``retried``, ``dead_lettered``."""
        if self._executor is None:
            raise RuntimeError("the worker has not started")
        return self._executor

    def _processes(self) -> ProcessPool:
        """The worker's offload process pool; children start on first use."""
        if self._process_pool is None:
            conf = self.app.conf
            self._process_pool = ProcessPool(
                conf.worker_process_pool_size or os.cpu_count() or 1,
                max_tasks_per_child=conf.worker_max_tasks_per_child or None,
                max_memory_per_child=conf.worker_max_memory_per_child or None,
            )
        return self._process_pool

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start consuming in the background."""
        if self._starting is not None:  # started, or starting
            return
        self._starting = asyncio.current_task()
        self._start_done.clear()
        try:
            await self._start_up()
        except BaseException:
            self._starting = None  # it may be started again
            raise
        finally:
            self._start_done.set()

    async def _start_up(self) -> None:
        await self.app.connect()
        self.app.import_includes()
        self._check_queues()
        self.started_at = time.time()
        broker = self.app.broker
        if isinstance(broker, RoutesByExchange):
            await broker.declare_queues(self.queues)  # bound (broadcasts kept) from now on
        throttle = broker if isinstance(broker, SharedThrottle) else None
        self._executor = Executor(self.app, self.hostname, self._pool, throttle, self._processes)
        backend = underlying(self.app.backend)  # its records are verified as they are used
        self._records_inline = (
            backend is not None
            and isinstance(broker, ClaimsRecords)
            and broker.bind_records(backend)
        )
        self._executor.on_ran = self._ran
        self._executor.events = self.events
        for lifespan in self.app.lifespans:
            await self._lifespans.enter_async_context(lifespan(self.app))
        log.info(
            "worker %s ready: broker %s, queues %s, concurrency %d, prefetch %d",
            self.hostname,
            redact(self.app.broker_url),
            ",".join(self.queues),
            self.concurrency,
            self.prefetch,
        )
        if broker.capabilities.leases:
            self._heartbeat = threading.Thread(
                target=self._renew_forever, args=(broker,), name="aqueue-heartbeat", daemon=True
            )
            self._heartbeat.start()
        registry = pick_registry(broker, self.app.backend)
        if registry is not None:
            renew = None
            if isinstance(broker, KeepsWorkers) and broker.capabilities.leases:
                # A claim just before a kill -9 may not be listed by a heartbeat yet, so
                # no reaper would hand it back: it is claimed with a lease that lasts only
                # until the worker would be found lost, and the presence thread renews it
                # to the full lease at its next heartbeat (brought forward by the claim).
                self._claim_lease = min(
                    self.lease_seconds, self._lost_timeout + 2 * self._heartbeat_interval
                )
                renew = partial(broker.renew, lease_seconds=self.lease_seconds)
            self.presence = Presence(
                registry,
                worker_info(self.owner, self.hostname, self.queues, self.concurrency),
                self._held_leases,
                interval=self._heartbeat_interval,
                lost_after=self._lost_timeout,
                renew=renew,
            )
            await asyncio.to_thread(self.presence.start)
        # task handlers are created by the consumer and copy its context: in it, and only in
        # it (not in the caller's), aqueue.offload() finds this worker's process pool
        consumer_context = contextvars.copy_context()
        consumer_context.run(set_current_pool, self._processes())
        self._consumer = asyncio.create_task(
            self._consume(broker), name="aqueue-consumer", context=consumer_context
        )
        if self.app.backend is not None:
            self._watchdog = asyncio.create_task(
                self._watch_terminations(), name="aqueue-terminations"
            )
        if self.max_memory_per_child is not None:
            self._memory_watch = asyncio.create_task(
                self._watch_memory(self.max_memory_per_child), name="aqueue-memory"
            )
        if self.app.conf.worker_enable_remote_control and isinstance(broker, KeepsTopics):
            self._mailbox = Mailbox(self, broker.topics)
            await self._mailbox.start()
        await self.events.start()  # worker-online, when events are on
        await signals.worker_ready.send(self)

    def _check_queues(self) -> None:
        """Refuse queues this worker cannot consume; warn about those nothing sends to."""
        self._refuse_unconsumable(self.queues)
        app = self.app
        router = app.router()
        idle = router.untargeted(self.queues, app.tasks.values())
        if idle:
            log.warning(
                "worker %s consumes queue(s) %s that no task, route or task_queues entry sends "
                "to (the default queue is %s): only calls naming them (queue=...) reach them%s",
                self.hostname,
                ", ".join(idle),
                router.default_queue,
                "; router functions in task_routes may too" if router.dynamic else "",
            )

    def _refuse_unconsumable(self, queues: Sequence[str]) -> None:
        """Refuse queues no worker of this app can consume: undeclared ones when
        ``task_create_missing_queues`` is False, broadcast ones without exchanges."""
        app = self.app
        router = app.router()
        if not router.create_missing:
            missing = [q for q in queues if q not in router.queues]
            if missing:
                raise ConfigurationError(
                    f"queue(s) {', '.join(missing)} not in task_queues, and "
                    "task_create_missing_queues is False"
                )
        broadcast = [q for q in queues if q in router.queues and router.queues[q].broadcast]
        if broadcast and not app.routes_by_exchange:
            raise ConfigurationError(
                f"broadcast queue(s) {', '.join(broadcast)} need RabbitMQ (a copy of each "
                f"message for every worker); {redact(app.broker_url)} has no exchanges"
            )

    async def run(self) -> None:
        """Start, and return once stopped (by ``stop()``, or in burst mode when drained)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            if not self._stopped.is_set():  # cancelled from outside: still shut down cleanly
                await asyncio.shield(self.stop())

    def request_stop(self) -> None:
        """Begin a graceful stop without waiting (safe from a signal handler); for good,
        even when the worker is retiring (it is then not replaced)."""
        self.stop_requested = True
        if not self._stopping.is_set():
            self._stopping.set()
            asyncio.get_running_loop().create_task(self.stop())

    async def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, hand back what has not started, wait for running tasks.

        Args:
            timeout: seconds running tasks may take; default ``shutdown_timeout``.
        """
        if self._stopped.is_set():
            return
        if self._starting not in (None, asyncio.current_task()):
            # a stop (a SIGTERM) while start() is under way stops what it started once it is
            # done: stopped half way, start() went on to start the rest after the stop (a
            # worker stopped just after it was ready ran on, and its supervisor waited)
            await self._start_done.wait()
        if self._executor is None:  # never started: nothing to stop
            self._stopping.set()
            self._stopped.set()
            return
        if self._stop_begun:  # another stop() is under way: wait for it
            await self._stopped.wait()
            return
        self._stop_begun = True
        self._stopping.set()
        self._room.set()
        mailbox, self._mailbox = self._mailbox, None
        if mailbox is not None:
            await mailbox.stop()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.cancel()  # claims are cancel-safe: what a cancelled claim took goes back
            await asyncio.wait([consumer])
        grace = self.shutdown_timeout if timeout is None else timeout
        await self._release_waiting()
        if self._running:
            log.info("waiting up to %.1fs for %d running task(s)", grace, len(self._running))
            _, pending = await asyncio.wait(set(self._running), timeout=grace)
            if pending:
                log.warning(
                    "handing back %d task(s) still running after %.1fs", len(pending), grace
                )
                for t in pending:
                    t.cancel()
                await asyncio.wait(pending)
        for taker in self._shrinking:  # pending pool_shrink permits: nothing to wait for
            taker.cancel()
        for watcher in (self._watchdog, self._memory_watch):
            if watcher is not None and watcher is not asyncio.current_task():
                watcher.cancel()
                await asyncio.wait([watcher])
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            await asyncio.to_thread(self._heartbeat.join)
        if self.presence is not None:
            await asyncio.to_thread(self.presence.stop)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._process_pool is not None:
            await self._process_pool.close()
        try:
            await self._lifespans.aclose()
        except Exception:
            log.exception("a lifespan's shutdown raised")
        await self.events.close()  # worker-offline, and what is buffered
        await signals.worker_shutdown.send(self)
        ex = self.executor
        log.info(
            "worker %s stopped: %d succeeded, %d failed, %d dead-lettered",
            self.hostname,
            ex.succeeded,
            ex.failed,
            ex.dead_lettered,
        )
        self._stopped.set()

    def _retire(self, reason: str, *, hand_back: bool) -> None:
        """Ask to be replaced: stop claiming, finish (or hand back) what is held, stop."""
        if self.retired is not None or self._stopping.is_set():
            return
        self.retired = reason
        # decided now, not when the hand-back gets its turn: a slot freed meanwhile must not
        # start a task that is about to be handed back
        self._no_new_starts = hand_back
        log.warning("%s: stopping to be replaced", reason)
        self._retiring = asyncio.get_running_loop().create_task(self._run_out(hand_back))

    async def _run_out(self, hand_back: bool) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None and consumer is not asyncio.current_task():
            consumer.cancel()  # claims are cancel-safe: what a cancelled claim took goes back
            await asyncio.wait([consumer])
        if hand_back:
            await self._release_waiting()
        while self._running and not self._stopping.is_set():
            # each task runs to its end (its own time limits apply); a stop() meanwhile
            # takes over with the shutdown timeout
            await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)
        await self.stop()

    async def _watch_memory(self, limit_kib: int) -> None:
        """Every second: retire once the resident memory passed ``limit_kib``."""
        while True:
            await asyncio.sleep(_MEMORY_CHECK)
            rss = await asyncio.to_thread(rss_kib)
            if rss > limit_kib:
                self._retire(
                    f"resident memory {rss} KiB > max_memory_per_child {limit_kib} KiB",
                    hand_back=True,
                )
                return

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def stopped(self) -> bool:
        """Whether the worker has stopped (and will not run anything more)."""
        return self._stopped.is_set()

    async def wait_stopped(self) -> None:
        """Wait until the worker has stopped."""
        await self._stopped.wait()

    # -- consuming ----------------------------------------------------------------------

    async def _consume(self, broker: Broker) -> None:
        failures = 0
        while not self._stopping.is_set():
            if not self._claiming.is_set():  # a message is running alone
                await self._claiming.wait()
                continue
            # a task whose body is done no longer counts: more are claimed while its
            # result is stored and its message settled
            room = self.prefetch - len(self._held) + len(self._finishing)
            if self.max_tasks_per_child is not None:
                left = self.max_tasks_per_child - self.claimed
                if left <= 0:  # what it holds runs to the end, then it is replaced
                    self._retire(
                        f"max_tasks_per_child ({self.max_tasks_per_child}) reached",
                        hand_back=False,
                    )
                    return
                room = min(room, left)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            claim = asyncio.ensure_future(
                broker.claim(
                    self.queues,
                    limit=room,
                    lease_seconds=self._claim_lease,
                    owner=self.owner,
                    timeout=0.05 if self.burst else _CLAIM_WAIT,
                )
            )
            self._claim_in_flight = claim
            try:
                await asyncio.wait([claim])
            except asyncio.CancelledError:
                claim.cancel()  # cancel-safe: what it took goes back
                await asyncio.wait([claim])
                if not claim.cancelled() and claim.exception() is None:
                    # it had finished just before the cancel: nothing handed it back yet
                    for delivery in claim.result():
                        await self._hand_back(delivery, executed=False)
                raise
            finally:
                self._claim_in_flight = None
            if claim.cancelled():  # by a message that runs alone: claiming is paused
                continue
            error = claim.exception()
            if error is not None:  # the broker is down: keep trying, never die
                delay = _ERROR_BACKOFF[min(failures, len(_ERROR_BACKOFF) - 1)]
                failures += 1
                log.warning(
                    "claim failed (%s: %s); retrying in %.1fs", type(error).__name__, error, delay
                )
                try:
                    async with asyncio.timeout(delay):  # not wait_for: see wakeup.py
                        await self._stopping.wait()
                except TimeoutError:
                    pass
                continue
            deliveries = claim.result()
            if deliveries and not self._claiming.is_set():
                # claiming was paused while this claim was finishing: give it all back
                for delivery in deliveries:
                    await self._hand_back(delivery, executed=False)
                continue
            failures = 0
            self.claimed += len(deliveries)
            if not deliveries:
                if self.burst and not self._held:
                    log.info("burst: queues %s are drained", ",".join(self.queues))
                    asyncio.get_running_loop().create_task(self.stop())
                    return
                continue
            with self._held_lock:
                for delivery in deliveries:
                    self._held[delivery.id] = delivery
            if self.presence is not None:
                self.presence.nudge()  # list the new leases soon: a kill must not strand them
            if self._records_inline:
                priors = {d.id: d.prior for d in deliveries if d.prior is not None}
            else:
                priors = await self._prior_records([d.id for d in deliveries])
            for delivery in deliveries:
                task = asyncio.create_task(self._handle(delivery, priors.get(delivery.id)))
                self._running.add(task)
                self._handlers[delivery.id] = task
                task.add_done_callback(self._running.discard)

    async def _handle(self, delivery: Delivery, prior: bytes | None) -> None:
        started = False
        # a message on its last allowed delivery runs alone: if this worker dies now, that
        # message is the cause, and the tasks that died with it earlier are not blamed
        alone = delivery.delivery_count == self.app.conf.max_deliveries > 1
        try:
            async with self._alone(delivery.id) if alone else self._slots:
                started = self._start(delivery)
                if started:
                    await self.executor.execute(delivery, prior=prior)
                elif (
                    self._stopping.is_set() or self._no_new_starts
                ) and delivery.id not in self._handed_back:
                    # its slot came free after the stop (or a retirement handing back) began,
                    # before what had not started was handed back: hand it back here, at once
                    self._handed_back.add(delivery.id)
                    await self._hand_back(delivery, executed=False)
        except asyncio.CancelledError:
            if delivery.id in self._terminated:
                self._terminated.discard(delivery.id)
                await asyncio.shield(self.executor.terminated(delivery, started=started))
            elif started:
                await asyncio.shield(self._hand_back(delivery, executed=True))
            raise
        except Exception as exc:
            if delivery.delivery_count < self.app.conf.max_deliveries:
                log.exception("error handling message %s; handing it back", delivery.id)
                await self._hand_back(delivery, executed=True)
            else:  # its last allowed delivery: fail it for good, never hand it back again
                await self._give_up(delivery, exc)
        finally:
            self._started.discard(delivery.id)
            self._handed_back.discard(delivery.id)
            self._handlers.pop(delivery.id, None)
            with self._held_lock:
                self._held.pop(delivery.id, None)
            self._finishing.discard(delivery.id)
            self._room.set()

    @contextlib.asynccontextmanager
    async def _alone(self, delivery_id: str) -> AsyncIterator[None]:
        """Hold every concurrency slot, and nothing else: run ``delivery_id`` alone."""
        permits = self.concurrency
        taken = 0
        try:
            async with self._exclusive:  # one exclusive taker at a time gathers every slot
                for _ in range(permits):
                    await self._slots.acquire()
                    taken += 1
            # hold nothing else either: a crash now must not count against other messages
            self._claiming.clear()
            in_flight = self._claim_in_flight
            if in_flight is not None:
                in_flight.cancel()
                await asyncio.wait([in_flight])
                broker = self.app.broker
                if isinstance(broker, SettlesInBackground):
                    # what the cancelled claim took goes back before this runs, uncounted:
                    # else a process this message kills leaves it counted against them
                    await broker.settled()
            await self._release_waiting(keep=delivery_id)
            yield
        finally:
            self._claiming.set()
            for _ in range(taken):
                self._slots.release()

    def _start(self, delivery: Delivery) -> bool:
        """Whether ``delivery``, now holding its slot, may run."""
        if self._stopping.is_set() or self._no_new_starts or delivery.id in self._handed_back:
            return False  # handed back here or by _release_waiting
        self._started.add(delivery.id)
        # where the connection is the lease, its channel may have died while it waited:
        # then it is redelivered elsewhere
        return self._lease_kept(delivery)

    def _ran(self, task_id: str) -> None:
        """A task's body is done: its place in the prefetch is free (not yet its slot)."""
        if task_id in self._held and task_id not in self._finishing:
            self._finishing.add(task_id)
            self._room.set()

    def _lease_kept(self, delivery: Delivery) -> bool:
        """Where the connection is the lease, a prefetched delivery may be lost before it
        starts; checking costs no I/O there (elsewhere the heartbeat reports losses)."""
        broker = self.app.broker
        if broker.capabilities.leases:
            return True
        return not broker.renew([delivery.lease], self.lease_seconds)

    async def _prior_records(self, ids: list[str]) -> dict[str, bytes]:
        """Stored records of a claimed batch, in one round trip: revocations, and tasks that
        already finished (a redelivered duplicate is not run again). Read from the real
        backend: with signing on, each is verified where it is used (executor)."""
        backend = underlying(self.app.backend)
        if backend is None:
            return {}
        try:
            records = await backend.get_many(ids)
        except Exception as exc:  # run them: these checks are best effort when it is down
            log.warning("could not read stored records (%s: %s)", type(exc).__name__, exc)
            return {}
        return {tid: raw for tid, raw in zip(ids, records, strict=True) if raw is not None}

    async def _watch_terminations(self) -> None:
        """Every second, cancel running tasks revoked with ``terminate=True``."""
        backend = self.app.backend
        assert backend is not None
        while True:
            await asyncio.sleep(_TERMINATE_CHECK)
            running = list(self._started)
            if not running:
                continue
            try:
                records = await backend.get_many(running)
            except Exception as exc:
                log.warning("could not check revocations (%s: %s)", type(exc).__name__, exc)
                continue
            for tid, raw in zip(running, records, strict=True):
                if raw is None:
                    continue
                record = decode_result(raw)
                if record.state == states.REVOKED and is_terminate(record.error):
                    handler = self._handlers.get(tid)
                    if handler is not None and not handler.done():
                        self._terminated.add(tid)
                        handler.cancel()

    async def _release_waiting(self, keep: str | None = None) -> None:
        """Hand back every held delivery that has not started (but ``keep``)."""
        waiting = [
            d
            for id_, d in list(self._held.items())
            if id_ not in self._started and id_ != keep and id_ not in self._handed_back
        ]
        self._handed_back.update(d.id for d in waiting)  # all at once: none starts meanwhile
        for delivery in waiting:
            await self._hand_back(delivery, executed=False)
            with self._held_lock:
                self._held.pop(delivery.id, None)
        if waiting:
            log.info("handed back %d prefetched task(s)", len(waiting))

    async def _give_up(self, delivery: Delivery, exc: BaseException) -> None:
        try:
            await self.executor.give_up(delivery, exc)
        except Exception as again:  # the broker is down: it comes back when that heals
            log.error(
                "message %s could not be dead-lettered (%s: %s); handing it back",
                delivery.id,
                type(again).__name__,
                again,
            )
            await self._hand_back(delivery, executed=True)

    @staticmethod
    async def _hand_back(delivery: Delivery, *, executed: bool) -> None:
        try:
            await delivery.release(executed=executed)
        except Exception as exc:  # the lease will expire and it will be claimed again
            log.warning(
                "could not hand back %s (%s); it returns when its lease expires", delivery.id, exc
            )

    # -- remote control (aqueue/core/remote.py runs these for the fleet's commands) ------

    def running_ids(self) -> set[str]:
        """Ids of the tasks running now (admitted past their rate and concurrency limits)."""
        return set(self.executor.jobs)

    def held_ids(self) -> list[str]:
        """Ids of every delivery held: running, and claimed but waiting for a slot."""
        with self._held_lock:
            return list(self._held)

    def _message(self, delivery: Delivery) -> MessageIn | None:
        try:
            return decode_message(delivery.body, self.app.conf.max_message_bytes)
        except DecodeError:
            return None

    def describe_tasks(self, *, active: bool) -> list[dict[str, Any]]:
        """Running tasks (``active``) or held ones waiting to run, as ``inspect`` shows them
        (Celery's fields); arguments only with ``worker_inspect_arguments``."""
        jobs = self.executor.jobs
        out: list[dict[str, Any]] = []
        if active:
            for job in list(jobs.values()):
                info = self._task_info(job.msg, job.delivery.body, started=job.started or None)
                info["acknowledged"] = True
                info["delivery_info"]["redelivered"] = job.delivery.delivery_count > 1
                out.append(info)
            return out
        with self._held_lock:
            waiting = [d for tid, d in self._held.items() if tid not in jobs]
        for delivery in waiting:
            msg = self._message(delivery)
            if msg is not None:
                info = self._task_info(msg, delivery.body, started=None)
                info["delivery_info"]["redelivered"] = delivery.delivery_count > 1
                out.append(info)
        return out

    def _task_info(self, msg: MessageIn, body: bytes, *, started: float | None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": msg.id,
            "name": msg.task,
            "type": msg.task,
            "hostname": self.hostname,
            "time_start": started,
            "acknowledged": False,
            "worker_pid": os.getpid(),
            "queue": msg.queue,
            "eta": msg.eta,
            "expires": msg.expires,
            "retries": msg.retries,
            "priority": msg.priority,
            "root_id": msg.root_id or msg.id,
            "parent_id": msg.parent_id,
            "delivery_info": {
                "exchange": msg.exchange,
                "routing_key": msg.routing_key or msg.queue,
                "priority": msg.priority,
                "redelivered": False,
            },
            "args": None,
            "kwargs": None,
        }
        if self.app.conf.worker_inspect_arguments:
            args, kwargs = raw_arguments(msg, format_of(body))  # reprs, as events give them
            info["args"] = bounded_repr(args)
            info["kwargs"] = bounded_repr(kwargs)
        return info

    async def describe_scheduled(self) -> list[dict[str, Any]]:
        """Messages with a future ETA in this worker's queues (``inspect scheduled``).

        They wait on the broker, not in a worker (so a ``kill -9`` loses none): every
        worker consuming a queue lists that queue's. A broker that cannot read them
        without taking them (RabbitMQ's delay queues) lists none.
        """
        broker = self.app.broker
        if not isinstance(broker, ListsScheduled):
            return []
        out: list[dict[str, Any]] = []
        for queue in list(self.queues):
            for eta, body in await broker.scheduled(queue, _SCHEDULED_LISTED):
                try:
                    msg = decode_message(body, self.app.conf.max_message_bytes)
                except DecodeError:
                    continue
                out.append(
                    {
                        "eta": eta,
                        "priority": msg.priority,
                        "request": self._task_info(msg, body, started=None),
                    }
                )
        return out

    def held_matching(self, match: Callable[[str], bool]) -> list[str]:
        """Ids of held deliveries whose task name ``match`` accepts."""
        with self._held_lock:
            held = list(self._held.values())
        ids = []
        for delivery in held:
            msg = self._message(delivery)
            if msg is not None and match(msg.task):
                ids.append(delivery.id)
        return ids

    def revoke_held(self, ids: Sequence[str], *, terminate: bool) -> list[str]:
        """Note ``ids`` as revoked; stop those held here that wait for a slot, and those
        running when ``terminate``. Returns the ids stopped."""
        stopped = []
        running = self.executor.jobs
        for tid in ids:
            self.revoked_ids.pop(tid, None)
            self.revoked_ids[tid] = None
            handler = self._handlers.get(tid)
            if handler is None or handler.done():
                continue
            if tid in running and not terminate:
                continue
            self._terminated.add(tid)
            handler.cancel()
            stopped.append(tid)
        while len(self.revoked_ids) > _REVOKED_KEPT:
            del self.revoked_ids[next(iter(self.revoked_ids))]
        return stopped

    async def _queues_changed(self) -> None:
        """Claim with the new queue list at once; return once the registry lists it."""
        claim = self._claim_in_flight
        if claim is not None and not claim.done():
            claim.cancel()  # cancel-safe: what it took goes back; the loop claims again
        await self.listed()

    async def listed(self) -> None:
        """Wait until the registry lists the worker's queues and concurrency as they are."""
        if self.presence is not None:
            await asyncio.to_thread(
                self.presence.update, queues=tuple(self.queues), concurrency=self.concurrency
            )

    async def consume(self, queue: str) -> bool:
        """Start consuming ``queue`` too (``control add_consumer``); ``False`` if it did."""
        if queue in self.queues:
            return False
        self._refuse_unconsumable([queue])  # the rules a starting worker's queues follow
        broker = self.app.broker
        if isinstance(broker, RoutesByExchange):
            await broker.declare_queues([queue])
        self.queues.append(queue)
        log.warning("worker %s now consumes queue %s too", self.hostname, queue)
        await self._queues_changed()
        return True

    async def cancel_consume(self, queue: str) -> bool:
        """Stop consuming ``queue`` (``control cancel_consumer``); ``False`` if it did not.
        What was claimed from it runs; a broker that buffers (RabbitMQ) hands back the rest.
        """
        if queue not in self.queues:
            return False
        if self.queues == [queue]:
            raise ControlError(f"{queue!r} is the only queue this worker consumes")
        self.queues.remove(queue)
        log.warning("worker %s no longer consumes queue %s", self.hostname, queue)
        await self._queues_changed()
        broker = self.app.broker
        if isinstance(broker, StopsConsuming):
            await broker.stop_consuming(queue)
        return True

    def resize(self, size: int) -> int:
        """Run up to ``size`` tasks at once (``control pool_grow`` / ``pool_shrink``).

        Growing frees slots at once; shrinking takes slots as running tasks end (none is
        stopped). The prefetch follows unless it was given explicitly.
        """
        if size < 1:
            raise ControlError(f"the pool cannot shrink below 1 (asked for {size})")
        delta = size - self.concurrency
        self.concurrency = size
        while delta > 0 and self._shrinking:  # undo a pending shrink first
            taker = self._shrinking.pop()
            if taker.done() and not taker.cancelled():
                self._slots.release()  # it holds a slot: give it back
            else:
                taker.cancel()
            delta -= 1
        for _ in range(delta):
            self._slots.release()
        for _ in range(-delta):
            self._shrinking.append(asyncio.create_task(self._slots.acquire()))
        if not self._prefetch_explicit:
            self.prefetch = size * self.app.conf.worker_prefetch_multiplier
        self.prefetch = max(self.prefetch, size)
        self._room.set()
        log.warning("worker %s pool resized to %d", self.hostname, size)
        return size

    def set_events(self, on: bool) -> None:
        """Send task events or stop (``control enable_events`` / ``disable_events``)."""
        if on:
            self.events.enable()
        else:
            self.events.disable()

    # -- leases -------------------------------------------------------------------------

    def _held_leases(self) -> list[Lease]:
        """The leases held now (the presence thread lists them at each heartbeat)."""
        with self._held_lock:
            return [d.lease for d in self._held.values()]

    def _leases_to_renew(self) -> list[Lease]:
        """The held leases the heartbeat thread renews: with short claim leases, only
        those a presence beat has listed (the beat renews the others when it lists them)."""
        leases = self._held_leases()
        presence = self.presence
        if self._claim_lease < self.lease_seconds and presence is not None:
            return presence.listed(leases)
        return leases

    def _renew_forever(self, broker: Broker) -> None:
        """Heartbeat thread: renew every held lease each third of the lease length."""
        interval = self.lease_seconds / 3
        while not self._heartbeat_stop.wait(interval):
            leases = self._leases_to_renew()
            if not leases:
                continue
            executor = self._executor
            if executor is not None and executor.slots_held:
                try:
                    executor.throttle.renew_slots(
                        list(executor.slots_held.values()), self.lease_seconds
                    )
                except Exception as exc:
                    log.warning("slot renewal failed (%s: %s)", type(exc).__name__, exc)
            t0 = time.monotonic()
            try:
                lost = broker.renew(leases, self.lease_seconds)
            except Exception as exc:
                log.warning("lease renewal failed (%s: %s)", type(exc).__name__, exc)
                continue
            if lost:
                self.lost_leases += len(lost)
                log.warning(
                    "%d lease(s) lost (e.g. %s): another worker may run them", len(lost), lost[0].id
                )
            elapsed = time.monotonic() - t0
            if elapsed > interval:
                log.warning("lease renewal took %.1fs, longer than its interval", elapsed)
