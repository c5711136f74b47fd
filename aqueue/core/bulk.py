"""Publishing many messages: ids, encoding with the size limit, and chunked sending.

Shared by ``delay_many`` / ``apply_many`` / ``send_many`` (``sending.py``) and by the
workflow engine (a group's members). Everything here is per message and kept cheap: one
``urandom`` call for all ids, one encoder call and one ``Outgoing`` per message.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from .errors import BulkPublishError, EncodeError, MessageTooLarge, PublishTimeout
from .serialization import ENCODE_FAILURES, SerializerName, encode_error, encoder_of

if TYPE_CHECKING:
    from .message import MessageOut
    from .protocols import Broker, Outgoing
    from .result import AsyncResult
    from .signing import Keyring

# the variant nibble of a version-4 UUID is 10xx: 8, 9, a or b
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_ids(n: int) -> list[str]:
    """``n`` random version-4 UUIDs as ``str(uuid.uuid4())`` writes them, from one urandom."""
    h = os.urandom(16 * n).hex()
    v = _VARIANT
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{v[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


def encode_batch(
    messages: Sequence[MessageOut],
    serializer: SerializerName | Sequence[SerializerName],
    max_bytes: int,
    keyring: Keyring | None = None,
) -> list[Outgoing]:
    """Encode every message (one serializer, or one per message) before any I/O; each
    signed when a ``keyring`` is given.

    Raises:
        MessageTooLarge: a message is over ``max_bytes``; the error names its index.
    """
    from .protocols import Outgoing  # a msgspec Struct: cheap to build

    out: list[Outgoing] = []
    append = out.append
    sign = keyring.sign if keyring is not None else None
    try:
        if isinstance(serializer, str):
            encode = encoder_of(serializer)
            for m in messages:
                body = encode(m)
                if len(body) > max_bytes:
                    raise _too_large(m, len(out), len(body), max_bytes)
                if sign is not None:
                    body = sign(body, eta=m.eta)
                append(Outgoing(m.id, m.queue, body, m.priority, m.eta, m.exchange, m.routing_key))
            return out
        for m, fmt in zip(messages, serializer, strict=True):
            body = encoder_of(fmt)(m)
            if len(body) > max_bytes:
                raise _too_large(m, len(out), len(body), max_bytes)
            if sign is not None:
                body = sign(body, eta=m.eta)
            append(Outgoing(m.id, m.queue, body, m.priority, m.eta, m.exchange, m.routing_key))
    except ENCODE_FAILURES as exc:
        m = messages[len(out)]
        raise EncodeError(
            f"message {len(out)} ({m.task}, id {m.id}): {encode_error(exc)}; nothing was sent"
        ) from None
    return out


def _too_large(m: MessageOut, index: int, size: int, max_bytes: int) -> MessageTooLarge:
    return MessageTooLarge(
        f"message {index} ({m.task}, id {m.id}) is {size} bytes; the limit is {max_bytes} "
        "(setting max_message_bytes); nothing was sent"
    )


async def publish_chunks(
    broker: Broker,
    batch: Sequence[Outgoing],
    results: Sequence[AsyncResult[Any]],
    *,
    timeout: float,
    where: str,
    chunk: int,
) -> None:
    """Publish ``batch`` in order, ``chunk`` messages per broker call, each within ``timeout``.

    Duplicate ids (the broker answers ``False``) are not errors, as with ``delay()``.

    Raises:
        BulkPublishError: a chunk failed; earlier chunks are stored, later ones not sent.
            ``results`` (aligned with ``batch``) is passed on to the error.
    """
    total = len(batch)
    start = 0
    while start < total:
        part = batch[start : start + chunk]
        end = start + len(part)
        try:
            async with asyncio.timeout(timeout):
                await broker.publish(part)
        except Exception as exc:
            cause: Exception = exc
            if isinstance(exc, TimeoutError):
                cause = PublishTimeout(
                    f"publishing {len(part)} message(s) did not complete within {timeout}s "
                    f"(broker {where}); they may or may not have been queued"
                )
            raise BulkPublishError(
                f"bulk publish of {total} message(s) to {where} failed at messages "
                f"{start}..{end - 1} ({type(cause).__name__}: {cause}): the first {start} "
                f"are stored, those {start}..{end - 1} may or may not be, "
                f"the last {total - end} were not sent",
                published=start,
                uncertain=len(part),
                results=list(results),
            ) from cause
        start = end
