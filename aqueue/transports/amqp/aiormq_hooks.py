"""The aiormq internals aqueue relies on, all in this one module, with a version guard.

aio-pika's consumer costs a worker an aio-pika message object and a task per delivery, and
aiormq's own consumer still a task per delivery; these hooks take that off the hot path.
Nothing outside this module reaches past aiormq's public API: the rest of aqueue calls the
functions below.

* :func:`consuming_channel`: aiormq's channel under an aio-pika connection, with an
  unbounded frame buffer (aio-pika leaves aiormq's default of 10 frames, about three
  messages, so the connection's reader stalls on every few deliveries);
* :func:`deliver_inline`: the channel's reader calls the consumer itself, in delivery order,
  instead of starting a task per delivery (replaces ``Channel._on_deliver_frame``);
* :func:`hear_returns`: messages RabbitMQ returns go to a listener instead of an ERROR log
  record each, body included (replaces ``Channel._on_return_frame``);
* :func:`underlay` and :func:`publish_raw`: ``basic.publish`` on aiormq's channel, without an
  aio-pika message and without waiting for the socket write;
* :func:`server_version`, :func:`blocked`: what aiormq's connection knows about the server.

**Version guard.** aiormq's channel reader looks its frame handlers up on every frame only
from aiormq 7.2.1 on. Before that it binds them once, when the channel opens (a mapping built
at the start of ``Channel._reader``), so a handler replaced afterwards is silently never
called. :data:`FRAME_HOOKS` is true only on an aiormq that looks them up per frame; elsewhere
:func:`deliver_inline` and :func:`hear_returns` change nothing and return ``None`` /
``False`` (deliveries then take aiormq's task each; returns are not asked for).
``tests/brokers/test_rabbitmq_acks.py`` proves that deliveries really take the inline path
on the installed aiormq (:attr:`InlineDelivery.delivered` counts them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from pamqp.header import ContentHeader

log = logging.getLogger("aqueue.amqp")

#: the first aiormq whose channel reader looks its frame handlers up on every frame
FRAME_HOOKS_SINCE = (7, 2, 1)

#: a consumer the consuming channel's reader calls inline (see :func:`deliver_inline`)
InlineConsumer = Callable[[DeliveredMessage], None]
#: called inline by a channel's reader with each returned message (see :func:`hear_returns`)
ReturnListener = Callable[[DeliveredMessage], None]


def version_tuple(text: str) -> tuple[int, ...]:
    """``"3.10.8"`` as ``(3, 10, 8)``; a piece without digits counts as 0."""
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _installed_aiormq() -> tuple[int, ...]:
    try:
        return version_tuple(version("aiormq"))
    except PackageNotFoundError:  # not installed as a distribution: assume the worst
        return (0,)


#: the installed aiormq's version
AIORMQ_VERSION = _installed_aiormq()
#: whether replacing a channel's frame handlers takes effect (see the module docstring)
FRAME_HOOKS = AIORMQ_VERSION >= FRAME_HOOKS_SINCE


# -- channels --------------------------------------------------------------------------------


async def consuming_channel(conn: AbstractConnection) -> aiormq.abc.AbstractChannel:
    """A new aiormq channel on ``conn``, without publisher confirms and with an unbounded
    frame buffer (what it holds is bounded by the consumers' prefetch).

    Raises:
        ChannelInvalidStateError: the connection is closed.
    """
    transport = conn.transport
    if transport is None:
        raise aiormq.exceptions.ChannelInvalidStateError("the connection is closed")
    channel: aiormq.abc.AbstractChannel = await transport.connection.channel(
        publisher_confirms=False, frame_buffer_size=0
    )
    return channel


async def underlay(channel: AbstractChannel) -> aiormq.Channel:
    """The aiormq channel under an aio-pika channel."""
    raw = await channel.get_underlay_channel()
    if not isinstance(raw, aiormq.Channel):
        raise TypeError(f"aio-pika's channel is over {type(raw).__name__}, not aiormq.Channel")
    return raw


async def publish_raw(
    channel: aiormq.Channel,
    body: bytes,
    routing_key: str,
    properties: aiormq.spec.Basic.Properties,
    *,
    mandatory: bool,
    timeout: float,
) -> None:
    """``basic.publish`` through the default exchange on an aiormq channel, handed to the
    connection's writer without waiting for the socket write."""
    await channel.basic_publish(
        body,
        routing_key=routing_key,
        properties=properties,
        mandatory=mandatory,
        wait=False,
        timeout=timeout,
    )


# -- frame hooks ---------------------------------------------------------------------------


class InlineDelivery:
    """The inline delivery hook of one channel: which consumers it calls, and how often."""

    __slots__ = ("consumers", "delivered")

    def __init__(self, consumers: dict[str, InlineConsumer]) -> None:
        #: consumer tag -> what the channel's reader calls for each of its deliveries
        self.consumers = consumers
        #: deliveries handed to a consumer by the channel's reader
        self.delivered = 0


def deliver_inline(
    channel: aiormq.abc.AbstractChannel, consumers: dict[str, InlineConsumer]
) -> InlineDelivery | None:
    """Make ``channel``'s reader call the consumers of ``consumers`` (by consumer tag) itself,
    in delivery order, instead of starting a task for each delivery; ``None`` (nothing
    changed) where the installed aiormq cannot (:data:`FRAME_HOOKS`, or a hook is missing).

    The consumers only buffer the message (no await), so they can run inline: a task per
    delivery (plus a task wrapper, a weak-set entry and two done callbacks) is a large share
    of a fast worker's time per task. The replacement reads the content the way aiormq does
    (``_get_frame``, ``_read_content``); deliveries for any other consumer tag, or for a tag
    aiormq no longer knows (cancelled), go through aiormq's own handler unchanged. An
    exception from a consumer is logged, as aiormq logs a failed consumer task.
    """
    raw: Any = channel
    original = getattr(raw, "_on_deliver_frame", None)
    known = getattr(raw, "consumers", None)
    read = _content_reader(raw)
    if not (FRAME_HOOKS and callable(original) and read is not None and isinstance(known, dict)):
        return None
    hook = InlineDelivery(consumers)

    async def on_deliver_frame(frame: Any) -> None:
        tag = getattr(frame, "consumer_tag", None)
        consumer = consumers.get(tag) if isinstance(tag, str) and tag in known else None
        if consumer is None:
            await original(frame)
            return
        message = await read(frame)
        hook.delivered += 1
        try:
            consumer(message)
        except Exception:
            log.exception("consumer %s failed on a delivery", tag)

    raw._on_deliver_frame = on_deliver_frame
    return hook


def hear_returns(channel: aiormq.abc.AbstractChannel, listener: ReturnListener) -> bool:
    """Make ``channel`` (one without publisher confirms) hand every message RabbitMQ returns
    (``basic.return``: a ``mandatory`` publish nothing could route) to ``listener``, called
    inline by the channel's reader; ``False`` (nothing changed) where the installed aiormq
    cannot (:data:`FRAME_HOOKS`, or a hook is missing), or the channel has publisher confirms
    (aiormq then settles returns through its confirmations, which this must not bypass).

    aiormq matches a return to a pending confirmation; on a channel without confirms there
    is none, so it drops the message and logs an ERROR record per return, body included.
    """
    raw: Any = channel
    original = getattr(raw, "_on_return_frame", None)
    read = _content_reader(raw)
    confirms = getattr(raw, "publisher_confirms", True)
    if not (FRAME_HOOKS and callable(original) and read is not None) or confirms:
        return False

    async def on_return_frame(frame: Any) -> None:
        message = await read(frame)
        try:
            listener(message)
        except Exception:
            log.exception("a listener of returned messages failed")

    raw._on_return_frame = on_return_frame
    return True


def _content_reader(raw: Any) -> Callable[[Any], Awaitable[DeliveredMessage]] | None:
    """How aiormq's channel reader reads the header and body that follow a delivery or a
    return (``_get_frame`` then ``_read_content``), or ``None`` if this aiormq has neither."""
    get_frame = getattr(raw, "_get_frame", None)
    read_content = getattr(raw, "_read_content", None)
    if not (callable(get_frame) and callable(read_content)):
        return None

    async def read(frame: Any) -> DeliveredMessage:
        header = await get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"unexpected frame {header!r} instead of a content header")
        message: DeliveredMessage = await read_content(frame, header)
        return message

    return read


# -- the connection --------------------------------------------------------------------------


def _raw_connection(conn: AbstractConnection | None) -> Any:
    underlay_ = getattr(conn, "transport", None)
    return getattr(underlay_, "connection", None)


def server_version(conn: AbstractConnection) -> str:
    """The RabbitMQ version the server announced, or ``""``."""
    props = getattr(_raw_connection(conn), "server_properties", None) or {}
    announced = props.get("version", "") if isinstance(props, dict) else ""
    return announced.decode() if isinstance(announced, bytes) else str(announced)


def blocked(conn: AbstractConnection | None) -> bool:
    """Whether RabbitMQ blocked ``conn`` (a memory or disk resource alarm): aiormq keeps it
    in a name-mangled event, set while unblocked."""
    event = getattr(_raw_connection(conn), "_Connection__connection_unblocked", None)
    return isinstance(event, asyncio.Event) and not event.is_set()
