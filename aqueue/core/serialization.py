"""msgspec encoders and typed decoders, msgpack or JSON, chosen per message.

A body whose first byte is ``{`` or ``[`` is JSON; anything else is msgpack. Decoders for a
given type are built once and cached, so the per-message path does no reflection.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, Final, Literal

import msgspec

from .errors import ConfigurationError, EncodeError
from .signing import MAGIC, unframe

SerializerName = Literal["msgpack", "json"]
SERIALIZERS: Final = ("msgpack", "json")

_JSON_FIRST_BYTES: Final = (ord("{"), ord("["))
_FRAME_FIRST_BYTE: Final = MAGIC[0]

_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()


def check_serializer(name: str) -> SerializerName:
    """Validate a serializer name from settings or a task option."""
    if name == "msgpack":
        return "msgpack"
    if name == "json":
        return "json"
    raise ConfigurationError(
        f"unknown serializer {name!r}: use 'msgpack' or 'json' (pickle is never supported)"
    )


#: what msgspec raises for a value it cannot encode (an int beyond 64 bits raises
#: OverflowError, a self-referencing list RecursionError, an unsupported type TypeError)
ENCODE_FAILURES: Final = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)


def encode(obj: Any, serializer: SerializerName) -> bytes:
    """Encode with the named serializer.

    Raises:
        EncodeError: a value in ``obj`` cannot be encoded.
    """
    try:
        if serializer == "msgpack":
            return _msgpack_encoder.encode(obj)
        return _json_encoder.encode(obj)
    except ENCODE_FAILURES as exc:
        raise encode_error(exc) from None


def encode_error(exc: BaseException) -> EncodeError:
    """The :class:`EncodeError` for what the encoder raised."""
    return EncodeError(f"cannot encode with msgspec: {type(exc).__name__}: {exc}")


def encoder_of(serializer: SerializerName) -> Callable[[Any], bytes]:
    """The encode function of a serializer, looked up once for a loop over many messages."""
    if serializer == "msgpack":
        return _msgpack_encoder.encode
    return _json_encoder.encode


def is_json(data: bytes | memoryview | msgspec.Raw) -> bool:
    """Whether an encoded body is JSON (first byte ``{`` or ``[``) rather than msgpack."""
    view = memoryview(data)
    return len(view) > 0 and view[0] in _JSON_FIRST_BYTES


@lru_cache(maxsize=4096)
def msgpack_decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    """A cached msgpack decoder for ``tp``."""
    return msgspec.msgpack.Decoder(tp)


@lru_cache(maxsize=4096)
def json_decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    """A cached JSON decoder for ``tp``."""
    return msgspec.json.Decoder(tp)


def format_of(body: bytes | memoryview | msgspec.Raw) -> SerializerName:
    """The serializer of a top-level body (a message or a record, always a map).

    Only valid for whole bodies: a nested value's first byte says nothing (msgpack's 91 is
    ``[``), so nested raw fields are decoded with their body's format. A signed frame
    (``signing.py``) has the format of the body it carries.
    """
    view = memoryview(body)
    if len(view) > 0 and view[0] == _FRAME_FIRST_BYTE:
        return "json" if is_json(unframe(bytes(view))) else "msgpack"
    return "json" if is_json(view) else "msgpack"


#: what decoding bytes that are not a valid value of the expected form raises: msgspec's
#: error and the interpreter's recursion limit (nesting)
DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError)


def decode(data: bytes | memoryview | msgspec.Raw, tp: Any, fmt: SerializerName) -> Any:
    """Decode ``data`` as ``tp`` in format ``fmt``.

    Raises:
        msgspec.DecodeError: invalid bytes (``msgspec.ValidationError`` for a type mismatch).
        RecursionError: nested deeper than the interpreter's recursion limit.
    """
    try:
        if fmt == "msgpack":
            return msgpack_decoder(tp).decode(data)
        return json_decoder(tp).decode(data)
    except UnicodeDecodeError as exc:  # msgspec 0.18 lets it through for a msgpack str
        raise msgspec.DecodeError(f"invalid UTF-8 in a string (byte {exc.start})") from None
