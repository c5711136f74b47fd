"""A worker registry in Redis (:class:`~aqueue.core.protocols.WorkerRegistry`), shared by
the Redis broker (which also hands back a lost worker's leases) and the Redis result backend
(which holds the registry for a broker that keeps none: RabbitMQ).

Keys, all in the hash tag ``{workers}`` under the prefix: ``seen``, a sorted set of worker
ids scored by their last heartbeat (server time), and ``w:<id>``, a hash per worker with its
info (JSON), the leases it listed at its last beat, how many, and whether it was found lost;
the hash expires when a worker stays silent for longer than entries are kept.

Claims do not store their owner (the lease token is the proof of holding), so a worker lists
its leases at each beat, and a reaper hands back exactly those, fenced by their tokens: a
message someone else claimed since is left alone. The claim path only nudges the next beat
(``Presence.nudge``), so leases claimed just before a ``kill -9`` are listed within a
fraction of a second.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any

import msgspec

from aqueue.core.errors import AqueueError
from aqueue.core.protocols import Lease, WorkerInfo, WorkerSeen

from .guard import guarded
from .keys import KeySpace
from .redispy import AsyncClient, SyncClient
from .scripts import HELPERS, Script, ScriptCall, command, run_scripts_sync
from .settings import RedisSettings

log = logging.getLogger("aqueue.redis.registry")

_LUA = files(__package__) / "lua"
BEAT = Script.load(_LUA / "beat.lua", uses=(HELPERS,))
LAPSED = Script.load(_LUA / "lapsed.lua", uses=(HELPERS,))
REAP = Script.load(_LUA / "reap.lua", uses=(HELPERS,))
#: workers reaped per call at most (each one's entry is a key of the REAP call)
_REAP_BATCH = 1000

#: a lost worker's listed leases as (queue, id, token)
Listed = list[tuple[str, str, int]]
_LISTED = msgspec.json.Decoder(Listed)


class RedisRegistry:
    """The registry's reads and writes.

    Args:
        settings: the server.
        keys: the key space (the prefix).
        sync: the blocking client (beats come from a thread).
        link_get: the asyncio client.
        error: the exception to raise (``BrokerError`` or ``BackendError``).
        release: hands back a lost worker's listed leases (blocking) and returns how many
            it could; ``None`` where leases are not the registry's business (a RabbitMQ
            connection is its lease).
    """

    def __init__(
        self,
        settings: RedisSettings,
        keys: KeySpace,
        sync: Callable[[], SyncClient],
        link_get: Callable[[], Awaitable[AsyncClient]],
        error: type[AqueueError],
        release: Callable[[Listed], int] | None = None,
    ) -> None:
        self._settings = settings
        self._base = keys.workers
        self._seen = self._base + "seen"
        self._sync = sync
        self._link_get = link_get
        self._error = error
        self._release = release

    def _entry(self, worker_id: str) -> str:
        return f"{self._base}w:{worker_id}"

    def _blocking(self, what: str, calls: Sequence[ScriptCall]) -> list[Any]:
        try:
            return run_scripts_sync(self._sync(), calls)
        except Exception as exc:
            raise self._error(
                f"{what} on {self._settings.redacted} failed: {self._settings.describe(exc)}"
            ) from None

    def beat(self, info: WorkerInfo, leases: Sequence[Lease], keep: float) -> None:
        """Record that ``info`` is alive now, listing ``leases``."""
        listed = msgspec.json.encode([(lease.queue, lease.id, lease.token) for lease in leases])
        args: list[str | bytes | int | float] = [
            info.id,
            msgspec.json.encode(info),
            listed,
            len(leases),
            max(1, int(keep)),
        ]
        self._blocking("heartbeat", [(BEAT, (self._seen, self._entry(info.id)), args)])

    def reap(self, lost_after: float) -> list[str]:
        """Mark workers silent for ``lost_after`` seconds lost; hand back what they listed."""
        after = repr(float(lost_after))
        [lapsed] = self._blocking("reap", [(LAPSED, (self._seen,), [after, _REAP_BATCH])])
        if not lapsed:
            return []
        # a second call names each entry in KEYS (a script builds no key: Redis Cluster)
        ids = [raw.decode() for raw in lapsed]
        keys = (self._seen, *map(self._entry, ids))
        [reply] = self._blocking("reap", [(REAP, keys, [after, *ids])])
        if not reply:
            return []
        lost: list[str] = []
        listed: Listed = []
        for i in range(0, len(reply), 2):
            lost.append(reply[i].decode())
            listed += _LISTED.decode(reply[i + 1])
        released = self._release(listed) if self._release is not None and listed else 0
        log.info("%d lost worker(s): %d message(s) handed back", len(lost), released)
        return lost

    def leave(self, worker_id: str) -> None:
        """Remove the entry."""
        try:
            # two removals, each enough on its own (a reap drops an id whose entry is
            # gone): no MULTI, which redis-py's cluster client refuses before 8
            pipe = self._sync().pipeline(transaction=False)
            command(pipe, "ZREM", self._seen, worker_id)
            command(pipe, "DEL", self._entry(worker_id))
            pipe.execute()
        except Exception as exc:
            raise self._error(
                f"leave on {self._settings.redacted} failed: {self._settings.describe(exc)}"
            ) from None

    async def workers(self) -> list[WorkerSeen]:
        """Every entry, live or lost."""
        client = await self._link_get()

        async def read() -> list[WorkerSeen]:
            pairs = await command(client, "ZRANGE", self._seen, 0, -1, "WITHSCORES")
            if pairs and not isinstance(pairs[0], tuple | list):  # raw: member, score, ...
                pairs = list(zip(pairs[::2], pairs[1::2], strict=True))
            if not pairs:
                return []
            pipe = client.pipeline(transaction=False)
            for member, _ in pairs:
                command(pipe, "HMGET", self._entry(member.decode()), "info", "held", "lost")
            rows = await pipe.execute()
            out: list[WorkerSeen] = []
            for (_, score), (info, held, lost) in zip(pairs, rows, strict=True):
                if info is None:  # expired: the next reap drops it
                    continue
                out.append(
                    WorkerSeen(
                        msgspec.json.decode(info, type=WorkerInfo),
                        float(score),
                        int(held or 0),
                        lost == b"1",
                    )
                )
            return out

        return await guarded(self._settings, "workers", read, error=self._error)
