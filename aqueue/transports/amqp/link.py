"""One AMQP connection, opened on first use and again after it is lost, and what a failed
call raises.

Reconnection is lazy and explicit (not aio-pika's ``RobustConnection``, which restores
channels behind the caller's back): a lost connection is reported to the owner at once
(``on_lost``), and the next :meth:`Link.connection` opens a new one. The owner decides what
depended on the old one and opens it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

from aqueue.core.errors import BrokerError

from . import aiormq_hooks
from .settings import RabbitSettings

log = logging.getLogger("aqueue.amqp")

#: what aiormq raises when a channel or the connection fails under a call
AMQP_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)

#: called with why the connection was lost (``None``: closed without an error)
LostCallback = Callable[[BaseException | None], None]
#: called with each connection just opened
OpenCallback = Callable[[AbstractConnection], None]
#: called before a connection opens and when the link closes
ResetCallback = Callable[[], None]


class Link:
    """One AMQP connection of one owner (a broker, a result backend).

    Args:
        settings: where to connect, and how long it may take.
        name: the connection's name in RabbitMQ's management UI (the pid is appended).
        label: what failed connections are reported as (``"rpc:// results: "``), or ``""``.
        on_open: called with each new connection.
        on_lost: called when the connection is lost (not closed by :meth:`close`):
            everything opened on it is gone.
        on_reset: called before a new connection opens and when the link closes: whatever
            was opened on an earlier connection is gone.
    """

    def __init__(
        self,
        settings: RabbitSettings,
        *,
        name: str,
        label: str = "",
        on_open: OpenCallback | None = None,
        on_lost: LostCallback | None = None,
        on_reset: ResetCallback | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.label = label
        self.on_open = on_open
        self.on_lost = on_lost
        self.on_reset = on_reset
        #: the live connection, or ``None``
        self.conn: AbstractConnection | None = None
        #: the RabbitMQ version the server announced on the last connection
        self.server_version = ""
        #: true while :meth:`close` runs (a loss reported meanwhile is ours)
        self.closing = False
        self._opening: asyncio.Task[AbstractConnection] | None = None
        #: the last connection lost (not closed by us), closed with the link
        self._dropped: AbstractConnection | None = None

    async def connection(self) -> AbstractConnection:
        """The live connection, opened if needed (at most one attempt runs at a time).

        Raises:
            BrokerError: it could not be opened within ``connect_timeout``.
        """
        conn = self.conn
        if conn is not None and not conn.is_closed:
            return conn
        task = self._opening
        if task is None or task.done():
            # shielded: a cancelled caller must not leave a half-open connection behind
            # (close() ends an attempt every caller gave up on)
            task = self._opening = asyncio.get_running_loop().create_task(self._open())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                # not this caller's cancellation: close() ended the attempt
                raise BrokerError(
                    f"{self.label}the connection to RabbitMQ at {self.settings.redacted} "
                    "was closed while opening"
                ) from None
            raise

    async def _open(self) -> AbstractConnection:
        s = self.settings
        self._reset()
        try:
            async with asyncio.timeout(s.connect_timeout):
                conn = await aio_pika.connect(
                    s.client_url,
                    timeout=s.connect_timeout,
                    client_properties={"connection_name": f"{self.name} pid {os.getpid()}"},
                )
        except TimeoutError:
            raise BrokerError(
                f"{self.label}could not connect to RabbitMQ at {s.redacted} "
                f"within {s.connect_timeout}s"
            ) from None
        except Exception as exc:
            raise BrokerError(
                f"{self.label}could not connect to RabbitMQ at {s.redacted}: "
                f"{s.describe_connect_error(exc)}"
            ) from None
        conn.close_callbacks.add(self._on_connection_closed)
        self.conn = conn
        self.server_version = aiormq_hooks.server_version(conn)
        if self.on_open is not None:
            self.on_open(conn)
        return conn

    async def close(self) -> None:
        """Close the connection (and the last one lost, if still open); idempotent."""
        self.closing = True
        try:
            opening, self._opening = self._opening, None
            if opening is not None and not opening.done():
                # An attempt outlives its callers (shielded): end it now, or it goes on
                # after the close, and if the event loop closes first aiormq's connect is
                # collected mid-handshake ("Event loop is closed" raised from its cleanup).
                opening.cancel()
                await asyncio.wait([opening], timeout=self.settings.operation_timeout)
            conn, self.conn, dropped, self._dropped = self.conn, None, self._dropped, None
            self._reset()
            for old in (dropped, conn):
                if old is not None:
                    await close_quietly(old, self.settings.operation_timeout)
        finally:
            self.closing = False

    def blocked(self) -> bool:
        """Whether RabbitMQ blocked the connection (a memory or disk resource alarm)."""
        return aiormq_hooks.blocked(self.conn)

    def scrub(self, exc: BaseException) -> str:
        """An exception as text, without the password."""
        return self.settings.scrub(exc)

    def _on_connection_closed(self, sender: Any, exc: BaseException | None) -> None:
        if sender is not self.conn:
            return  # one we closed, or an older one whose loss was handled when replaced
        self.conn, self._dropped = None, sender
        if self.on_lost is not None:
            self.on_lost(exc)

    def _reset(self) -> None:
        if self.on_reset is not None:
            self.on_reset()


async def close_quietly(conn: AbstractConnection, timeout: float) -> None:
    """Close ``conn`` if it is open, within ``timeout``; failures are only logged (DEBUG)."""
    if conn.is_closed:
        return
    try:
        async with asyncio.timeout(timeout):
            await conn.close()
    except Exception as exc:  # closing is best effort
        log.debug("closing an AMQP connection failed: %s", type(exc).__name__)
