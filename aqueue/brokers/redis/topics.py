"""The Redis broker's :class:`~aqueue.core.protocols.Topics`: one Redis Stream per topic.

A topic is the stream ``<prefix>:{topic:<name>}`` (:meth:`KeySpace.topic`): a stream is
already a capped, ordered log that any number of readers read on their own, each with the
last id it saw. ``publish`` is one pipeline of ``XADD ... MAXLEN`` (exact below 1000
entries, ``~`` above, where exact trimming would cost a scan of a macro node per append),
and a reply topic's key also gets ``EXPIRE 60``: nobody has to delete it.

A subscription notes the stream's last id when ``subscribe`` returns (not ``$`` at its first
read, which would skip what was published in between) and reads with ``XREAD BLOCK``. On one
server (or behind Sentinel) it reads on a connection of its own, outside the broker's pool:
a reader blocked for seconds never holds one of the pooled connections that publishes and
claims need. On a Redis Cluster it reads through the broker's cluster client instead (which
finds the node serving the topic's slot and follows it through a failover): each
``XREAD BLOCK`` holds a pooled connection of that node for up to ``max_block``. Stream ids
are the Redis server's clock in milliseconds, so ``since`` is compared with the server's
time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from aqueue.core.errors import BrokerError, SubscriptionClosed
from aqueue.core.protocols import REPLY_TOPIC_PREFIX
from aqueue.transports.redis import redispy
from aqueue.transports.redis.guard import guarded
from aqueue.transports.redis.keys import KeySpace
from aqueue.transports.redis.scripts import command
from aqueue.transports.redis.settings import RedisSettings

__all__ = ["REPLY_TTL", "RedisClusterSubscription", "RedisSubscription", "RedisTopics"]

#: seconds a reply topic is kept after its last message
REPLY_TTL = 60
#: from this cap on, trimming is approximate (``MAXLEN ~``): whole macro nodes at a time
_APPROXIMATE_FROM = 1000
#: the stream entry's one field, holding the body
_FIELD = b"b"
#: entries read per ``XREAD`` at most (a subscriber far behind catches up in several gets)
_READ_COUNT = 1000
#: the largest sequence part of a stream id: ``<ms - 1>-<this>`` is just before ``<ms>-0``
_MAX_SEQ = 2**64 - 1

StreamId = tuple[int, int]


def _parse_id(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisTopics:
    """Topics of one Redis broker (its key prefix).

    Args:
        settings: where it connects (subscriptions open their own connections from it).
            On a Redis Cluster (``settings.cluster``) a subscription reads through the
            pooled cluster client instead, which finds the node that serves the topic's
            slot (and follows it through a failover).
        keys: the broker's key space.
        client: the broker's pooled client, connected if needed (for publishes; on a
            cluster, for reads too).
        max_block: the longest single ``XREAD BLOCK``: below the socket timeout, so a
            blocked read is never taken for a dead connection.
    """

    def __init__(
        self,
        settings: RedisSettings,
        keys: KeySpace,
        client: Callable[[], Awaitable[redispy.AsyncClient]],
        max_block: float,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._client = client
        self._max_block = max_block
        self._open: set[RedisSubscription] = set()

    async def publish(self, topic: str, bodies: Sequence[bytes], *, cap: int) -> None:
        """Append ``bodies`` in one pipeline; trimmed to ``cap`` (about, from 1000 on)."""
        if not bodies:
            return
        key = self._keys.topic(topic)
        cap = max(cap, 1)
        trim = "~" if cap >= _APPROXIMATE_FROM else "="
        client = await self._client()

        async def send() -> None:
            pipe = client.pipeline(transaction=False)
            for body in bodies:
                command(pipe, "XADD", key, "MAXLEN", trim, cap, "*", _FIELD, body)
            if topic.startswith(REPLY_TOPIC_PREFIX):
                command(pipe, "EXPIRE", key, REPLY_TTL)
            await pipe.execute()

        await guarded(self._settings, f"publish to topic {topic!r}", send, error=BrokerError)

    async def subscribe(self, topic: str, *, since: float | None = None) -> RedisSubscription:
        """Note where the stream ends now (one ``XREVRANGE``); read after that, or from
        ``since`` (the server's clock, in milliseconds) if that is earlier."""
        key = self._keys.topic(topic)
        client = await self._client()
        newest = await guarded(
            self._settings,
            f"subscribe to topic {topic!r}",
            lambda: command(client, "XREVRANGE", key, "+", "-", "COUNT", 1),
            error=BrokerError,
        )
        after: StreamId = _parse_id(newest[0][0]) if newest else (0, 0)
        if since is not None:
            ms = int(since * 1000)
            after = min(after, (ms - 1, _MAX_SEQ) if ms > 0 else (0, 0))
        if self._settings.cluster:
            sub: RedisSubscription = RedisClusterSubscription(
                self._settings, key, after, client, self._max_block, self._open.discard
            )
        else:
            name = re.sub(r"[^\w:.-]", "_", f"{self._settings.prefix}:topic:{topic}")
            sub = RedisSubscription(
                self._settings,
                key,
                after,
                self._settings.pubsub_connection(name),
                self._max_block,
                self._open.discard,
            )
        self._open.add(sub)
        return sub

    async def close(self) -> None:
        """Close every subscription still open (the broker is closing)."""
        for sub in list(self._open):
            await sub.close()


class RedisSubscription:
    """A reader of one topic's stream, on a connection of its own (made on first ``get``).

    Cancel-safe: a ``get`` cancelled mid-read leaves the connection marked as not in step
    (a reply may still be on its way), and the next ``get`` drops and reconnects it first.
    """

    def __init__(
        self,
        settings: RedisSettings,
        key: str,
        after: StreamId,
        conn: redispy.Connection,
        max_block: float,
        on_close: Callable[[RedisSubscription], None],
    ) -> None:
        self._settings = settings
        self._key = key
        self._after = after
        self._conn = conn
        self._max_block = max_block
        self._on_close = on_close
        # an exchange began and did not finish: the connection may hold a stray reply
        self._unsure = False
        self._closed = False

    async def get(self, timeout: float) -> list[bytes]:
        """The next messages (at most 1000), or ``[]`` after ``timeout`` seconds of none.

        Waits in ``XREAD BLOCK`` rounds no longer than ``max_block`` each."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while not self._closed:
            remaining = deadline - loop.time()
            block = min(remaining, self._max_block)
            try:
                bodies = await self._read(block)
            except BrokerError:
                if self._closed:  # closed while reading: its connection went away
                    break
                raise
            if bodies or remaining <= 0:
                return bodies
        raise SubscriptionClosed(f"the subscription to {self._key!r} is closed")

    async def _read(self, block: float) -> list[bytes]:
        args: list[str | int] = ["XREAD", "COUNT", _READ_COUNT]
        if block > 0:
            # BLOCK's resolution is a millisecond, and BLOCK 0 would wait forever
            args += ["BLOCK", max(1, round(block * 1000))]
        args += ["STREAMS", self._key, f"{self._after[0]}-{self._after[1]}"]
        reply = await guarded(
            self._settings,
            "topic read",
            lambda: self._exchange(args),
            error=BrokerError,
            deadline=self._settings.operation_timeout + max(block, 0.0),
        )
        if not reply:  # nil: the block ran out
            return []
        bodies: list[bytes] = []
        for _key, entries in reply:
            for entry_id, fields in entries:
                self._after = _parse_id(entry_id)
                pairs = dict(zip(fields[::2], fields[1::2], strict=True))
                body = pairs.get(_FIELD)
                if body is not None:
                    bodies.append(body)
        return bodies

    async def _exchange(self, args: list[str | int]) -> Any:
        """Send ``XREAD`` on the subscription's connection and read its reply."""
        conn = self._conn
        if self._unsure:
            await redispy.drop(conn)
        self._unsure = True
        await redispy.make_usable(conn)
        await redispy.send(conn, redispy.pack_command(*args))
        reply = await redispy.read_reply(conn)
        self._unsure = False
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def close(self) -> None:
        """Disconnect its connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        await self._disconnect()

    async def _disconnect(self) -> None:
        await redispy.disconnect(self._conn)


class RedisClusterSubscription(RedisSubscription):
    """A reader of one topic's stream on a Redis Cluster: each ``XREAD BLOCK`` borrows a
    connection of the cluster client's pool for the node that serves the stream's slot,
    so a failover or a moved slot is followed by the client. A read cancelled mid-way
    closes the connection it borrowed (redis-py does so on any interrupted read)."""

    def __init__(
        self,
        settings: RedisSettings,
        key: str,
        after: StreamId,
        client: redispy.AsyncClient,
        max_block: float,
        on_close: Callable[[RedisSubscription], None],
    ) -> None:
        super().__init__(settings, key, after, _NO_CONNECTION, max_block, on_close)
        self._client = client

    async def _exchange(self, args: list[str | int]) -> Any:
        reply = await command(self._client, *args)
        if not reply:
            return reply
        # redis-py's client parses XREAD's reply (each entry's fields as a dict; on RESP3
        # a dict of streams, each one's entries wrapped in a list): back to the raw shape
        # that _read takes
        if isinstance(reply, dict):
            streams = [
                (key, value[0] if value and isinstance(value[0], list) else value)
                for key, value in reply.items()
            ]
        else:
            streams = reply
        return [
            (key, [(entry_id, _flat(fields)) for entry_id, fields in entries])
            for key, entries in streams
        ]

    async def _disconnect(self) -> None:
        """Nothing of its own to close: its reads borrow the pool's connections."""


def _flat(fields: Any) -> list[Any]:
    """A stream entry's fields as the raw reply lists them (name, value, ...)."""
    if isinstance(fields, dict):
        return [item for pair in fields.items() for item in pair]
    return list(fields or ())


#: the connection of a subscription that has none of its own (a cluster's)
_NO_CONNECTION: Any = None
