"""Message bodies that break one of aqueue's limits (issue 19), each with what must happen.

Shared by the unit tests (``tests/test_message_limits.py``: what ``decode_message`` says)
and the conformance suite (``test_limits.py``: what a worker does with them on every
broker). The wrong-type cases are generated from ``MessageIn``'s fields, so a field added
to the envelope is covered without touching this file.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from aqueue.core.message import (
    MAX_HEADER_NAME_LENGTH,
    MAX_HEADER_VALUE_LENGTH,
    MAX_HEADERS,
    MessageIn,
)

#: values tried, in order, until one is refused by a field's type (all encodable)
_WRONG_VALUES: tuple[Any, ...] = ("x", 12345, [1], {"k": "v"}, True, -1.5, None)

#: 4 GiB - 1: the largest length a msgpack str32 / bin32 / array32 / map32 can claim
_HUGE = 2**32 - 1


@dataclass(frozen=True)
class Bad:
    """A body a worker must refuse: dead-lettered with ``reason``; if ``fails_task``, its
    task (``id``) is FAILURE with ``text`` in the error, else it stays PENDING."""

    name: str
    id: str
    body: bytes
    reason: str = "decode_error"
    fails_task: bool = True
    text: str = ""


def _fields(id_: str, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "task": "t.add", "args": [1, 2], **extra}


def _msgpack(**extra: Any) -> tuple[str, bytes]:
    tid = str(uuid.uuid4())
    return tid, msgspec.msgpack.encode(_fields(tid, **extra))


def _refused(field: str, value: Any) -> bool:
    """Whether ``value`` in ``field`` alone makes the envelope invalid."""
    body = msgspec.msgpack.encode(_fields("probe", **{field: value}))
    try:
        msgspec.msgpack.decode(body, type=MessageIn)
    except msgspec.ValidationError:
        return True
    return False


def wrong_types() -> list[Bad]:
    """For every field of ``MessageIn``, a message with a value of the wrong type there.

    ``args`` and ``kwargs`` stay raw in the envelope: a wrong type there is found when the
    arguments are bound to the task (``bad_arguments``).
    """
    out = []
    for field in msgspec.structs.fields(MessageIn):
        name = field.encode_name
        value = next((v for v in _WRONG_VALUES if _refused(name, v)), None)
        if field.type is msgspec.Raw:
            tid, body = _msgpack(**{name: "not a sequence or a map"})
            text = "Expected `array`" if name == "args" else "Expected `object`"
            out.append(Bad(f"type-{name}", tid, body, reason="bad_arguments", text=text))
            continue
        assert value is not None, f"no wrong value found for MessageIn.{name}: extend _WRONG_VALUES"
        tid, body = _msgpack(**{name: value})
        # a message whose id is unusable cannot fail its task: nobody can wait on it
        out.append(Bad(f"type-{name}", tid, body, fails_task=name != "id", text=f"$.{name}"))
    return out


def _claiming(prefix: bytes, tag: int) -> bytes:
    """``prefix`` then a msgpack header of type ``tag`` claiming 4 GiB, and 5 bytes."""
    return prefix + bytes([tag]) + struct.pack(">I", _HUGE) + b"abcde"


def huge_claims() -> list[Bad]:
    """A few bytes claiming a 4 GiB string, binary, array or map: in the task name (the
    message is unreadable) or in the arguments (its id is read first)."""
    out = []
    for kind, tag in (("str32", 0xDB), ("bin32", 0xC6), ("array32", 0xDD), ("map32", 0xDF)):
        tid = str(uuid.uuid4())
        head = msgspec.msgpack.encode({"id": tid, "task": "t.add"})
        # the map header of 2 entries becomes 3: the third is "args" with the claimed length
        body = _claiming(bytes([0x83]) + head[1:] + msgspec.msgpack.encode("args"), tag)
        out.append(Bad(f"claims-4GiB-{kind}-args", tid, body, fails_task=False))
    return out


def bad_headers() -> list[Bad]:
    """One header too many, a name one character too long, a value one too long."""
    cases = {
        "too-many": {f"h{i}": "v" for i in range(MAX_HEADERS + 1)},
        "long-name": {"n" * (MAX_HEADER_NAME_LENGTH + 1): "v"},
        "long-value": {"n": "v" * (MAX_HEADER_VALUE_LENGTH + 1)},
    }
    out = []
    for name, headers in cases.items():
        tid, body = _msgpack(headers=headers)
        out.append(Bad(f"headers-{name}", tid, body, text="$.headers"))
    return out


def bad_versions() -> list[Bad]:
    out = []
    for version in (0, 2, 2**40):
        tid, body = _msgpack(version=version)
        out.append(Bad(f"version-{version}", tid, body, text="unsupported protocol version"))
    return out


def non_utf8() -> list[Bad]:
    """Invalid UTF-8 in a msgpack str (the task name; an argument) and in JSON bytes."""
    out = []
    tid = str(uuid.uuid4())
    good = msgspec.msgpack.encode({"id": tid, "task": "t.boom"})
    # the map of 2 becomes 3: "args" is [<fixstr of 2 invalid bytes>]
    body = bytes([0x83]) + good[1:] + msgspec.msgpack.encode("args") + b"\x91\xa2\xff\xfe"
    out.append(Bad("non-utf8-msgpack-argument", tid, body, reason="bad_arguments", text="UTF-8"))
    tid = str(uuid.uuid4())
    body = b"\x82\xa2id" + msgspec.msgpack.encode(tid) + b"\xa4task\xa3t.\xff"
    out.append(Bad("non-utf8-msgpack-task", tid, body, fails_task=False))
    tid = str(uuid.uuid4())
    body = b'{"id":"' + tid.encode() + b'","task":"t.add\xff\xfe","args":[1,2]}'
    out.append(Bad("non-utf8-json-task", tid, body, fails_task=False))
    tid = str(uuid.uuid4())
    body = b'{"id":"' + tid.encode() + b'","task":"t.boom","args":["\xc3\x28"]}'
    out.append(Bad("non-utf8-json-argument", tid, body, reason="bad_arguments", text="UTF-8"))
    return out


def too_deep(depth: int = 5000) -> list[Bad]:
    """Arguments nested ``depth`` arrays deep, in msgpack and in JSON: past the recursion
    limit msgspec keeps while it reads (or skips) a value, so the envelope itself is refused,
    and its id cannot be read either (reading it skips the arguments the same way)."""
    tid = str(uuid.uuid4())
    good = msgspec.msgpack.encode({"id": tid, "task": "t.boom"})
    args = b"\x91" * depth + b"\x90"
    msgpack_body = bytes([0x83]) + good[1:] + msgspec.msgpack.encode("args") + args
    jid = str(uuid.uuid4())
    json_body = (
        b'{"id":"' + jid.encode() + b'","task":"t.boom","args":[' + b"[" * depth + b"]" * depth
    ) + b"]}"
    return [
        Bad(f"nested-{depth}-msgpack", tid, msgpack_body, fails_task=False),
        Bad(f"nested-{depth}-json", jid, json_body, fails_task=False),
    ]


def every_bad_body() -> list[Bad]:
    return [
        *wrong_types(),
        *huge_claims(),
        *bad_headers(),
        *bad_versions(),
        *non_utf8(),
        *too_deep(),
    ]
