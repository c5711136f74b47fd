"""A store that misbehaves on cue (a test hook): it delegates to a real store, and can
freeze (every call waits, as in a process paused past its lease) or crash the scheduler
right after it published (the next ``record`` raises, and the lease is never given up, as
after ``kill -9``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aqueue.beat.store import BeatStore, PutOutcome, RemoveOutcome, Snapshot
from aqueue.core.errors import BackendError


class Killed(BaseException):
    """The scheduler "died" here (not an error it could handle)."""


class FaultyStore:
    def __init__(self, inner: BeatStore) -> None:
        self.inner = inner
        self.thawed = asyncio.Event()
        self.thawed.set()
        #: raise Killed at the next record(), then play dead
        self.crash_on_record = False
        self.dead = False
        #: records refused by the real store (fencing at work)
        self.refused = 0
        #: every call fails, as with the server down
        self.down = False

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    async def _gate(self) -> None:
        await self.thawed.wait()
        if self.down:
            raise BackendError("beat store: connection refused (the test's outage)")

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def acquire(self, holder: str, seconds: float, now: float) -> bool:
        await self._gate()
        return await self.inner.acquire(holder, seconds, now)

    async def release(self, holder: str) -> None:
        if not self.dead:  # the dead do not give their lease up
            await self.inner.release(holder)

    async def version(self) -> int:
        await self._gate()
        return await self.inner.version()

    async def snapshot(self) -> Snapshot:
        await self._gate()
        return await self.inner.snapshot()

    async def sync_code(self, specs: Mapping[str, bytes], since: int) -> list[str]:
        await self._gate()
        return await self.inner.sync_code(specs, since)

    async def put(self, name: str, spec: bytes, since: int, *, replace: bool) -> PutOutcome:
        return await self.inner.put(name, spec, since, replace=replace)

    async def remove(self, name: str) -> RemoveOutcome:
        return await self.inner.remove(name)

    async def set_paused(self, name: str, paused: bool) -> bool:
        return await self.inner.set_paused(name, paused)

    async def record(self, holder: str, name: str, state: bytes, now: float) -> bool:
        await self._gate()
        if self.crash_on_record:
            self.dead = True
            raise Killed
        stored = await self.inner.record(holder, name, state, now)
        self.refused += not stored
        return stored
