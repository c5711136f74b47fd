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
from typing import Any

import redis.asyncio as aioredis

from aqueue.brokers.redis_connection import (
    Coalescer,
    Script,
    ScriptCall,
    command,
    guarded,
    pack_fields,
    run_scripts,
)
from aqueue.brokers.redis_scripts import LUA_HELPERS
from aqueue.brokers.redis_settings import parse_settings
from aqueue.core.errors import BackendError
from aqueue.core.states import READY_STATES

from .redis_pubsub import CLOSED, RESYNC, SUBSCRIBED, Hub

__all__ = ["RedisBackend"]

log = logging.getLogger("aqueue.backend.redis")

_READY_LUA = ", ".join(f"[{state!r}] = true" for state in sorted(READY_STATES))

# ARGV: key prefix, key suffix, then fields (task id, record, state, attempt, ttl_ms, reply)*
#   ttl_ms -1 means no expiry; reply: the sender's reply channel, or empty.
#   -> per record 1 (stored) or 0 (fenced).
# The rule is aqueue.core.states.supersedes(). Each record is published on a channel named
# like its key, and to the reply channel with the task id in front. Keys are built here from
# the ids: one call stores a whole batch of results, which live in different cluster slots
# (a cluster would need one call per slot).
STORE = Script(
    "store",
    LUA_HELPERS
    + f"""
local ready = {{{_READY_LUA}}}
local f = split(ARGV[3], ARGV[4])
local out = {{}}
for i = 1, #f / 6 do
  local j = (i - 1) * 6
  local key = ARGV[1] .. f[j + 1] .. ARGV[2]
  local attempt = tonumber(f[j + 4])
  local cur = redis.call('HMGET', key, 'a', 's', 'v')
  local ok = true
  if cur[1] then
    local stored = tonumber(cur[1])
    if attempt ~= stored then ok = attempt > stored else ok = not ready[cur[2]] end
  end
  if ok then
    local v = (tonumber(cur[3]) or 0) + 1
    redis.call('HSET', key, 'r', f[j + 2], 's', f[j + 3], 'a', f[j + 4], 'v', v)
    local ttl = tonumber(f[j + 5])
    if ttl >= 0 then
      redis.call('PEXPIRE', key, ttl)
    elseif cur[1] then
      redis.call('PERSIST', key)
    end
    local payload = string.format('%d:', v) .. f[j + 2]
    redis.call('PUBLISH', key, payload)
    if f[j + 6] ~= '' then redis.call('PUBLISH', f[j + 6], f[j + 1] .. '\\n' .. payload) end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
""",
)

# ARGV: key prefix, key suffix, task ids... -> each id's record (nil where absent). One call
# per batch: a worker reads the records of every claimed batch (revocations, duplicates),
# and a command per id would cost more client CPU than the rest of the task's Redis path.
GET_MANY = Script(
    "get_many",
    """
local out = {}
for i = 3, #ARGV do
  out[i - 2] = redis.call('HGET', ARGV[1] .. ARGV[i] .. ARGV[2], 'r')
end
return out
""",
)

# KEYS: result key; ARGV: channel. Watchers see version 0 and start counting afresh.
FORGET = Script(
    "forget",
    """
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], '0:')
return 1
""",
)

