"""Where schedules live: entries, per-entry state and the leader lease, in the result backend.

Every scheduler of an app reads the same store, so an entry added at run time is seen by
all of them without a restart, and a leader that dies leaves its successor the last slot
it dealt with. :func:`store_for` picks the store from the app's result backend URL:
``redis://`` (:mod:`.redis_store`), ``sqlite://`` (:mod:`.sqlite_store`) or ``memory://``
(this module: one process). Stores move bytes; :mod:`.entries` encodes them.

What every store keeps:

* the **lease** is held by at most one holder at a time; ``acquire`` takes it when it is
  free or expired and renews it for its holder, atomically;
* ``record`` (the leader's writes of entry state) is **fenced**: refused unless the writer
  holds the lease, so a leader that was paused past its lease cannot overwrite what its
  successor recorded;
* every change of an entry (added, replaced, removed, paused, resumed, synced from code)
  bumps a **version**, which schedulers poll cheaply to know when to reload.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from aqueue.core.errors import ConfigurationError
from aqueue.core.urls import redact, scheme_of

if TYPE_CHECKING:
    from aqueue.core.app import App

__all__ = [
    "BeatStore",
    "MemoryBeatStore",
    "PutOutcome",
    "RemoveOutcome",
    "Snapshot",
    "StoredEntry",
    "store_for",
]

PutOutcome = Literal["added", "replaced", "exists", "code"]
RemoveOutcome = Literal["removed", "missing", "code"]


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One entry as stored."""

    spec: bytes
    #: defined in code (``beat_schedule``, ``@app.periodic``): synced at every start
    code: bool
    paused: bool
    #: microseconds since the epoch when it was first stored: slots after it are due
    since: int
    #: the leader's record (:class:`~aqueue.beat.entries.EntryState`), if any
    state: bytes | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every entry of an app, read at once."""

    version: int
    entries: dict[str, StoredEntry]
    #: the current lease holder (``None``: nobody leads)
    leader: str | None


@runtime_checkable
class BeatStore(Protocol):
    """The schedules and the leader lease of one app."""

    async def connect(self) -> None:
        """Open connections, create tables; idempotent."""

    async def close(self) -> None:
        """Close connections; idempotent."""

    async def acquire(self, holder: str, seconds: float, now: float) -> bool:
        """Take the lease for ``seconds`` if it is free or expired, or renew it if
        ``holder`` holds it; whether ``holder`` holds it now. ``now`` is the scheduler's
        clock (stores with a server clock use their own)."""

    async def release(self, holder: str) -> None:
        """Give the lease up if ``holder`` holds it (a successor need not wait for expiry)."""

    async def version(self) -> int:
        """A number that changes whenever an entry is added, changed or removed."""

    async def snapshot(self) -> Snapshot:
        """Every entry with its state, and the lease holder."""

    async def sync_code(self, specs: Mapping[str, bytes], since: int) -> list[str]:
        """Make the code-defined entries exactly ``specs``: add or replace those, remove code
        entries no longer in it (an entry added at run time under the same name becomes a
        code entry). Keeps the state and pause of entries that stay. Returns the names of
        the entries it changed."""

    async def put(self, name: str, spec: bytes, since: int, *, replace: bool) -> PutOutcome:
        """Add a run-time entry; ``replace`` changes an existing run-time one (its state
        kept). ``"exists"`` when it exists and not ``replace``; ``"code"`` for a code entry,
        which only its code changes."""

    async def remove(self, name: str) -> RemoveOutcome:
        """Remove a run-time entry and its state."""

    async def set_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume an entry; ``False`` if there is no such entry."""

    async def record(self, holder: str, name: str, state: bytes, now: float) -> bool:
        """Store an entry's state if ``holder`` holds the lease and the entry exists."""


# -- memory: one process ------------------------------------------------------------------


@dataclass
class _Space:
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0
    entries: dict[str, StoredEntry] = field(default_factory=dict)
    holder: str | None = None
    expires: float = 0.0


_SPACES: dict[tuple[str, str], _Space] = {}
_SPACES_LOCK = threading.Lock()


