"""Wire format v1: the task message and the result record (see docs/protocol.md).

Both are msgspec Structs. Producers encode the ``*Out`` form, whose ``args`` / ``kwargs`` /
``value`` hold Python values; consumers decode the ``*In`` form, which keeps those fields as
``msgspec.Raw`` until the task's (or caller's) annotations are known, then decodes them
against those types. The two forms share every other field through a common base.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from .errors import DecodeError, MessageTooLarge, ResultTooLarge
from .nodes import Node
from .serialization import DECODE_ERRORS, SerializerName, decode, encode, format_of
from .signing import Keyring, unframe

PROTOCOL_VERSION: Final = 1

# Bounds a decoded message must keep (the producer's option resolver keeps the same ones):
# a field outside them makes the whole message a ``decode_error``, before anything of it is
# used, so no number from a message can overflow an encoder, a Lua script or SQLite later.
#: task ids, names, queue names and workflow links
MAX_NAME_LENGTH: Final = 1024
#: attempts and retries
MAX_COUNT: Final = 2**31 - 1
#: unix seconds (year 5138); also keeps NaN and infinities out
MAX_TIMESTAMP: Final = 1e11
#: seconds of a time limit (ten years)
MAX_SECONDS: Final = 10 * 366 * 86400.0

#: headers a message may carry (aqueue's own ``x-aqueue-*`` ones included)
MAX_HEADERS: Final = 128
#: headers a caller may set: the rest are kept for aqueue's own
MAX_CALLER_HEADERS: Final = MAX_HEADERS - 8
#: characters of a header's name
MAX_HEADER_NAME_LENGTH: Final = 256
#: characters of a header's value
MAX_HEADER_VALUE_LENGTH: Final = 8192

#: headers aqueue itself puts in messages (rate slots, where results go): reserved, and
#: not shown to tasks
INTERNAL_HEADER_PREFIX: Final = "x-aqueue-"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Timestamp = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_TIMESTAMP)]
Seconds = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_SECONDS)]
#: the priorities aqueue sends: 0..9, higher runs first, on every broker (Celery's range;
#: docs/routing.md). A message from another producer may carry up to 255 (AMQP's range).
MAX_PRIORITY: Final = 9
Priority = Annotated[int, msgspec.Meta(ge=0, le=255)]
#: an exchange or routing key, as the producer routed the message ("": none)
AmqpName = Annotated[str, msgspec.Meta(max_length=255)]
#: the headers: at most MAX_HEADERS, each name and value bounded. msgspec checks a map's
#: length from its header, before it reads (or allocates for) a single entry
Headers = Annotated[
    dict[
        Annotated[str, msgspec.Meta(max_length=MAX_HEADER_NAME_LENGTH)],
        Annotated[str, msgspec.Meta(max_length=MAX_HEADER_VALUE_LENGTH)],
    ],
    msgspec.Meta(max_length=MAX_HEADERS),
]


class _MessageBase(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    version: int = PROTOCOL_VERSION
    id: Name
    task: Name
    queue: Name = "celery"
    #: the exchange the producer published to ("": straight to ``queue``)
    exchange: AmqpName = ""
    #: the routing key it published with (informational when ``exchange`` is "")
    routing_key: AmqpName = ""
    headers: Headers = {}
    #: executions that happened before this enqueue; the running attempt is this plus the
    #: broker's delivery count for the current enqueue (so it only ever grows).
    prior_attempts: Count = 0
    #: how many times ``retry()`` re-enqueued this task (Celery's ``request.retries``).
    retries: Count = 0
    max_retries: Count | None = None
    eta: Timestamp | None = None  # unix seconds, UTC
    expires: Timestamp | None = None  # unix seconds, UTC
    priority: Priority = 0
    time_limit: Seconds | None = None
    soft_time_limit: Seconds | None = None
    ignore_result: bool = False
    parent_id: Name | None = None
    root_id: Name | None = None
    group_id: Name | None = None
    sent_at: Timestamp = 0.0
    #: steps to run after this task, the first one given this task's result
    chain: tuple[Node, ...] = ()
    #: callbacks applied with the result on success
    link: tuple[Node, ...] = ()
    #: callbacks applied with ``(task_id, error)`` on failure
    link_error: tuple[Node, ...] = ()
    #: id of the chord this task completes a member of (its meta lives in the backend)
    chord: Name | None = None


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
    #: the task's arguments, only with ``result_extended=True`` (Celery's setting)
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None
    #: what the task sent while it ran, each as its result's ``as_tuple()`` (Celery's
    #: ``children``); absent when it sent nothing
    children: list[Any] | None = None


class ResultIn(_ResultBase, frozen=True, kw_only=True, omit_defaults=True):
    """A result record as a client reads it: value still raw."""

    value: msgspec.Raw = msgspec.Raw(b"")
    meta: msgspec.Raw = msgspec.Raw(b"")
    args: msgspec.Raw = msgspec.Raw(b"")
    kwargs: msgspec.Raw = msgspec.Raw(b"")
    children: msgspec.Raw = msgspec.Raw(b"")


def encode_message(
    msg: MessageOut, serializer: SerializerName, max_bytes: int, keyring: Keyring | None = None
) -> bytes:
    """Encode a message, refusing one over ``max_bytes`` before any I/O happens; signed
    when a ``keyring`` is given."""
    body = encode(msg, serializer)
    if len(body) > max_bytes:
        raise MessageTooLarge(
            f"message for {msg.task} is {len(body)} bytes; the limit is {max_bytes} "
            "(setting max_message_bytes)"
        )
    return body if keyring is None else keyring.sign(body, eta=msg.eta)


def decode_message(body: bytes, max_bytes: int) -> MessageIn:
    """Decode a message body, size-checked before decoding.

    Nothing is allocated for a length the body only claims: msgspec checks that a string,
    binary, array or map of the claimed length fits in what is left of the body before it
    allocates it (a 10-byte body claiming a 4 GiB string fails as truncated). Nesting is
    bounded by the interpreter's recursion limit (msgspec raises ``RecursionError``).

    A signed frame's body is decoded *unverified* (for ``inspect``, dead-letter listings):
    the worker verifies a message (``signing.Keyring.verify``) before it decodes it.

    Raises:
        DecodeError: not a valid v1 message (or too large, too deeply nested, of another
            protocol version).
    """
    body = unframe(body)
    if len(body) > max_bytes:
        raise DecodeError(f"message of {len(body)} bytes exceeds max_message_bytes={max_bytes}")
    try:
        msg: MessageIn = decode(body, MessageIn, format_of(body))
    except DECODE_ERRORS as exc:
        raise DecodeError(str(exc)) from None
    if msg.version != PROTOCOL_VERSION:
        raise DecodeError(
            f"unsupported protocol version {msg.version} (this worker reads version "
            f"{PROTOCOL_VERSION})"
        )
    return msg


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who a message that failed to decode was for: enough to fail its task."""

    id: Name
    task: Any = None
    prior_attempts: Any = 0

    @property
    def task_name(self) -> str | None:
        """The task name, if it is one."""
        task = self.task
        return task if type(task) is str and 0 < len(task) <= MAX_NAME_LENGTH else None

    def attempt(self, delivery_count: int) -> int:
        """The running attempt, as for a valid message (a bad ``prior_attempts`` counts 0)."""
        prior = self.prior_attempts
        if type(prior) is not int or not 0 <= prior <= MAX_COUNT:
            prior = 0
        return prior + delivery_count


