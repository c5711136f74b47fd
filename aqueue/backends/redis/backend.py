"""The Redis result backend: one hash per task, fenced writes, multiplexed pub/sub watching.

Key ``<prefix>:{t:<task id>}:result`` is a hash with fields ``r`` (the record bytes), ``s``
(state), ``a`` (attempt) and ``v`` (a version bumped on every write), expiring after the
record's TTL. Every accepted write is published on a channel of the same name as
``b"<version>:" + record``, so a watcher can drop what it has already seen.

Results are also pushed to the process that sent the task, once that process watches
results at all: its messages then carry a reply channel (``x-aqueue-reply-channel``), and
the worker's write publishes ``b"<task id>\n<version>:" + record`` there too. A watcher
takes whichever comes first, the push or its own subscription, so ``wait()`` right after
``delay()`` does not pay for subscribing and reading before it can see the result.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping, Sequence
from importlib.resources import files
from typing import Any

from aqueue.core.errors import BackendError, ConfigurationError
from aqueue.core.states import READY_STATES
from aqueue.transports.redis.clients import LazySyncClient, Link
from aqueue.transports.redis.coalesce import Coalescer
from aqueue.transports.redis.guard import guarded
from aqueue.transports.redis.keys import RECORD_FIELD, KeySpace, RecordKeys
from aqueue.transports.redis.registry import RedisRegistry
from aqueue.transports.redis.scripts import (
    HELPERS,
    Script,
    ScriptCall,
    command,
    pack_fields,
    run_scripts,
)
from aqueue.transports.redis.settings import RedisSettings, parse_settings

from .pubsub import CLOSED, RESYNC, SUBSCRIBED, Hub

__all__ = ["RedisBackend", "RedisClusterBackend"]

log = logging.getLogger("aqueue.backend.redis")

_LUA = files(__package__) / "lua"
_RECORD = {"RECORD_FIELD": RECORD_FIELD}
STORE = Script.load(
    _LUA / "store.lua", uses=(HELPERS,), constants={"READY": READY_STATES, **_RECORD}
)
GET_MANY = Script.load(_LUA / "get_many.lua", constants=_RECORD)
FORGET = Script.load(_LUA / "forget.lua")
CHORD_JOIN = Script.load(_LUA / "chord_join.lua")

#: stores per STORE call
_STORE_BATCH = 500
#: most task ids whose reply channel a worker remembers
_ROUTES_SIZE = 100_000
#: message header naming the sender's reply channel
REPLY_HEADER = "x-aqueue-reply-channel"

# (task id, record, state, attempt, ttl, reply channel or "")
_Store = tuple[str, bytes, str, int, float | None, str]


class RedisBackend:
    """A :class:`~aqueue.core.protocols.ResultBackend` on Redis.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URL (or
            Celery's ``sentinel://...;sentinel://...``).
        **options: ``prefix`` (default ``"aqueue"``) and the connection options of
            :func:`aqueue.transports.redis.settings.parse_settings`.

    Raises:
        ConfigurationError: the URL or an option is malformed or unknown (checked here,
            before any connection).
    """

    #: whether it speaks to a Redis Cluster (:class:`RedisClusterBackend`)
    on_cluster = False

    def __init__(self, url: str, **options: Any) -> None:
        self._settings = parse_settings(url, options, what="redis backend")
        if self._settings.cluster != self.on_cluster:
            raise ConfigurationError(
                f"redis backend: {self._settings.redacted!r} is a Redis Cluster: use "
                "RedisClusterBackend (make_backend and App pick it for redis+cluster://)"
                if self._settings.cluster
                else f"redis backend: {self._settings.redacted!r} is one server, not a "
                "cluster: RedisClusterBackend takes redis+cluster://host:port[,host:port...]"
            )
        self._link = Link(self._settings, BackendError)
        self._keys = KeySpace(self._settings.prefix)
        self._records = self._keys.records(self._settings.url)
        self._hub: Hub | None = None
        self._storer: Coalescer[_Store, bool] = Coalescer(self._flush_stores, _STORE_BATCH)
        # this process's reply channel, and (as a worker) the reply channels of the tasks
        # it runs, oldest first, bounded
        channels = self._keys.reply_channels
        self.reply_channel = f"{channels}{uuid.uuid4().hex}"
        self._reply_pattern = re.compile(re.escape(channels) + r"[0-9a-f]{32}\Z")
        self._routes: OrderedDict[str, str] = OrderedDict()
        self._lone_busy = False
        # the worker registry, for a broker that keeps none (RabbitMQ): lists workers and
        # marks lost ones; their messages come back when their broker connection drops
        self._sync = LazySyncClient(self._settings)
        #: its worker registry (:class:`~aqueue.core.protocols.KeepsWorkers`)
        self.worker_registry = RedisRegistry(
            self._settings, self._keys, self._sync.get, self._link.get, BackendError
        )

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"<{name} {self._settings.redacted} prefix={self._settings.prefix!r}>"

    @property
    def settings(self) -> RedisSettings:
        """The URL and options, parsed (its repr never shows a password)."""
        return self._settings

    @property
    def record_keys(self) -> RecordKeys:
        """Where task records are stored (a Redis broker on the same server can read them
        in its claims: :class:`~aqueue.transports.redis.keys.StoresRecords`)."""
        return self._records

    def _key(self, task_id: str) -> str:
        records = self._records
        return f"{records.head}{task_id}{records.tail}"

    async def connect(self) -> None:
        """Create the connection pool and check the server answers; idempotent."""
        await self._link.connect()

    async def close(self) -> None:
        """Flush pending stores, stop watching and close connections; idempotent."""
        try:
            await self._storer.drain()
        except Exception:
            log.debug("pending stores failed during close", exc_info=True)
        hub, self._hub = self._hub, None
        if hub is not None:
            await hub.close()
        await self._link.close()
        await asyncio.to_thread(self._sync.close)

    # -- result push (the app and the executor call these) ------------------------------

    def reply_headers(self) -> dict[str, str]:
        """Headers for the messages this process sends: where to push their records.

        Empty until this process watches results (its reply channel is subscribed then),
        so a process that only sends tasks is never sent their results.
        """
        hub = self._hub
        if hub is None or not hub.reply_live:
            return {}
        return {REPLY_HEADER: self.reply_channel}

    def observe(self, task_id: str, headers: Mapping[str, str]) -> None:
        """A worker took a message of ``task_id``: remember where to push its records."""
        reply = headers.get(REPLY_HEADER)
        if not isinstance(reply, str) or not self._reply_pattern.match(reply):
            return
        routes = self._routes
        routes[task_id] = reply
        routes.move_to_end(task_id)
        while len(routes) > _ROUTES_SIZE:
            routes.popitem(last=False)

    # -- storing ------------------------------------------------------------------------

    async def store(
        self, task_id: str, record: bytes, *, state: str, attempt: int, ttl: float | None
    ) -> bool:
        """Store ``record`` unless fenced (see :func:`aqueue.core.states.supersedes`).

        Stores made close together share one script call; each is published to watchers,
        and pushed to the sender's reply channel if the message named one.
        """
        routes = self._routes
        if routes:
            reply = routes.pop(task_id, "") if state in READY_STATES else routes.get(task_id, "")
        else:
            reply = ""
        item = (task_id, record, state, attempt, ttl, reply)
        if self._lone_busy or not self._storer.idle:
            return await self._storer.submit(item)
        # nothing else in flight (a lone task finishing): no coalescing hop, so the result
        # reaches its waiter one event-loop turn sooner; stores meanwhile are coalesced
        self._lone_busy = True
        try:
            [stored] = await self._flush_stores([item])
        finally:
            self._lone_busy = False
        return stored

    async def _flush_stores(self, items: list[_Store]) -> list[bool]:
        fields: list[bytes | str] = []
        for task_id, record, state, attempt, ttl, reply in items:
            ttl_ms = -1 if ttl is None else max(1, int(ttl * 1000))
            fields += (task_id, record, state, str(int(attempt)), str(ttl_ms), reply)
        records = self._records
        args: list[str | bytes | int | float] = [records.head, records.tail]
        args += pack_fields(fields)
        calls: list[ScriptCall] = [(STORE, [], args)]
        client = await self._link.get()
        [reply] = await guarded(
            self._settings,
            "store",
            # behind Sentinel, confirmed by a replica: a result must be on the master a
            # failover promotes before the worker acks its task (the ack may reach the new
            # master while this store went to the old one)
            lambda: run_scripts(client, calls, confirm=self._settings.confirm),
            error=BackendError,
        )
        return [flag == 1 for flag in reply]

    async def get(self, task_id: str) -> bytes | None:
        """The stored record, or ``None``."""
        record, _ = await self._fetch(self._key(task_id))
        return record

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """The stored records of several tasks in one round trip (``None`` where absent)."""
        if not task_ids:
            return []
        client = await self._link.get()
        records = self._records
        args: list[str | bytes | int | float] = [records.head, records.tail, *task_ids]

        async def read() -> list[Any]:
            # keys built in the script, as in STORE (a cluster would need a call per slot)
            (replies,) = await run_scripts(client, [(GET_MANY, [], args)])
            return list(replies)

        return await guarded(self._settings, "get_many", read, error=BackendError)

    async def _fetch(self, key: str) -> tuple[bytes | None, int]:
        client = await self._link.get()
        record, version = await guarded(
            self._settings,
            "get",
            lambda: command(client, "HMGET", key, RECORD_FIELD, "v"),
            error=BackendError,
        )
        return record, int(version or 0)

    async def forget(self, task_id: str) -> None:
        """Delete the record (watchers then accept a new record stored under the id)."""
        client = await self._link.get()
        key = self._key(task_id)
        await guarded(
            self._settings,
            "forget",
            lambda: run_scripts(client, [(FORGET, [key], [key])]),
            error=BackendError,
        )

    async def chord_join(
        self, chord_id: str, member_id: str, size: int, *, failed: bool, ttl: float | None
    ) -> bool:
        """Record that a chord member finished; ``True`` for exactly one call per chord.

        That call is the first ``failed`` one, or the one after which ``size`` distinct
        members joined. Members are a set (a member that ran twice counts once) and the
        decision is one script, so concurrent joins on several workers fire it once.
        """
        client = await self._link.get()
        base = self._keys.chord(chord_id)
        keys = [base + "members", base + "fired"]
        ttl_ms = -1 if ttl is None else max(1, int(ttl * 1000))
        args: list[str | bytes | int | float] = [member_id, int(size), "1" if failed else "0"]
        args.append(ttl_ms)
        [fired] = await guarded(
            self._settings,
            "chord_join",
            lambda: run_scripts(client, [(CHORD_JOIN, keys, args)], confirm=self._settings.confirm),
            error=BackendError,
        )
        return int(fired) == 1

    async def watch(self, task_id: str) -> AsyncGenerator[bytes, None]:
        """Yield the stored record (if any), then every record stored after it.

        Reads the stored record once Redis confirmed the subscription, so a record stored
        in between is never missed; versions drop anything seen twice. A record pushed to
        this process's reply channel is yielded as soon as it arrives, even before that.
        All watchers of this backend share one pub/sub connection.

        Raises:
            BackendError: the subscription could not be made, a read failed, or the backend
                was closed while watching.
        """
        key = self._key(task_id)
        if self._hub is None:
            self._hub = Hub(self._settings, self.reply_channel)
        hub = self._hub
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        limit = self._settings.socket_connect_timeout + self._settings.socket_timeout
        subscribing = asyncio.get_running_loop().time() + limit
        try:
            hub.listen(task_id, inbox)
            hub.subscribe(key, inbox)
            seen = 0
            while True:
                if subscribing:
                    try:
                        async with asyncio.timeout_at(subscribing):
                            item = await inbox.get()
                    except TimeoutError:
                        raise BackendError(
                            f"subscribing on {self._settings.redacted} did not complete "
                            f"within {limit:g}s"
                        ) from None
                else:
                    item = await inbox.get()
                record: bytes | None
                if item in (SUBSCRIBED, RESYNC):
                    # subscribed, or subscribed again after a reconnect (anything may have
                    # been missed meanwhile): read what is stored
                    subscribing = 0.0
                    record, version = await self._fetch(key)
                elif item == CLOSED:
                    raise BackendError("the result backend was closed while watching")
                else:
                    head, _, record = item.partition(b":")
                    version = int(head)
                    if version == 0:  # forgotten: versions start again from 1
                        seen = 0
                        continue
                if record is not None and version > seen:
                    seen = version
                    yield record
        finally:
            hub.remove(key, inbox)
            hub.unlisten(task_id, inbox)


class RedisClusterBackend(RedisBackend):
    """The Redis result backend on a Redis Cluster (``redis+cluster://host:port[,...]``).

    A task's record is in its own slot (``{t:<task id>}``), so what one server does in one
    script call per batch is one call per task here, pipelined (redis-py's cluster client
    groups a pipeline per node and sends to the nodes concurrently): stores (STORE naming
    its one key) and ``get_many`` (an ``HGET`` each). A chord's completion keeps its own
    tag (``{c:<chord id>}``) and touches no member's record, so ``chord_join`` is one
    script as on one server. Watching subscribes on one node (any node hears every
    ``PUBLISH`` of the cluster) and moves to the next listed node when it loses it.
    """

    on_cluster = True

    async def _flush_stores(self, items: list[_Store]) -> list[bool]:
        records = self._records
        calls: list[ScriptCall] = []
        for task_id, record, state, attempt, ttl, reply in items:
            ttl_ms = -1 if ttl is None else max(1, int(ttl * 1000))
            fields = (task_id, record, state, str(int(attempt)), str(ttl_ms), reply)
            args: list[str | bytes | int | float] = [records.head, records.tail]
            args += pack_fields(fields)
            calls.append((STORE, [self._key(task_id)], args))
        client = await self._link.get()
        replies = await guarded(
            self._settings, "store", lambda: run_scripts(client, calls), error=BackendError
        )
        return [reply[0] == 1 for reply in replies]

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """The stored records of several tasks: one ``HGET`` each, pipelined per node."""
        if not task_ids:
            return []
        client = await self._link.get()
        keys = [self._key(task_id) for task_id in task_ids]

        async def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                command(pipe, "HGET", key, RECORD_FIELD)
            return list(await pipe.execute())

        return await guarded(self._settings, "get_many", read, error=BackendError)
