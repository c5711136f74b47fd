"""The Redis result backend's pub/sub: one connection per backend, shared by every watcher.

Watchers register an inbox per channel (a task's record key) and, for records pushed to
this process's reply channel, per task id. Besides records (``b"<version>:" + record``)
an inbox receives the markers below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque

from redis.exceptions import RedisError

from aqueue.transports.redis import redispy
from aqueue.transports.redis.settings import RedisSettings

__all__ = ["CLOSED", "RESYNC", "SUBSCRIBED", "Channel", "Hub"]

log = logging.getLogger("aqueue.backend.redis")

#: queued to a watcher after a reconnect: "read the stored record again"
RESYNC = b""
#: queued to every watcher when the backend closes
CLOSED = b"closed"
#: queued to a watcher once its channel's subscription is confirmed: "read the record now"
SUBSCRIBED = b"subscribed"


class Channel:
    """Subscription state of one channel on the shared connection."""

    __slots__ = ("inboxes", "pending", "ready", "resync", "waiting")

    def __init__(self) -> None:
        self.inboxes: set[asyncio.Queue[bytes]] = set()
        # inboxes not yet told that the subscription is confirmed (SUBSCRIBED)
        self.waiting: set[asyncio.Queue[bytes]] = set()
        # SUBSCRIBE (True) / UNSUBSCRIBE (False) commands sent and not yet confirmed, in
        # order: Redis confirms each per channel, in order, on one connection
        self.pending: deque[bool] = deque()
        self.ready = asyncio.Event()
        self.resync = False

    def wants_subscription(self) -> bool:
        return self.pending[-1] if self.pending else self.ready.is_set()


class Hub:
    """One pub/sub connection per backend, multiplexed over every watcher.

    The dispatcher task owns reading and reconnecting; a writer task sends every command in
    the order it was requested, which is the order Redis confirms them in, so each
    channel's ``pending`` queue lines up with its confirmations. An idle connection is
    pinged every ``health_check_interval``; a ping still unanswered one interval later
    counts as a dead connection (a silent network drop), as does any error. After
    reconnecting, every channel is subscribed again and each watcher re-reads the stored
    record, since anything published meanwhile was lost.

    The process's reply channel is subscribed on every connection too; records pushed
    there go to the watchers of their task id (``listen``), and are dropped if there is
    none (a watcher that starts later reads the stored record).
    """

    def __init__(self, settings: RedisSettings, reply_channel: str) -> None:
        self._settings = settings
        self.reply_channel = reply_channel
        #: whether the reply channel's subscription is confirmed on the live connection
        self.reply_live = False
        self._listeners: dict[bytes, set[asyncio.Queue[bytes]]] = {}
        self._name = re.sub(r"[^\w:.-]", "_", f"{settings.prefix}:results")
        self._conn = settings.pubsub_connection(self._name)
        # reconnects so far: on a cluster each tries the next node (any node hears every
        # PUBLISH of the cluster), so a failed node is not waited for
        self._reconnects = 0
        self._channels: dict[str, Channel] = {}
        self._outbox: asyncio.Queue[tuple[int, tuple[str, ...]]] = asyncio.Queue()
        # commands requested for an earlier connection are dropped, not sent on the new one
        self._generation = 0
        self._live = False
        self._task: asyncio.Task[None] | None = None
        self._ping_every = max(0.5, settings.health_check_interval or 15.0)

    def subscribe(self, channel: str, inbox: asyncio.Queue[bytes]) -> None:
        """Register ``inbox`` for ``channel``'s messages. Never blocks.

        ``SUBSCRIBED`` is queued to ``inbox`` once Redis confirmed the subscription (at
        once if it already had); messages published before that may be missing.
        """
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = Channel()
        state.inboxes.add(inbox)
        if state.ready.is_set() and not state.pending:
            inbox.put_nowait(SUBSCRIBED)
            return
        state.waiting.add(inbox)
        if not state.wants_subscription() and self._live:
            # (while disconnected, the reconnect subscribes every channel with an inbox)
            state.pending.append(True)
            self._request("SUBSCRIBE", channel)

    def listen(self, task_id: str, inbox: asyncio.Queue[bytes]) -> None:
        """Queue records pushed to the reply channel for ``task_id`` to ``inbox``."""
        self._listeners.setdefault(task_id.encode(), set()).add(inbox)

    def unlisten(self, task_id: str, inbox: asyncio.Queue[bytes]) -> None:
        """Stop queueing ``task_id``'s pushed records to ``inbox``."""
        key = task_id.encode()
        inboxes = self._listeners.get(key)
        if inboxes is not None:
            inboxes.discard(inbox)
            if not inboxes:
                del self._listeners[key]

    def remove(self, channel: str, inbox: asyncio.Queue[bytes]) -> None:
        """Unregister ``inbox``; the last one out unsubscribes. Never blocks."""
        state = self._channels.get(channel)
        if state is None:
            return
        state.inboxes.discard(inbox)
        state.waiting.discard(inbox)
        if not state.inboxes and state.wants_subscription():
            state.ready.clear()
            if self._live:
                state.pending.append(False)
                self._request("UNSUBSCRIBE", channel)

    def _request(self, *args: str) -> None:
        self._outbox.put_nowait((self._generation, args))

    async def _write(self) -> None:
        while True:
            generation, args = await self._outbox.get()
            if generation != self._generation or not self._live:
                continue
            try:
                await redispy.send(self._conn, redispy.pack_command(*args))
            except (RedisError, OSError) as exc:
                # redis-py closed the connection; the reader fails and reconnects
                log.debug("pub/sub send failed: %s", self._settings.describe(exc))

    async def _run(self) -> None:
        writer = asyncio.get_running_loop().create_task(self._write())
        backoff = 0.05
        try:
            while True:
                try:
                    # a deadline: a connection opened into a blackhole must not stall the
                    # reconnect loop (and every waiter) until the network heals
                    limit = self._settings.socket_connect_timeout + self._settings.socket_timeout
                    async with asyncio.timeout(limit):
                        await redispy.connect(self._conn)
                    self._go_live()
                    backoff = 0.05
                    await self._read_until_broken()
                except Exception as exc:  # whatever broke, watchers must not hang on it
                    log.warning(
                        "result pub/sub connection to %s lost (%s); reconnecting",
                        self._settings.redacted,
                        self._settings.describe(exc),
                    )
                self._live = False
                self.reply_live = False
                self._generation += 1
                with contextlib.suppress(RedisError, OSError):
                    await redispy.drop(self._conn)
                if self._settings.cluster:
                    self._reconnects += 1
                    self._conn = self._settings.pubsub_connection(self._name, self._reconnects)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        finally:
            writer.cancel()

    def _go_live(self) -> None:
        # Synchronous from the check to the request: no watcher can slip a command in.
        self._live = True
        names: list[str] = [self.reply_channel]
        for name, state in list(self._channels.items()):
            state.pending.clear()
            # a watcher past its first read may have missed a record while disconnected
            state.resync = state.resync or state.ready.is_set()
            state.ready.clear()
            if not state.inboxes:
                del self._channels[name]
                continue
            state.pending.append(True)
            names.append(name)
        self._request("SUBSCRIBE", *names)

    async def _read_until_broken(self) -> None:
        ping_sent = False
        while True:
            reply = await redispy.read_message(self._conn, self._ping_every)
            if reply is None:
                if ping_sent:
                    raise RedisError("no reply to PING: connection considered dead")
                self._request("PING")
                ping_sent = True
                continue
            ping_sent = False
            if not isinstance(reply, list) or len(reply) < 3:
                continue  # PONG
            kind, name, payload = reply[0], reply[1].decode(), reply[2]
            if name == self.reply_channel:
                if kind == b"message":
                    task_id, _, record = payload.partition(b"\n")
                    for inbox in self._listeners.get(task_id, ()):
                        inbox.put_nowait(record)
                elif kind == b"subscribe":
                    self.reply_live = True
                continue
            state = self._channels.get(name)
            if state is None:
                continue
            if kind == b"message":
                for inbox in state.inboxes:
                    inbox.put_nowait(payload)
            elif kind in (b"subscribe", b"unsubscribe"):
                self._confirmed(name, state, kind == b"subscribe")

    def _confirmed(self, name: str, state: Channel, subscribed: bool) -> None:
        if state.pending:
            state.pending.popleft()
        if state.pending:
            return  # a later command on this channel is still to be confirmed
        if subscribed:
            state.ready.set()
            for inbox in state.waiting:
                inbox.put_nowait(SUBSCRIBED)
            if state.resync:
                state.resync = False
                for inbox in state.inboxes - state.waiting:
                    inbox.put_nowait(RESYNC)
            state.waiting.clear()
        elif not state.inboxes:
            del self._channels[name]

    async def close(self) -> None:
        """Stop the dispatcher, close the connection and end every watch with an error."""
        for state in self._channels.values():
            for inbox in state.inboxes:
                inbox.put_nowait(CLOSED)
            state.ready.set()  # a watcher still subscribing proceeds and meets CLOSED
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._live = False
        with contextlib.suppress(RedisError, OSError):
            await redispy.drop(self._conn)