class MemoryBeatStore:
    """Schedules in this process's memory, shared by every scheduler of the same
    ``memory://`` backend URL and app (tests, embedding). The lease expires by the
    scheduler's clock."""

    def __init__(self, url: str, app_name: str) -> None:
        self.url = url
        with _SPACES_LOCK:
            self._space = _SPACES.setdefault((url, app_name), _Space())

    def __repr__(self) -> str:
        return f"<MemoryBeatStore {self.url}>"

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def acquire(self, holder: str, seconds: float, now: float) -> bool:
        space = self._space
        with space.lock:
            if space.holder in (None, holder) or space.expires <= now:
                space.holder, space.expires = holder, now + seconds
                return True
            return False

    async def release(self, holder: str) -> None:
        space = self._space
        with space.lock:
            if space.holder == holder:
                space.holder, space.expires = None, 0.0

    async def version(self) -> int:
        return self._space.version

    async def snapshot(self) -> Snapshot:
        space = self._space
        with space.lock:
            return Snapshot(space.version, dict(space.entries), space.holder)

    async def sync_code(self, specs: Mapping[str, bytes], since: int) -> list[str]:
        space = self._space
        changed: list[str] = []
        with space.lock:
            for name, stored in list(space.entries.items()):
                if stored.code and name not in specs:
                    del space.entries[name]
                    changed.append(name)
            for name, spec in specs.items():
                old = space.entries.get(name)
                if old is None:
                    space.entries[name] = StoredEntry(spec, True, False, since)
                elif old.spec != spec or not old.code:
                    space.entries[name] = dataclasses.replace(old, spec=spec, code=True)
                else:
                    continue
                changed.append(name)
            if changed:
                space.version += 1
        return changed

    async def put(self, name: str, spec: bytes, since: int, *, replace: bool) -> PutOutcome:
        space = self._space
        with space.lock:
            old = space.entries.get(name)
            if old is not None and old.code:
                return "code"
            if old is not None and not replace:
                return "exists"
            if old is None:
                space.entries[name] = StoredEntry(spec, False, False, since)
            else:
                space.entries[name] = dataclasses.replace(old, spec=spec)
            space.version += 1
            return "added" if old is None else "replaced"

    async def remove(self, name: str) -> RemoveOutcome:
        space = self._space
        with space.lock:
            old = space.entries.get(name)
            if old is None:
                return "missing"
            if old.code:
                return "code"
            del space.entries[name]
            space.version += 1
            return "removed"

    async def set_paused(self, name: str, paused: bool) -> bool:
        space = self._space
        with space.lock:
            old = space.entries.get(name)
            if old is None:
                return False
            if old.paused != paused:
                space.entries[name] = dataclasses.replace(old, paused=paused)
                space.version += 1
            return True

    async def record(self, holder: str, name: str, state: bytes, now: float) -> bool:
        space = self._space
        with space.lock:
            old = space.entries.get(name)
            if space.holder != holder or space.expires <= now or old is None:
                return False
            space.entries[name] = dataclasses.replace(old, state=state)
            return True


# -- choosing the store ---------------------------------------------------------------------


def store_for(app: App) -> BeatStore:
    """The store of ``app``'s result backend URL.

    Raises:
        ConfigurationError: the app has no result backend, or one that cannot hold
            schedules (``rpc://``, a backend object).
    """
    url = app.backend_url
    if url is None or "://" not in url:
        raise ConfigurationError(
            "beat keeps its schedules and leader lease in the result backend, and app "
            f"{app.name} has {'none' if url is None else 'a backend object'}: give it "
            "backend='redis://...' or 'sqlite:///...'"
        )
    scheme = scheme_of(url)
    if scheme in ("redis", "rediss", "unix", "redis+cluster"):
        try:
            from .redis_store import RedisBeatStore
        except ImportError as exc:
            raise ConfigurationError(
                f'beat on {scheme}:// needs redis-py ({exc.name}): pip install "aqueue[redis]"'
            ) from None
        return RedisBeatStore(url, app.name)
    if scheme == "sqlite":
        from .sqlite_store import SQLiteBeatStore

        return SQLiteBeatStore(url, app.name)
    if scheme == "memory":
        return MemoryBeatStore(url, app.name)
    raise ConfigurationError(
        f"beat keeps its schedules and leader lease in the result backend, and "
        f"{redact(url)!r} cannot hold them: use a redis:// or sqlite:// backend"
    )
