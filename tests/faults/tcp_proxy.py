"""A small asyncio TCP proxy for network faults: blackhole, slow replies, lost replies.

Every accepted client connection gets its own upstream connection. Each direction is a
reader task that queues chunks and a writer task that forwards them, so:

* ``pause()`` / ``resume()`` stop and restart forwarding in both directions without
  closing any socket (a network blackhole that later heals; what was sent meanwhile is
  delivered late, as TCP retransmission would);
* ``reply_delay`` holds every server->client chunk that long before forwarding it (a slow
  network: replies are in flight when a caller gives up);
* ``drop_reply_after(marker)`` arms a one-shot fault: the next connection whose
  client->server bytes contain ``marker`` has those bytes forwarded, and when the server's
  reply arrives the reply is discarded and the connection aborted (the request ran, its
  confirmation was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field

_EOF = b""


@dataclass
class _Pair:
    id: int
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # set when a client->server chunk matched the armed marker: the next reply is dropped
    drop_next_reply: bool = False
    tail: bytes = b""
    closed: bool = False


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``.

    Use ``async with TcpProxy(...) as proxy:``; ``proxy.port`` is where clients connect.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.reply_delay = 0.0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pairs: dict[int, _Pair] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._marker: bytes | None = None
        #: connections aborted by ``drop_reply_after`` so far
        self.dropped = 0
        #: set each time a reply was dropped
        self.reply_dropped = asyncio.Event()
        #: connections accepted so far
        self.accepted = 0

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs.values()):
            self._close(pair, abort=True)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._pairs.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # -- faults -------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop forwarding both ways; sockets stay open (a blackhole)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again, starting with whatever was held back."""
        self._flowing.set()

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    def drop_reply_after(self, marker: bytes) -> None:
        """Arm a one-shot fault: the reply to the request containing ``marker`` is lost."""
        self._marker = marker
        self.reply_dropped.clear()

    def kill_all(self) -> None:
        """Abort every proxied connection (both sides), as a network reset would."""
        for pair in list(self._pairs.values()):
            self._close(pair, abort=True)

    @property
    def live(self) -> int:
        """Open proxied connections."""
        return sum(1 for p in self._pairs.values() if not p.closed)

    # -- plumbing -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(next(self._ids), writer, up_writer)
        self._pairs[pair.id] = pair
        c2s: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        s2c: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        pair.tasks = [
            loop.create_task(self._read(pair, reader, c2s, upstream=True)),
            loop.create_task(self._write(pair, up_writer, c2s)),
            loop.create_task(self._read(pair, up_reader, s2c, upstream=False)),
            loop.create_task(self._write(pair, writer, s2c)),
        ]
        for t in pair.tasks:
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _read(
        self,
        pair: _Pair,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]],
        *,
        upstream: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await reader.read(65536)
            except (OSError, asyncio.IncompleteReadError):
                data = _EOF
            if not data:
                queue.put_nowait((0.0, _EOF))
                return
            if upstream:
                self._match(pair, data)
                queue.put_nowait((0.0, data))
            elif pair.drop_next_reply:
                # the request ran; its confirmation is lost with the connection
                pair.drop_next_reply = False
                self.dropped += 1
                self._close(pair, abort=True)
                self.reply_dropped.set()
                return
            else:
                queue.put_nowait((loop.time() + self.reply_delay, data))

    def _match(self, pair: _Pair, data: bytes) -> None:
        marker = self._marker
        if marker is None:
            pair.tail = b""
            return
        window = pair.tail + data
        if marker in window:
            self._marker = None
            pair.drop_next_reply = True
            pair.tail = b""
        else:
            pair.tail = window[-(len(marker) - 1) :] if len(marker) > 1 else b""

    async def _write(
        self,
        pair: _Pair,
        writer: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._flowing.wait()
            if pair.closed:
                return
            if data == _EOF:
                # one side closed: close the other (after what was queued before it)
                self._close(pair, abort=False)
                return
            writer.write(data)
            try:
                await writer.drain()
            except OSError:
                self._close(pair, abort=True)
                return

    def _close(self, pair: _Pair, *, abort: bool) -> None:
        if pair.closed:
            return
        pair.closed = True
        for w in (pair.client, pair.server):
            if abort:
                w.transport.abort()
            else:
                w.close()
        current = asyncio.current_task()
        for t in pair.tasks:
            if t is not current:
                t.cancel()
        self._pairs.pop(pair.id, None)
