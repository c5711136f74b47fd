"""``memory://``: an in-process broker with the same semantics as the others.

For users' tests and for embedding; state lives in this process only. ``memory://name``
selects a separate named store; brokers and backends built from the same URL share it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import ConfigurationError
from ..core.protocols import (
    DEAD_LETTER_BODY_LIMIT,
    BaseDelivery,
    Capabilities,
    DeadLetter,
    Delivery,
    Lease,
    Outgoing,
    WorkerInfo,
    WorkerSeen,
)
from .memory_topics import BrokerTopics, MemoryTopics
from .wakeup import Wakeup


@dataclass(slots=True)
class _Entry:
    id: str
    queue: str
    body: bytes
    priority: int
    due: float
    seq: int
    deliveries: int = 0
    lease_until: float | None = None
    #: fencing token: bumped by every claim, never reset (deliveries is reset by requeue)
    token: int = 0


@dataclass(slots=True)
class _Worker:
    info: WorkerInfo
    seen: float
    leases: list[Lease]
    keep_until: float
    lost: bool = False


class _Store:
    """All queues of one ``memory://`` URL, guarded by one lock (renew comes from a thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wakeup = Wakeup()
        self.entries: dict[str, _Entry] = {}
        self.ready: dict[str, list[tuple[int, int, str]]] = {}  # (-priority, seq, id)
        self.delayed: list[tuple[float, int, str]] = []  # (due, seq, id)
        self.leased: list[tuple[float, str, int]] = []  # (lease_until, id, token)
        self.tokens = itertools.count(1)
        self.dead: list[DeadLetter] = []
        self.seq = itertools.count()
        #: the worker registry, by worker id
        self.workers: dict[str, _Worker] = {}
        #: control, replies and events (:class:`~aqueue.core.protocols.KeepsTopics`)
        self.topics = MemoryTopics()

    def push_ready(self, entry: _Entry) -> None:
        entry.seq = next(self.seq)
        heapq.heappush(
            self.ready.setdefault(entry.queue, []), (-entry.priority, entry.seq, entry.id)
        )

    def schedule(self, entry: _Entry, now: float) -> None:
        entry.lease_until = None
        if entry.due > now:
            entry.seq = next(self.seq)
            heapq.heappush(self.delayed, (entry.due, entry.seq, entry.id))
        else:
            self.push_ready(entry)

    def promote(self, now: float) -> None:
        """Move due delayed messages and expired leases to their ready queues."""
        while self.delayed and self.delayed[0][0] <= now:
            _, seq, id_ = heapq.heappop(self.delayed)
            entry = self.entries.get(id_)
            if entry is not None and entry.seq == seq and entry.lease_until is None:
                self.push_ready(entry)
        while self.leased and self.leased[0][0] <= now:
            _, id_, token = heapq.heappop(self.leased)
            entry = self.entries.get(id_)
            if entry is None or entry.token != token or entry.lease_until is None:
                continue  # settled or re-leased since
            if entry.lease_until <= now:
                entry.lease_until = None
                self.push_ready(entry)
            else:  # renewed: track the new deadline
                heapq.heappush(self.leased, (entry.lease_until, id_, token))

    def next_event(self, now: float) -> float | None:
        times = [t for t in (self.delayed[:1] + self.leased[:1])]
        return min(t[0] for t in times) - now if times else None

    def holder(self, lease: Lease) -> _Entry | None:
        entry = self.entries.get(lease.id)
        if entry is None or entry.token != lease.token or entry.lease_until is None:
            return None
        return entry


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


def store_for(url: str) -> _Store:
    """The process-wide store of a ``memory://`` URL."""
    with _STORES_LOCK:
        return _STORES.setdefault(url, _Store())