# KEYS: chord members set, chord fired flag; ARGV: member_id, size, failed ('1'/'0'),
# ttl_ms (-1: none) -> 1 for exactly one call per chord (the one that fires it), else 0
CHORD_JOIN = Script(
    "chord_join",
    """
local ttl = tonumber(ARGV[4])
redis.call('SADD', KEYS[1], ARGV[1])
if ttl >= 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if ARGV[3] ~= '1' and redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then return 0 end
if ttl >= 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ttl)
else
  redis.call('SET', KEYS[2], '1')
end
return 1
""",
)

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
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        **options: ``prefix`` (default ``"aqueue"``) and the connection options of
            :func:`aqueue.brokers.redis_settings.parse_settings`.

    Raises:
        ConfigurationError: the URL or an option is malformed or unknown (checked here,
            before any connection).
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._settings = parse_settings(url, options, what="redis backend")
        self._prefix = self._settings.prefix
        self._client: aioredis.Redis | None = None
        self._hub: Hub | None = None
        self._storer: Coalescer[_Store, bool] = Coalescer(self._flush_stores, _STORE_BATCH)
        # this process's reply channel, and (as a worker) the reply channels of the tasks
        # it runs, oldest first, bounded
        self.reply_channel = f"{self._prefix}:reply:{uuid.uuid4().hex}"
        self._reply_pattern = re.compile(re.escape(f"{self._prefix}:reply:") + r"[0-9a-f]{32}\Z")
        self._routes: OrderedDict[str, str] = OrderedDict()
        self._lone_busy = False

    def __repr__(self) -> str:
        return f"<RedisBackend {self._settings.redacted} prefix={self._prefix!r}>"

    def _key(self, task_id: str) -> str:
        head, tail = self.key_parts
        return f"{head}{task_id}{tail}"

    @property
    def key_parts(self) -> tuple[str, str]:
        """What goes before and after the task id in its key (and channel) name."""
        return f"{self._prefix}:{{t:", "}:result"

    @property
    def server_url(self) -> str:
        """The server and database it stores in (password included: never print it)."""
        return self._settings.url

    async def connect(self) -> None:
        """Create the connection pool and check the server answers; idempotent."""
        if self._client is not None:
            return
        client = self._settings.async_client()
        try:
            await guarded(
                self._settings, "connect", lambda: command(client, "PING"), error=BackendError
            )
        except BaseException:
            await client.aclose()
            raise
        if self._client is None:
            self._client = client
        else:
            await client.aclose()

    async def close(self) -> None:
        """Flush pending stores, stop watching and close connections; idempotent."""
        try:
            await self._storer.drain()
        except Exception:
            log.debug("pending stores failed during close", exc_info=True)
        hub, self._hub = self._hub, None
        if hub is not None:
            await hub.close()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _redis(self) -> aioredis.Redis:
        if self._client is None:
            await self.connect()
        assert self._client is not None
        return self._client

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
        args: list[str | bytes | int | float] = [*self.key_parts, *pack_fields(fields)]
        calls: list[ScriptCall] = [(STORE, [], args)]
        client = await self._redis()
        [reply] = await guarded(
            self._settings, "store", lambda: run_scripts(client, calls), error=BackendError
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
        client = await self._redis()
        args: list[str | bytes | int | float] = [*self.key_parts, *task_ids]

        async def read() -> list[Any]:
            # keys built in the script, as in STORE (a cluster would need a call per slot)
            (replies,) = await run_scripts(client, [(GET_MANY, [], args)])
            return list(replies)

        return await guarded(self._settings, "get_many", read, error=BackendError)

    async def _fetch(self, key: str) -> tuple[bytes | None, int]:
        client = await self._redis()
        record, version = await guarded(
            self._settings,
            "get",
            lambda: command(client, "HMGET", key, "r", "v"),
            error=BackendError,
        )
        return record, int(version or 0)

    async def forget(self, task_id: str) -> None:
        """Delete the record (watchers then accept a new record stored under the id)."""
        client = await self._redis()
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
        client = await self._redis()
        base = f"{self._prefix}:{{c:{chord_id}}}:"
        keys = [base + "members", base + "fired"]
        ttl_ms = -1 if ttl is None else max(1, int(ttl * 1000))
        args: list[str | bytes | int | float] = [member_id, int(size), "1" if failed else "0"]
        args.append(ttl_ms)
        [fired] = await guarded(
            self._settings,
            "chord_join",
            lambda: run_scripts(client, [(CHORD_JOIN, keys, args)]),
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
