"""What the dashboard reads from and does to the fleet, beside events: the worker registry,
inspect replies, queue lengths, dead letters, schedules, and the actions.

The pages and Flower's API both call these, so an action means the same in both. Nothing
here talks to a broker directly: everything goes through ``app.control``, ``app.broker``'s
protocol and the result handles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aqueue.beat.admin import BeatSchedule
from aqueue.core.control import registry_of
from aqueue.core.errors import ConfigurationError

if TYPE_CHECKING:
    from aqueue.core.app import App

    from .state import State

log = logging.getLogger("aqueue.web")

#: the inspect calls behind Flower's ``/api/workers`` (its keys)
INSPECT_KEYS = (
    "stats",
    "active_queues",
    "registered",
    "scheduled",
    "active",
    "reserved",
    "revoked",
    "conf",
)


@dataclass(slots=True)
class Fleet:
    """The fleet as the dashboard sees it, with a short cache of inspect replies (each
    ``/api/workers`` would otherwise wait on every worker's answers)."""

    app: App
    state: State
    inspect_timeout: float = 1.0
    #: how long an action waits for the worker's reply (a pool change is answered once the
    #: registry lists the new size: up to a heartbeat later)
    action_timeout: float = 5.0
    cache_seconds: float = 5.0
    _inspected: dict[str, dict[str, Any]] = field(default_factory=dict)
    _inspected_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def registry(self) -> list[dict[str, Any]] | None:
        """The registry's workers (``WorkerStatus.to_dict()``), ``None`` without one."""
        try:
            if await registry_of(self.app) is None:
                return None
            return [w.to_dict() for w in await self.app.control.workers()]
        except ConfigurationError:
            return None

    async def names(self) -> list[str]:
        """Node names of the workers known: the registry's and those events showed."""
        found = {w["hostname"] for w in await self.registry() or []}
        found.update(self.state.workers)
        return sorted(found)

    async def inspect(self, *, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """``{node: {"stats": ..., "registered": ..., ...}}`` from every worker that answered
        (cached for ``cache_seconds`` unless ``refresh``)."""
        async with self._lock:
            if not refresh and time.monotonic() - self._inspected_at < self.cache_seconds:
                return self._inspected
            inspect = self.app.control.inspect(timeout=self.inspect_timeout)
            calls = [getattr(inspect, key)() for key in INSPECT_KEYS]
            replies = await asyncio.gather(*calls, return_exceptions=True)
            out: dict[str, dict[str, Any]] = {}
            for key, reply in zip(INSPECT_KEYS, replies, strict=True):
                if isinstance(reply, BaseException):
                    log.debug("dashboard: inspect %s failed (%s)", key, type(reply).__name__)
                    continue
                for node, value in reply.items():
                    out.setdefault(node, {})[key] = value
            for info in out.values():
                info["timestamp"] = time.time()
            self._inspected, self._inspected_at = out, time.monotonic()
            return out

    async def queues(self) -> list[dict[str, Any]]:
        """Flower's ``active_queues``: ``[{"name", "messages"}]`` for the queues the
        workers consume and the default one."""
        names = {self.app.conf.task_default_queue}
        for w in await self.registry() or []:
            names.update(w.get("queues") or ())
        broker = await self.app.connected_broker()
        out = []
        for name in sorted(names):
            try:
                size = await broker.size(name)
            except Exception as exc:
                log.debug("dashboard: size of %s unreadable (%s)", name, type(exc).__name__)
                continue
            out.append({"name": name, "messages": size})
        return out

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters (no bodies: they hold task arguments)."""
        letters = await self.app.control.dead_letters.list(limit=limit)
        return [
            {"id": d.id, "queue": d.queue, "reason": d.reason, "at": d.at, "size": d.size}
            for d in letters
        ]

    async def schedules(self, *, show_arguments: bool) -> list[dict[str, Any]] | None:
        """Beat's entries (``None`` when they cannot be read: no backend that keeps them);
        arguments and last results left out unless ``show_arguments``."""
        try:
            async with BeatSchedule(self.app) as schedule:
                entries = await schedule.entries(results=True)
        except Exception as exc:
            log.debug("dashboard: schedules unreadable (%s)", type(exc).__name__)
            return None
        out = []
        for entry in entries:
            info = entry.as_dict()
            if not show_arguments:
                info["args"] = info["kwargs"] = info["last_result"] = None
            out.append(info)
        return out

    # -- actions -----------------------------------------------------------------------------

    async def revoke(self, task_id: str, *, terminate: bool = False) -> None:
        await self.app.control.revoke(task_id, terminate=terminate)

    async def rate_limit(
        self, task_name: str, rate: str, worker: str | None
    ) -> list[dict[str, Any]]:
        return await self.app.control.rate_limit(
            task_name, rate, destination=[worker] if worker else None, timeout=self.action_timeout
        )

    async def pool(self, worker: str, n: int, *, grow: bool) -> list[dict[str, Any]]:
        call = self.app.control.pool_grow if grow else self.app.control.pool_shrink
        return await call(n, destination=[worker], timeout=self.action_timeout)

    async def shutdown(self, worker: str) -> None:
        await self.app.control.shutdown(destination=[worker])

    async def replay(self, task_id: str) -> None:
        await self.app.control.dead_letters.replay(task_id)