class _Registry:
    """The in-process worker registry (:class:`~aqueue.core.protocols.WorkerRegistry`) of
    one memory store."""

    def __init__(self, store: _Store) -> None:
        self._store = store

    def beat(self, info: WorkerInfo, leases: Sequence[Lease], keep: float) -> None:
        """Record that ``info`` is alive, holding ``leases``."""
        now = time.time()
        with self._store.lock:
            self._store.workers[info.id] = _Worker(info, now, list(leases), now + keep)

    def reap(self, lost_after: float) -> list[str]:
        """Mark workers silent for ``lost_after`` seconds lost; hand back their leases."""
        store = self._store
        now = time.time()
        lost: list[str] = []
        with store.lock:
            for worker_id, worker in list(store.workers.items()):
                if worker.keep_until < now:
                    del store.workers[worker_id]
                elif not worker.lost and worker.seen < now - lost_after:
                    worker.lost = True
                    lost.append(worker_id)
                    for lease in worker.leases:
                        entry = store.holder(lease)
                        if entry is not None:
                            entry.lease_until = None
                            store.push_ready(entry)
        if lost:
            store.wakeup.notify()
        return lost

    def leave(self, worker_id: str) -> None:
        """Remove the entry."""
        with self._store.lock:
            self._store.workers.pop(worker_id, None)

    async def workers(self) -> list[WorkerSeen]:
        """Every entry, live or lost."""
        with self._store.lock:
            return [
                WorkerSeen(w.info, w.seen, len(w.leases), w.lost)
                for w in self._store.workers.values()
            ]


class MemoryDelivery(BaseDelivery):
    """A message claimed from a :class:`MemoryBroker`."""

    __slots__ = ("_store",)

    def __init__(self, store: _Store, entry: _Entry) -> None:
        super().__init__(Lease(entry.id, entry.queue, entry.token), entry.body, entry.deliveries)
        self._store = store

    async def ack(self) -> bool:
        store = self._store
        with store.lock:
            if store.holder(self.lease) is None:
                return False
            del store.entries[self.lease.id]
        return True

    async def release(self, *, executed: bool) -> bool:
        store = self._store
        with store.lock:
            entry = store.holder(self.lease)
            if entry is None:
                return False
            if not executed:
                entry.deliveries -= 1
            entry.lease_until = None
            store.push_ready(entry)
        store.wakeup.notify()
        return True

    async def requeue(self, body: bytes, *, eta: float | None) -> bool:
        store = self._store
        now = time.time()
        with store.lock:
            entry = store.holder(self.lease)
            if entry is None:
                return False
            entry.body = body
            entry.deliveries = 0
            entry.due = eta or now
            store.schedule(entry, now)
        store.wakeup.notify()
        return True

    async def dead_letter(self, reason: str) -> bool:
        store = self._store
        with store.lock:
            entry = store.holder(self.lease)
            if entry is None:
                return False
            del store.entries[entry.id]
            body = entry.body
            store.dead.append(
                DeadLetter(
                    entry.id,
                    entry.queue,
                    reason,
                    body[:DEAD_LETTER_BODY_LIMIT],
                    time.time(),
                    size=len(body),
                )
            )
        return True


