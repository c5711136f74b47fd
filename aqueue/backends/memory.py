"""``memory://`` result backend: in-process, push-based, with TTLs and fencing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.states import supersedes


@dataclass(slots=True)
class _Record:
    state: str
    attempt: int
    body: bytes
    expires_at: float | None


class _Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, _Record] = {}
        self.watchers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[bytes]]]] = {}
        self.chords: dict[str, tuple[set[str], list[bool], float | None]] = {}

    def live(self, task_id: str, now: float) -> _Record | None:
        rec = self.records.get(task_id)
        if rec is not None and rec.expires_at is not None and rec.expires_at <= now:
            del self.records[task_id]
            return None
        return rec


_RESULTS: dict[str, _Results] = {}
_RESULTS_LOCK = threading.Lock()


class MemoryBackend:
    """In-process results; ``memory://`` (``memory://name`` for a separate store)."""

    def __init__(self, url: str = "memory://", **options: Any) -> None:
        self.url = url
        with _RESULTS_LOCK:
            self._results = _RESULTS.setdefault(url, _Results())

    def __repr__(self) -> str:
        return f"<MemoryBackend {self.url}>"

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def store(
        self, task_id: str, record: bytes, *, state: str, attempt: int, ttl: float | None
    ) -> bool:
        results = self._results
        now = time.time()
        with results.lock:
            current = results.live(task_id, now)
            if current is not None and not supersedes(attempt, current.attempt, current.state):
                return False
            results.records[task_id] = _Record(
                state, attempt, record, None if ttl is None else now + ttl
            )
            watchers = list(results.watchers.get(task_id, ()))
        for loop, queue in watchers:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, record)
            except RuntimeError:  # the watcher's loop is closed
                pass
        return True

    async def get(self, task_id: str) -> bytes | None:
        with self._results.lock:
            rec = self._results.live(task_id, time.time())
            return rec.body if rec is not None else None

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        now = time.time()
        with self._results.lock:
            recs = [self._results.live(t, now) for t in task_ids]
        return [r.body if r is not None else None for r in recs]

    async def watch(self, task_id: str) -> AsyncGenerator[bytes, None]:
        results = self._results
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        entry = (asyncio.get_running_loop(), queue)
        with results.lock:
            results.watchers.setdefault(task_id, set()).add(entry)
            rec = results.live(task_id, time.time())
            if rec is not None:
                queue.put_nowait(rec.body)
        try:
            while True:
                yield await queue.get()
        finally:
            with results.lock:
                watchers = results.watchers.get(task_id)
                if watchers is not None:
                    watchers.discard(entry)
                    if not watchers:
                        del results.watchers[task_id]

    async def chord_join(
        self, chord_id: str, member_id: str, size: int, *, failed: bool, ttl: float | None
    ) -> bool:
        now = time.time()
        with self._results.lock:
            entry = self._results.chords.get(chord_id)
            if entry is None or (entry[2] is not None and entry[2] <= now):
                entry = (set(), [False], None if ttl is None else now + ttl)
                self._results.chords[chord_id] = entry
            members, fired, _ = entry
            members.add(member_id)
            if fired[0] or not (failed or len(members) >= size):
                return False
            fired[0] = True
            return True

    async def forget(self, task_id: str) -> None:
        with self._results.lock:
            self._results.records.pop(task_id, None)
