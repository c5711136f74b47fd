"""Schedules in Redis: one hash tag per app, every change one Lua call.

Keys (``<prefix>:{beat:<app>}:`` then): ``lease`` (the holder's id, expiring: ``SET NX PX``,
renewed by the holder only), ``entries`` (hash: name -> spec), ``state`` (hash: name ->
the leader's record), ``since`` (hash: name -> when first stored), ``code`` and ``paused``
(sets of names), ``version`` (bumped on every change of an entry). The prefix is the result
backend URL's (``?prefix=``), so the schedules sit beside that app's results. The lease
expires on the Redis server's clock; no scheduler's clock is trusted for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from typing import Any, cast

from aqueue.core.errors import BackendError
from aqueue.transports.redis.clients import Link
from aqueue.transports.redis.guard import guarded
from aqueue.transports.redis.keys import KeySpace
from aqueue.transports.redis.scripts import Script, ScriptCall, command, run_scripts
from aqueue.transports.redis.settings import parse_settings

from .store import PutOutcome, RemoveOutcome, Snapshot, StoredEntry

__all__ = ["RedisBeatStore"]

_LUA = files(__package__) / "lua"
ACQUIRE = Script.load(_LUA / "acquire.lua")
RELEASE = Script.load(_LUA / "release.lua")
RECORD = Script.load(_LUA / "record.lua")
PUT = Script.load(_LUA / "put.lua")
REMOVE = Script.load(_LUA / "remove.lua")
PAUSE = Script.load(_LUA / "pause.lua")
SYNC = Script.load(_LUA / "sync.lua")
SNAPSHOT = Script.load(_LUA / "snapshot.lua")


class RedisBeatStore:
    """A :class:`~aqueue.beat.store.BeatStore` on Redis (the app's result backend URL)."""

    def __init__(self, url: str, app_name: str) -> None:
        self._settings = parse_settings(url, {}, what="beat store")
        self._link = Link(self._settings, BackendError)
        base = KeySpace(self._settings.prefix).beat(app_name)
        self.lease = base + "lease"
        self._entries = base + "entries"
        self._state = base + "state"
        self._since = base + "since"
        self._code = base + "code"
        self._paused = base + "paused"
        self._version = base + "version"

    def __repr__(self) -> str:
        return f"<RedisBeatStore {self._settings.redacted} key={self.lease!r}>"

    async def _run(self, what: str, script: Script, keys: list[str], args: list[Any]) -> Any:
        client = await self._link.get()
        calls: list[ScriptCall] = [(script, keys, args)]
        [reply] = await guarded(
            self._settings, f"beat {what}", lambda: run_scripts(client, calls), error=BackendError
        )
        return reply

    async def connect(self) -> None:
        await self._link.connect()

    async def close(self) -> None:
        await self._link.close()

    async def acquire(self, holder: str, seconds: float, now: float) -> bool:
        millis = max(1, round(seconds * 1000))
        return bool(await self._run("acquire", ACQUIRE, [self.lease], [holder, millis]))

    async def release(self, holder: str) -> None:
        await self._run("release", RELEASE, [self.lease], [holder])

    async def version(self) -> int:
        client = await self._link.get()
        raw = await guarded(
            self._settings,
            "beat version",
            lambda: command(client, "GET", self._version),
            error=BackendError,
        )
        return int(raw or 0)

    async def snapshot(self) -> Snapshot:
        keys = [
            self.lease,
            self._entries,
            self._code,
            self._since,
            self._state,
            self._paused,
            self._version,
        ]
        version, holder, entries, code, since, state, paused = await self._run(
            "snapshot", SNAPSHOT, keys, []
        )
        specs = _pairs(entries)
        sinces = _pairs(since)
        states = _pairs(state)
        code_names = {n.decode() for n in code}
        paused_names = {n.decode() for n in paused}
        out = {
            name: StoredEntry(
                spec,
                name in code_names,
                name in paused_names,
                int(sinces.get(name, b"0")),
                states.get(name),
            )
            for name, spec in specs.items()
        }
        return Snapshot(int(version), out, holder.decode() or None)

    async def sync_code(self, specs: Mapping[str, bytes], since: int) -> list[str]:
        keys = [self._entries, self._code, self._since, self._state, self._paused, self._version]
        args: list[Any] = [since]
        for name, spec in specs.items():
            args += [name, spec]
        changed = await self._run("sync", SYNC, keys, args)
        return [name.decode() for name in changed]

    async def put(self, name: str, spec: bytes, since: int, *, replace: bool) -> PutOutcome:
        keys = [self._entries, self._code, self._since, self._version]
        outcome = await self._run("put", PUT, keys, [name, spec, since, "1" if replace else "0"])
        return cast(PutOutcome, outcome.decode())

    async def remove(self, name: str) -> RemoveOutcome:
        keys = [self._entries, self._code, self._since, self._state, self._paused, self._version]
        outcome = await self._run("remove", REMOVE, keys, [name])
        return cast(RemoveOutcome, outcome.decode())

    async def set_paused(self, name: str, paused: bool) -> bool:
        keys = [self._entries, self._paused, self._version]
        return bool(await self._run("pause", PAUSE, keys, [name, "1" if paused else "0"]))

    async def record(self, holder: str, name: str, state: bytes, now: float) -> bool:
        keys = [self.lease, self._entries, self._state]
        return bool(await self._run("record", RECORD, keys, [holder, name, state]))


def _pairs(flat: list[bytes]) -> dict[str, bytes]:
    """A flat HGETALL reply as a dict with str keys."""
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