class MemoryBroker:
    """In-process broker; ``memory://`` (or ``memory://name`` for a separate store)."""

    capabilities = Capabilities(shared=False)

    def __init__(self, url: str = "memory://", **options: Any) -> None:
        if options:
            raise ConfigurationError(
                f"the memory broker takes no options; got {', '.join(sorted(options))}"
            )
        self.url = url
        self._store = store_for(url)
        #: its worker registry (:class:`~aqueue.core.protocols.KeepsWorkers`)
        self.worker_registry = _Registry(self._store)
        #: control, replies and events (:class:`~aqueue.core.protocols.KeepsTopics`)
        self.topics = BrokerTopics(self._store.topics)

    def __repr__(self) -> str:
        return f"<MemoryBroker {self.url}>"

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        await self.topics.close()

    async def publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        store = self._store
        now = time.time()
        added: list[bool] = []
        with store.lock:
            for m in messages:
                if m.id in store.entries:
                    added.append(False)
                    continue
                entry = _Entry(m.id, m.queue, m.body, m.priority, m.eta or now, 0)
                store.entries[m.id] = entry
                store.schedule(entry, now)
                added.append(True)
        store.wakeup.notify()
        return added

    async def claim(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        lease_seconds: float,
        owner: str,
        timeout: float,
    ) -> list[Delivery]:
        store = self._store
        deadline = time.monotonic() + timeout
        while True:
            now = time.time()
            out: list[Delivery] = []
            with store.lock:
                store.promote(now)
                for queue in queues:
                    heap = store.ready.get(queue)
                    while heap and len(out) < limit:
                        _, seq, id_ = heapq.heappop(heap)
                        entry = store.entries.get(id_)
                        if entry is None or entry.seq != seq or entry.lease_until is not None:
                            continue  # stale heap item
                        entry.deliveries += 1
                        entry.token = next(store.tokens)
                        entry.lease_until = now + lease_seconds
                        heapq.heappush(store.leased, (entry.lease_until, id_, entry.token))
                        out.append(MemoryDelivery(store, entry))
                next_event = store.next_event(now)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            wait = remaining if next_event is None else min(remaining, max(next_event, 0.001))
            await store.wakeup.wait(wait)

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        store = self._store
        lost: list[Lease] = []
        until = time.time() + lease_seconds
        with store.lock:
            for lease in leases:
                entry = store.holder(lease)
                if entry is None:
                    lost.append(lease)
                else:
                    entry.lease_until = until
        return lost

    async def size(self, queue: str) -> int:
        with self._store.lock:
            return sum(1 for e in self._store.entries.values() if e.queue == queue)

    async def peek_head(self, queue: str) -> bytes | None:
        """The ready message the next claim of ``queue`` would take (``PeeksHead``)."""
        store = self._store
        with store.lock:
            store.promote(time.time())
            for _, seq, id_ in sorted(store.ready.get(queue, ())):
                entry = store.entries.get(id_)
                if entry is not None and entry.seq == seq and entry.lease_until is None:
                    return entry.body
        return None

    async def scheduled(self, queue: str, limit: int) -> list[tuple[float, bytes]]:
        """Messages of ``queue`` waiting for their ETA (``ListsScheduled``)."""
        now = time.time()
        with self._store.lock:
            waiting = [
                (e.due, e.body)
                for e in self._store.entries.values()
                if e.queue == queue and e.lease_until is None and e.due > now
            ]
        waiting.sort(key=lambda item: item[0])
        return waiting[:limit]

    async def count_ids(self, queue: str, suffix: str) -> int:
        """Messages of ``queue`` whose id ends with ``suffix`` (``CountsIds``)."""
        with self._store.lock:
            entries = self._store.entries.values()
            return sum(1 for e in entries if e.queue == queue and e.id.endswith(suffix))

    async def purge(self, queue: str) -> int:
        store = self._store
        with store.lock:
            doomed = [
                e.id for e in store.entries.values() if e.queue == queue and e.lease_until is None
            ]
            for id_ in doomed:
                del store.entries[id_]
        return len(doomed)

    # -- dead letters (aqueue.core.protocols.ReplaysDeadLetters) ---------------------------

    async def replay_dead_letter(self, letter: DeadLetter, message: Outgoing) -> bool:
        """Remove ``letter`` and enqueue ``message`` as new, in one step."""
        store = self._store
        with store.lock:
            if message.id in store.entries or letter not in store.dead:
                return False
            store.dead.remove(letter)
            now = time.time()
            entry = _Entry(message.id, letter.queue, message.body, message.priority, now, 0)
            store.entries[message.id] = entry
            store.schedule(entry, now)
        store.wakeup.notify()
        return True

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue`` (or all)."""
        store = self._store
        with store.lock:
            kept = [d for d in store.dead if queue is not None and d.queue != queue]
            removed = len(store.dead) - len(kept)
            store.dead[:] = kept
        return removed

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        with self._store.lock:
            items = [d for d in reversed(self._store.dead) if queue is None or d.queue == queue]
        return items[:limit]
