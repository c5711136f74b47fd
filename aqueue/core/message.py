"""Wire format v1: the task message and the result record (see docs/protocol.md).

Both are msgspec Structs. Producers encode the ``*Out`` form, whose ``args`` / ``kwargs`` /
``value`` hold Python values; consumers decode the ``*In`` form, which keeps those fields as
``msgspec.Raw`` until the task's (or caller's) annotations are known, then decodes them
against those types. The two forms share every other field through a common base.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .canvas import Node
from .errors import DecodeError, MessageTooLarge
from .serialization import SerializerName, decode, encode, format_of

PROTOCOL_VERSION: Final = 1


class _MessageBase(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    version: int = PROTOCOL_VERSION
    id: str
    task: str
    queue: str = "default"
    headers: dict[str, str] = {}
    #: executions that happened before this enqueue; the running attempt is this plus the
    #: broker's delivery count for the current enqueue (so it only ever grows).
    prior_attempts: int = 0
    #: how many times ``retry()`` re-enqueued this task (Celery's ``request.retries``).
    retries: int = 0
    max_retries: int | None = None
    eta: float | None = None  # unix seconds, UTC
    expires: float | None = None  # unix seconds, UTC
    priority: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    sent_at: float = 0.0
    #: steps to run after this task, the first one given this task's result
    chain: tuple[Node, ...] = ()
    #: callbacks applied with the result on success
    link: tuple[Node, ...] = ()
    #: callbacks applied with ``(task_id, error)`` on failure
    link_error: tuple[Node, ...] = ()
    #: id of the chord this task completes a member of (its meta lives in the backend)
    chord: str | None = None


class MessageOut(_MessageBase, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A task message as a producer builds it.

    Not tracked by the cyclic garbage collector (``gc=False``): thousands are alive at once
    while concurrent ``delay()`` calls await the broker, and tracking them made collections
    a large part of a concurrent publish. A message is never part of a reference cycle (its
    arguments are data to encode, which cannot refer back to it).
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}


class MessageIn(_MessageBase, frozen=True, kw_only=True, omit_defaults=True):
    """A task message as a worker decodes it: arguments still raw."""

    args: msgspec.Raw = msgspec.Raw(b"")
    kwargs: msgspec.Raw = msgspec.Raw(b"")


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A remote error as text: never a pickled exception."""

    type: str
    message: str
    traceback: str | None = None
    #: machine-readable cause when aqueue itself failed the task (``unknown_task``, ...)
    reason: str | None = None


class _ResultBase(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    version: int = PROTOCOL_VERSION
    id: str
    state: str
    task: str | None = None
    error: ErrorInfo | None = None
    attempt: int = 0
    retries: int = 0
    worker: str | None = None
    date_started: float | None = None
    date_done: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None


class ResultOut(_ResultBase, frozen=True, kw_only=True, omit_defaults=True):
    """A result or state record as a worker writes it."""

    value: Any = None
    meta: Any = None


class ResultIn(_ResultBase, frozen=True, kw_only=True, omit_defaults=True):
    """A result record as a client reads it: value still raw."""

    value: msgspec.Raw = msgspec.Raw(b"")
    meta: msgspec.Raw = msgspec.Raw(b"")


def encode_message(msg: MessageOut, serializer: SerializerName, max_bytes: int) -> bytes:
    """Encode a message, refusing one over ``max_bytes`` before any I/O happens."""
    body = encode(msg, serializer)
    if len(body) > max_bytes:
        raise MessageTooLarge(
            f"message for {msg.task} is {len(body)} bytes; the limit is {max_bytes} "
            "(setting max_message_bytes)"
        )
    return body


def decode_message(body: bytes, max_bytes: int) -> MessageIn:
    """Decode a message body, size-checked before decoding.

    Raises:
        DecodeError: not a valid v1 message (or too large).
    """
    if len(body) > max_bytes:
        raise DecodeError(f"message of {len(body)} bytes exceeds max_message_bytes={max_bytes}")
    try:
        msg: MessageIn = decode(body, MessageIn, format_of(body))
    except (msgspec.DecodeError, RecursionError) as exc:
        raise DecodeError(str(exc)) from None
    if msg.version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {msg.version}")
    return msg


def decode_result(body: bytes) -> ResultIn:
    """Decode a stored result record."""
    try:
        record: ResultIn = decode(body, ResultIn, format_of(body))
    except (msgspec.DecodeError, RecursionError) as exc:
        raise DecodeError(f"bad result record: {exc}") from None
    return record


def raw_is_empty(raw: msgspec.Raw) -> bool:
    """Whether a Raw field was absent from the message."""
    return len(raw) == 0
