"""The Redis broker's worker registry (:class:`~aqueue.core.protocols.WorkerRegistry`).

Keys, all in the hash tag ``{workers}`` under the prefix: ``seen``, a sorted set of worker
ids scored by their last heartbeat (server time), and ``w:<id>``, a hash per worker with its
info (JSON), the leases it listed at its last beat, how many, and whether it was found lost;
the hash expires when a worker stays silent for longer than entries are kept.

Claims do not store their owner (the lease token is the proof of holding), so a worker lists
its leases at each beat, and a reaper hands back exactly those, fenced by their tokens: a
message someone else claimed since is left alone. The claim path only nudges the next beat
(``Presence.nudge``), so leases claimed just before a ``kill -9`` are listed within
a fraction of a second.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import redis

from aqueue.core.errors import BrokerError
from aqueue.core.protocols import Lease, WorkerInfo, WorkerSeen
from aqueue.transports.redis.guard import guarded
from aqueue.transports.redis.keys import KeySpace
from aqueue.transports.redis.scripts import (
    ScriptCall,
    command,
    pack_fields,
    run_scripts_sync,
)
from aqueue.transports.redis.settings import RedisSettings

from .scripts import BEAT, REAP, SETTLE, QueueKeys, SettleOp

log = logging.getLogger("aqueue.broker.redis")

_Leases = msgspec.json.Decoder(list[tuple[str, str, int]])


class RedisRegistry:
    """The registry's reads and writes; the broker delegates to it."""

    def __init__(
        self,
        settings: RedisSettings,
        keys: KeySpace,
        sync: Callable[[], redis.Redis],
        link_get: Callable[[], Any],
        queue_keys: Callable[[str], QueueKeys],
    ) -> None:
        self._settings = settings
        self._base = keys.workers
        self._seen = self._base + "seen"
        self._sync = sync
        self._link_get = link_get
        self._queue_keys = queue_keys

    def _entry(self, worker_id: str) -> str:
        return f"{self._base}w:{worker_id}"

    def _blocking(self, what: str, calls: Sequence[ScriptCall]) -> list[Any]:
        try:
            return run_scripts_sync(self._sync(), calls)
        except Exception as exc:
            raise BrokerError(
                f"{what} on {self._settings.redacted} failed: {self._settings.describe(exc)}"
            ) from None

    def beat(self, info: WorkerInfo, leases: Sequence[Lease], keep: float) -> None:
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
        [reply] = self._blocking(
            "reap", [(REAP, (self._seen,), [repr(float(lost_after)), self._base + "w:"])]
        )
        if not reply:
            return []
        lost: list[str] = []
        by_queue: dict[str, list[bytes | str]] = defaultdict(list)
        for i in range(0, len(reply), 2):
            lost.append(reply[i].decode())
            for queue, id_, token in _Leases.decode(reply[i + 1]):
                by_queue[queue] += (SettleOp.RELEASE, id_, str(token), "1", "")
        calls: list[ScriptCall] = [
            (
                SETTLE,
                self._queue_keys(queue).settle,
                [self._settings.dead_letter_limit, *pack_fields(fields)],
            )
            for queue, fields in by_queue.items()
        ]
        released = 0
        if calls:
            for reply_flags in self._blocking("handing back a lost worker's leases", calls):
                released += sum(int(flag) for flag in reply_flags)
        log.info("%d lost worker(s): %d message(s) handed back", len(lost), released)
        return lost

    def leave(self, worker_id: str) -> None:
        client = self._sync()
        try:
            pipe = client.pipeline(transaction=True)
            command(pipe, "ZREM", self._seen, worker_id)
            command(pipe, "DEL", self._entry(worker_id))
            pipe.execute()
        except Exception as exc:
            raise BrokerError(
                f"leave on {self._settings.redacted} failed: {self._settings.describe(exc)}"
            ) from None

    async def workers(self) -> list[WorkerSeen]:
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

        return await guarded(self._settings, "workers", read, error=BrokerError)