def peek_identity(body: bytes, max_bytes: int) -> Identity | None:
    """The id and task name of a message that is not valid as a whole, if readable.

    Reads only the ``id``, ``task`` and ``prior_attempts`` fields (every other field may be
    of any type); ``None`` if the body is over ``max_bytes``, not a map, or has no usable id.
    """
    body = unframe(body)
    if len(body) > max_bytes:
        return None
    try:
        identity: Identity = decode(body, Identity, format_of(body))
    except DECODE_ERRORS:
        return None
    return identity


def encode_result(record: ResultOut, serializer: SerializerName, max_bytes: int) -> bytes:
    """Encode a result record, refusing one over ``max_bytes`` (setting ``max_result_bytes``).

    Raises:
        EncodeError: a value in ``record`` cannot be encoded.
        ResultTooLarge: the encoded record is over ``max_bytes``.
    """
    body = encode(record, serializer)
    if len(body) > max_bytes:
        raise ResultTooLarge(
            f"the result of {record.task or record.id} is {len(body)} bytes encoded; the limit "
            f"is {max_bytes} (setting max_result_bytes)"
        )
    return body


def decode_result(body: bytes, max_bytes: int | None = None) -> ResultIn:
    """Decode a stored result record, refusing one over ``max_bytes`` before decoding.

    A signed record is decoded unverified (see ``App.verify_record``).

    Raises:
        DecodeError: not a valid record, or over ``max_bytes`` (``ResultTooLarge``).
    """
    body = unframe(body)
    if max_bytes is not None and len(body) > max_bytes:
        raise ResultTooLarge(
            f"stored result record of {len(body)} bytes exceeds max_result_bytes={max_bytes}"
        )
    try:
        record: ResultIn = decode(body, ResultIn, format_of(body))
    except DECODE_ERRORS as exc:
        raise DecodeError(f"bad result record: {exc}") from None
    return record


def raw_is_empty(raw: msgspec.Raw) -> bool:
    """Whether a Raw field was absent from the message."""
    return len(raw) == 0
