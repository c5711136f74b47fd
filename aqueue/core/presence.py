"""A worker's presence in the broker's registry: heartbeats, and dead workers' leases freed.

A worker on a broker with :class:`~aqueue.core.protocols.WorkerRegistry` runs one thread
that beats every ``worker_heartbeat_interval`` seconds (its id, host, pid, queues and the
leases it holds) and then reaps: a worker whose beats stopped ``worker_lost_timeout``
seconds ago is marked lost and its leases are handed back at once, so after ``kill -9``
its tasks run again within seconds instead of when their lease expires. A thread, not a
task of the event loop, for the reason lease renewal is one: a blocked loop must not make
a live worker look dead. The claim path only sets an event (:meth:`Presence.nudge`) so
that leases just claimed are listed at the next beat without waiting a whole interval.

See docs/fleet.md.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from ..__about__ import __version__
from .protocols import (
    Broker,
    KeepsWorkers,
    Lease,
    ResultBackend,
    WorkerInfo,
    WorkerRegistry,
    WorkerSeen,
)
from .signed_results import underlying

log = logging.getLogger("aqueue.worker")

#: least seconds between two beats (a claim nudges an early one)
_MIN_GAP = 0.2
#: how many lost timeouts a silent worker's entry stays listed as lost, at least an hour
_KEEP_FACTOR = 100
_KEEP_MIN = 3600.0


def pick_registry(broker: Broker, backend: ResultBackend | None) -> WorkerRegistry | None:
    """Where workers register: the broker, else (for a broker whose connection is the
    lease, RabbitMQ) the result backend, else nowhere. Only a broker's registry hands back
    a lost worker's leases; a backend's lists workers and marks lost ones."""
    if isinstance(broker, KeepsWorkers):
        return broker.worker_registry
    backend = underlying(backend)
    if not broker.capabilities.leases and isinstance(backend, KeepsWorkers):
        return backend.worker_registry
    return None


def new_worker_id(hostname: str) -> str:
    """A worker id unique per worker object: ``hostname/pid/random``."""
    return f"{hostname}/{os.getpid()}/{secrets.token_hex(3)}"


def worker_info(
    worker_id: str, hostname: str, queues: Sequence[str], concurrency: int
) -> WorkerInfo:
    """What a starting worker registers."""
    return WorkerInfo(
        id=worker_id,
        hostname=hostname,
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=tuple(queues),
        concurrency=concurrency,
        started=time.time(),
        versions={"aqueue": __version__, "python": sys.version.split()[0]},
    )


class Presence:
    """The heartbeat thread of one worker (see the module docstring).

    Args:
        registry: the broker, as its registry.
        info: what the worker registers.
        held: returns the leases the worker holds now (thread-safe).
        interval: seconds between beats.
        lost_after: seconds of silence after which another worker is reaped.
        renew: extends leases to the full lease (blocking; returns those lost). Given when
            claims take a short lease: each beat renews the leases it lists for the first
            time, so a lease is short only until a heartbeat has listed it.
    """

    def __init__(
        self,
        registry: WorkerRegistry,
        info: WorkerInfo,
        held: Callable[[], list[Lease]],
        *,
        interval: float,
        lost_after: float,
        renew: Callable[[list[Lease]], list[Lease]] | None = None,
    ) -> None:
        self.registry = registry
        self._renew = renew
        #: (id, token) of the leases listed and renewed so far (those still held)
        self._renewed: set[tuple[str, int]] = set()
        self.info = info
        self._held = held
        self.interval = interval
        self.lost_after = lost_after
        self._keep = max(_KEEP_MIN, lost_after * _KEEP_FACTOR)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        #: workers this one found lost (their leases handed back)
        self.reaped: list[str] = []
        #: the info the last beat wrote (or tried to)
        self._written: WorkerInfo | None = None
        self._beaten = threading.Condition()

    def start(self) -> None:
        """Register (one beat, so the worker is listed before it claims) and start beating;
        nothing once ``stop()`` was called (a stop from another thread waits for this)."""
        with self._lifecycle:
            if self._stop.is_set():
                return
            self._beat()
            self._thread = threading.Thread(target=self._run, name="aqueue-presence", daemon=True)
            self._thread.start()

    def nudge(self) -> None:
        """Leases were just claimed: beat soon, so a kill now does not strand them."""
        self._wake.set()

    def update(self, *, queues: tuple[str, ...], concurrency: int) -> None:
        """The worker's queues or concurrency changed (remote control): beat soon, and
        return once a beat wrote them (or after two intervals). Blocking."""
        info = msgspec.structs.replace(self.info, queues=queues, concurrency=concurrency)
        with self._beaten:
            self.info = info
            self._wake.set()
            # a beat under way may have read the old info: wait for one that wrote this
            self._beaten.wait_for(
                lambda: self._written is info or self._stop.is_set(),
                timeout=2 * self.interval + _MIN_GAP,
            )

    def listed(self, leases: list[Lease]) -> list[Lease]:
        """Those of ``leases`` a beat has listed (and so renewed to the full lease): the
        others are still short, and must stay so until a beat lists them, or a kill -9
        before that leaves them neither listed (the reaper hands back only what the dead
        worker's last beat listed) nor short. Any thread."""
        renewed = self._renewed
        return [lease for lease in leases if (lease.id, lease.token) in renewed]

    def stop(self) -> None:
        """Stop beating and leave the registry (a graceful stop). Blocking."""
        with self._lifecycle:  # not half way through start(): its beat would list it again
            self._stop.set()
            self._wake.set()
            thread = self._thread
        if thread is not None:
            thread.join()
        try:
            self.registry.leave(self.info.id)
        except Exception as exc:
            log.warning("could not leave the worker registry (%s: %s)", type(exc).__name__, exc)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(max(0.0, self.interval - (time.monotonic() - last)))
            if self._stop.is_set():
                return
            gap = _MIN_GAP - (time.monotonic() - last)
            if gap > 0 and self._stop.wait(gap):
                return
            self._wake.clear()
            last = time.monotonic()
            self._beat()
            self._reap()

    def _beat(self) -> None:
        """Write the worker's info and held leases, then renew those listed for the first
        time; an ``update()`` waiting for this info returns once both are done."""
        info = self.info
        try:
            self._list(info)
        finally:
            with self._beaten:
                self._written = info
                self._beaten.notify_all()

    def _list(self, info: WorkerInfo) -> None:
        leases = self._held()
        try:
            self.registry.beat(info, leases, self._keep)
        except Exception as exc:
            log.warning("heartbeat failed (%s: %s)", type(exc).__name__, exc)
            return
        if self._renew is None:
            return
        held = {(lease.id, lease.token) for lease in leases}
        fresh = [lease for lease in leases if (lease.id, lease.token) not in self._renewed]
        self._renewed &= held
        if not fresh:
            return
        try:
            self._renew(fresh)  # what was lost already the renewal thread reports
        except Exception as exc:
            log.warning("renewing new leases failed (%s: %s)", type(exc).__name__, exc)
            return
        self._renewed.update((lease.id, lease.token) for lease in fresh)

    def _reap(self) -> None:
        try:
            reaped = self.registry.reap(self.lost_after)
        except Exception as exc:
            log.warning("looking for lost workers failed (%s: %s)", type(exc).__name__, exc)
            return
        for worker_id in reaped:
            if worker_id == self.info.id:  # its own beats were late (a frozen process)
                log.warning("this worker was found lost: its leases were handed back")
            else:
                log.warning("worker %s lost (no heartbeat): its tasks were handed back", worker_id)
        self.reaped += reaped


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A worker as ``app.control.workers()`` lists it."""

    info: WorkerInfo
    last_seen: float
    held: int
    #: no heartbeat for ``worker_lost_timeout`` seconds (or found lost by another worker)
    missing: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        i = self.info
        return {
            "id": i.id,
            "hostname": i.hostname,
            "host": i.host,
            "pid": i.pid,
            "queues": list(i.queues),
            "concurrency": i.concurrency,
            "started": i.started,
            "versions": dict(i.versions),
            "last_seen": self.last_seen,
            "held": self.held,
            "missing": self.missing,
        }


def status_of(seen: Sequence[WorkerSeen], lost_after: float) -> list[WorkerStatus]:
    """Registry entries as statuses, live ones first, then by hostname."""
    now = time.time()
    out = [
        WorkerStatus(s.info, s.last_seen, s.held, s.lost or now - s.last_seen > lost_after)
        for s in seen
    ]
    out.sort(key=lambda w: (w.missing, w.info.hostname, w.info.id))
    return out
