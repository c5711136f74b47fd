"""Celery's side of a Redis server, as kombu's Redis transport and Celery's Redis result
backend lay it out.

- a queue is a list named after it (one more per priority step: ``celery\\x06\\x163``...),
  producers ``LPUSH`` a JSON envelope and consumers pop from the right;
- a message a consumer holds is in the ``unacked`` hash (delivery tag -> ``[envelope,
  exchange, routing_key]``) and the ``unacked_index`` sorted set (tag -> when taken); an ack
  removes both; an entry older than the visibility timeout (1 hour by default) is pushed
  back on its list by whichever consumer sweeps first;
- a result is the JSON string ``celery-task-meta-<id>``, also published on a channel of that
  name when written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from importlib.resources import files
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aqueue.transports.redis import redispy
from aqueue.transports.redis.redispy import async_client
from aqueue.transports.redis.scripts import Script, command, run_scripts

from .protocol import (
    PRIORITY_SEPARATOR,
    PRIORITY_STEPS,
    RESULT_EXPIRES,
    VISIBILITY_TIMEOUT,
    Meta,
    meta_key,
    queue_list,
    read_meta,
)

#: kombu's key names (``Channel.unacked_key`` / ``unacked_index_key``)
UNACKED: Final = "unacked"
UNACKED_INDEX: Final = "unacked_index"
#: kombu's table of an exchange's bindings (``Channel.keyprefix_queue``)
BINDING_PREFIX: Final = "_kombu.binding."

_LUA = files(__package__) / "lua"
#: take messages off a queue's lists into the unacked records, in one atomic step
CLAIM: Final = Script.load(_LUA / "claim.lua")
#: put an unacked message back on its list, unless acked or restored meanwhile
RESTORE: Final = Script.load(_LUA / "restore.lua")


class KombuRedis:
    """The kombu lists, unacked records and Celery result keys on one Redis database.

    Args:
        url: the Redis URL Celery's broker (and result backend) uses.
        visibility_timeout: kombu's setting, as the Celery side has it.
        result_expires: seconds a result meta is kept (Celery's ``result_expires``).
    """

    def __init__(
        self,
        url: str,
        *,
        visibility_timeout: float = VISIBILITY_TIMEOUT,
        result_expires: int = RESULT_EXPIRES,
    ) -> None:
        self.url = url
        self.visibility_timeout = visibility_timeout
        self.result_expires = result_expires
        self._client: aioredis.Redis | None = None

    def client(self) -> aioredis.Redis:
        """The client, created on first use."""
        if self._client is None:
            self._client = async_client(self.url, max_connections=32)
        return self._client

    async def close(self) -> None:
        """Close the connections (a later call connects again)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- queues ---------------------------------------------------------------------------

    async def claim(self, queue: str, limit: int) -> list[tuple[bytes, str]]:
        """Up to ``limit`` envelopes off ``queue``'s lists, each recorded as unacked: the
        envelope and its delivery tag (``""``: not recorded, the envelope is not kombu's)."""
        keys = [UNACKED, UNACKED_INDEX, *(queue_list(queue, p) for p in PRIORITY_STEPS)]
        [flat] = await run_scripts(self.client(), [(CLAIM, keys, [time.time(), limit])])
        return [(flat[i], flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    def waiter(self) -> Waiter:
        """A blocking wait on a connection of its own (one per relay; close it after)."""
        return Waiter(self.url)

    async def ack(self, tags: Sequence[str]) -> None:
        """Forget handed-over messages (kombu's ack)."""
        tags = [tag for tag in tags if tag]
        if tags:
            pipe = self.client().pipeline(transaction=False)
            pipe.zrem(UNACKED_INDEX, *tags)
            pipe.hdel(UNACKED, *tags)
            await pipe.execute()

    async def restore(self, tags: Sequence[str], queues: Sequence[str]) -> int:
        """Push unacked messages back on their lists (kombu's ``restore_by_tag``), when they
        were routed to one of ``queues`` (another consumer's are left to it)."""
        client = self.client()
        restored = 0
        for tag in tags:
            entry = await client.hget(UNACKED, tag)
            if entry is None:
                continue
            try:
                payload, exchange, routing_key = msgspec.json.decode(entry)
            except (msgspec.DecodeError, ValueError, TypeError):
                continue
            if not isinstance(payload, dict) or not isinstance(routing_key, str):
                continue
            routed = await self.routed(str(exchange or ""), routing_key)
            if routed is None or routed not in queues:
                continue
            payload.setdefault("headers", {})["redelivered"] = True
            properties = payload.get("properties") or {}
            priority = properties.get("priority")
            key = queue_list(routed, priority if isinstance(priority, int) else 0)
            call = (
                RESTORE,
                [UNACKED, UNACKED_INDEX, key],
                [tag, entry, msgspec.json.encode(payload)],
            )
            [done] = await run_scripts(client, [call])
            restored += done
        return restored

    async def routed(self, exchange: str, routing_key: str) -> str | None:
        """The queue a direct route leads to (kombu's ``_lookup``): the routing key itself on
        the default exchange, else the first queue bound with that key in kombu's binding
        table (``_kombu.binding.<exchange>``, members ``key\\x06\\x16pattern\\x06\\x16queue``).

        A member of another shape is skipped.
        """
        if not exchange:
            return routing_key
        members = await command(self.client(), "SMEMBERS", BINDING_PREFIX + exchange)
        for member in members:
            text: str = member.decode(errors="replace")
            parts = text.split(PRIORITY_SEPARATOR)
            if len(parts) == 3 and parts[0] == routing_key:
                return parts[2]
        return None

    async def restore_stale(self, queues: Sequence[str], limit: int = 100) -> int:
        """Restore what has been unacked longer than the visibility timeout (kombu's
        ``restore_visible``), for ``queues``."""
        ceiling = time.time() - self.visibility_timeout
        tags = await command(
            self.client(), "ZRANGE", UNACKED_INDEX, ceiling, 0, "BYSCORE", "REV", "LIMIT", 0, limit
        )
        return await self.restore([tag.decode() for tag in tags], queues)

    async def push(self, queue: str, priority: int, payload: bytes) -> None:
        """Publish an envelope on ``queue`` as kombu does (``LPUSH``)."""
        await self.client().lpush(queue_list(queue, priority), payload)

    # -- results --------------------------------------------------------------------------

    async def store_meta(self, task_id: str, meta: bytes) -> None:
        """Write a result meta and announce it, as Celery's Redis backend does."""
        key = meta_key(task_id)
        pipe = self.client().pipeline(transaction=False)
        pipe.set(key, meta, ex=self.result_expires)
        pipe.publish(key, meta)
        await pipe.execute()

    async def get_meta(self, task_id: str) -> Meta | None:
        """The stored meta of ``task_id``, if any."""
        data = await command(self.client(), "GET", meta_key(task_id))
        return None if data is None else read_meta(task_id, data)

    async def wait_meta(self, task_id: str, timeout: float | None) -> Meta:
        """The meta once the task is ready: subscribed first, then read (no race).

        Raises:
            TimeoutError: not ready within ``timeout`` seconds.
        """
        key = meta_key(task_id)
        pubsub = self.client().pubsub()
        try:
            async with asyncio.timeout(timeout):
                await pubsub.subscribe(key)
                meta = await self.get_meta(task_id)
                while meta is None or not meta.ready:
                    message: Any = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=5.0
                    )
                    if message is not None and message.get("type") == "message":
                        meta = read_meta(task_id, message["data"])
                    elif message is None:  # a quiet spell: read it again (cheap, and safe)
                        meta = await self.get_meta(task_id)
                return meta
        finally:
            await pubsub.aclose()


class Waiter:
    """Waits for a Celery queue to have a message, on a connection of its own (outside the
    pool and its retries), which :meth:`interrupt` can end early from another one."""

    def __init__(self, url: str) -> None:
        self._conn = redispy.unpooled_connection(url)
        # the server's id for the connection (``CLIENT ID``), for ``CLIENT UNBLOCK``
        self._id: int | None = None

    async def wait(self, queue: str, timeout: float) -> None:
        """Return when ``queue``'s list has a message, after ``timeout`` seconds, or when
        interrupted.

        ``BLMOVE`` from the list's right end to its right end: a blocking peek that takes
        nothing (a message on a priority step's list is seen at the next claim).
        """
        await redispy.make_usable(self._conn)
        commands = [redispy.pack_command("CLIENT", "ID")]
        commands.append(
            redispy.pack_command("BLMOVE", queue, queue, "RIGHT", "RIGHT", f"{timeout:.3f}")
        )
        await redispy.send(self._conn, commands)
        client_id = await redispy.read_reply(self._conn)
        self._id = client_id if isinstance(client_id, int) else None  # an ACL may refuse it
        reply = await redispy.read_reply(self._conn)
        self._id = None
        if isinstance(reply, Exception):
            raise reply

    async def interrupt(self, client: aioredis.Redis) -> None:
        """End a wait in progress now (else it ends by its timeout)."""
        if self._id is not None:
            with contextlib.suppress(RedisError):
                await command(client, "CLIENT", "UNBLOCK", self._id)

    async def close(self) -> None:
        """Drop the connection."""
        await redispy.drop(self._conn)
