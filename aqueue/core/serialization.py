"""msgspec encoders and typed decoders, msgpack or JSON, chosen per message.

A body whose first byte is ``{`` or ``[`` is JSON; anything else is msgpack. Decoders for a
given type are built once and cached, so the per-message path does no reflection.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, Final, Literal

import msgspec

from .errors import ConfigurationError

SerializerName = Literal["msgpack", "json"]
SERIALIZERS: Final = ("msgpack", "json")

_JSON_FIRST_BYTES: Final = (ord("{"), ord("["))

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


def encode(obj: Any, serializer: SerializerName) -> bytes:
    """Encode with the named serializer."""
    if serializer == "msgpack":
        return _msgpack_encoder.encode(obj)
    return _json_encoder.encode(obj)


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
    ``[``), so nested raw fields are decoded with their body's format.
    """
    return "json" if is_json(body) else "msgpack"


def decode(data: bytes | memoryview | msgspec.Raw, tp: Any, fmt: SerializerName) -> Any:
    """Decode ``data`` as ``tp`` in format ``fmt``.

    Raises:
        msgspec.DecodeError: invalid bytes (``msgspec.ValidationError`` for a type mismatch).
    """
    if fmt == "msgpack":
        return msgpack_decoder(tp).decode(data)
    return json_decoder(tp).decode(data)
