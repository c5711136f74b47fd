"""Signing: HMAC-SHA256 over every message and result record, with rotating keys.

With ``signing_keys`` set (docs/security.md), a body (a message or a result record, the
bytes msgspec encoded) travels as a *signed frame*::

    magic  b"\\xc1AQ1"      4 bytes; 0xc1 is the one byte msgpack never uses, and no JSON
                             text starts with it, so a frame is never taken for a body
    kid length              1 byte, 1..255
    kid                     the key id, ASCII
    dated                   8 bytes, big-endian IEEE double, unix seconds: when it was
                             signed, or a message's ETA when that is later
    mac                     32 bytes: HMAC-SHA256(secret, every byte before it + context
                             + body); the context is not sent: a result record's is its
                             task id, a message's is empty
    body                    the message or record, unchanged

:class:`Keyring` signs with one key and accepts any listed one, so a key is rotated by
listing the new one everywhere, then signing with it, then removing the old one once
nothing signed with it can still be queued or stored (docs/security.md, "Rotation").
Verification never decodes anything of the body: the frame is parsed with fixed bounds,
the MAC compared in constant time, and only then is the body handed on.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import struct
import time
from collections.abc import Mapping
from typing import Final, NamedTuple

from .errors import ConfigurationError, SignatureError

MAGIC: Final = b"\xc1AQ1"
_TIME: Final = struct.Struct(">d")
MAC_BYTES: Final = 32
#: the shortest frame: magic, a one-byte kid, the time, the MAC (and an empty body)
_MIN_FRAME: Final = len(MAGIC) + 1 + 1 + _TIME.size + MAC_BYTES
#: a secret shorter than this is refused (HMAC-SHA256 wants 32 random bytes)
MIN_SECRET_BYTES: Final = 16
_KEY_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,255}")

#: why a frame was refused (dead letters say ``signature:<reason>``)
UNSIGNED: Final = "unsigned"
UNKNOWN_KEY: Final = "unknown_key"
BAD_SIGNATURE: Final = "bad_signature"
EXPIRED: Final = "expired"
MALFORMED: Final = "malformed"


def is_signed(data: bytes | memoryview) -> bool:
    """Whether ``data`` is a signed frame (not whether its signature is good)."""
    return data[:4] == MAGIC


def unframe(data: bytes) -> bytes:
    """The body inside a signed frame, unverified; ``data`` itself if it is not framed.

    For readers that only show or route what they read (``inspect``, dead-letter
    listings); whatever acts on a message or a record verifies it first.
    """
    if data[:4] != MAGIC or len(data) < _MIN_FRAME:
        return data
    start = len(MAGIC) + 1 + data[4] + _TIME.size + MAC_BYTES
    return data[start:] if len(data) >= start else data


class Frame(NamedTuple):
    """A verified frame's parts: which key signed it (ASCII), its date, the body."""

    key_id: bytes
    dated: float
    body: bytes


class Keyring:
    """Named secrets: signs with one, verifies with any.

    Args:
        keys: key id -> secret (str or bytes, at least 16 bytes). Order matters: the
            first signs unless ``signing_key`` names another.
        signing_key: the id of the key that signs (default: the first).
        required: refuse bodies that are not signed (default). False only while a fleet
            moves to signing: unsigned bodies are then accepted, signed ones still verified.
        max_age: seconds after signing (or after its ``eta``, for a message) a message is
            refused as ``expired``; ``None``: never.

    The secrets are kept only as prepared HMAC states; :func:`repr` shows key ids only.
    """

    __slots__ = ("_header", "_macs", "_signer", "key_id", "key_ids", "max_age", "required")

    def __init__(
        self,
        keys: Mapping[str, str | bytes],
        *,
        signing_key: str | None = None,
        required: bool = True,
        max_age: float | None = None,
    ) -> None:
        if not keys:
            raise ConfigurationError("signing needs at least one key in signing_keys")
        macs: dict[bytes, hmac.HMAC] = {}
        for kid, secret in keys.items():
            check_key_id(kid)
            raw = secret.encode() if isinstance(secret, str) else bytes(secret)
            if len(raw) < MIN_SECRET_BYTES:
                raise ConfigurationError(
                    f"signing key {kid!r} is shorter than {MIN_SECRET_BYTES} bytes; use "
                    "32 random bytes, e.g. python -c 'import secrets; print(secrets.token_hex(32))'"
                )
            macs[kid.encode()] = hmac.new(raw, digestmod=hashlib.sha256)
        self.key_ids: tuple[str, ...] = tuple(keys)
        self.key_id: str = self.key_ids[0] if signing_key is None else signing_key
        if self.key_id not in keys:
            raise ConfigurationError(
                f"signing_key_id {self.key_id!r} is not among signing_keys ({', '.join(keys)})"
            )
        signer = self.key_id.encode()
        self._macs = macs
        self._signer = macs[signer]
        self._header = MAGIC + bytes((len(signer),)) + signer
        self.required = required
        self.max_age = max_age

    def __repr__(self) -> str:
        return f"Keyring(keys={list(self.key_ids)!r}, signing={self.key_id!r})"

    def sign(
        self,
        body: bytes,
        *,
        context: bytes = b"",
        eta: float | None = None,
        now: float | None = None,
    ) -> bytes:
        """``body`` in a frame signed with the signing key, dated ``now`` (default: the
        clock), or ``eta`` if later: a message due next week is fresh next week.

        ``context`` is signed but not sent: the frame verifies only with the same one (a
        result record is signed with its task id, so it cannot be copied to another id).
        """
        if now is None:
            now = time.time()
        head = self._header + _TIME.pack(now if eta is None or eta < now else eta)
        mac = self._signer.copy()
        mac.update(head)
        if context:
            mac.update(context)
        mac.update(body)
        return b"".join((head, mac.digest(), body))

    def open(self, data: bytes, context: bytes = b"") -> Frame:
        """Verify a frame (signed with ``context``); its parts. Dates are not checked
        here (see :meth:`check_age`).

        Raises:
            SignatureError: ``unsigned`` (not a frame), ``malformed``, ``unknown_key`` or
                ``bad_signature``.
        """
        if data[:4] != MAGIC:
            raise SignatureError(UNSIGNED, "not signed")
        size = len(data)
        if size < _MIN_FRAME:
            raise SignatureError(MALFORMED, f"a signed frame of {size} bytes is too short")
        kid_end = len(MAGIC) + 1 + data[4]
        mac_at = kid_end + _TIME.size
        body_at = mac_at + MAC_BYTES
        if data[4] == 0 or size < body_at:
            raise SignatureError(MALFORMED, "the signed frame's header is cut short")
        kid = data[len(MAGIC) + 1 : kid_end]
        state = self._macs.get(kid)
        if state is None:
            shown = kid.decode("ascii", "replace")[:64]
            raise SignatureError(UNKNOWN_KEY, f"signed with key {shown!r}, which is not listed")
        mac = state.copy()
        mac.update(data[:mac_at])
        if context:
            mac.update(context)
        body = data[body_at:]
        mac.update(body)
        if not hmac.compare_digest(mac.digest(), data[mac_at:body_at]):
            raise SignatureError(BAD_SIGNATURE, f"the signature by key {kid.decode()!r} is wrong")
        (dated,) = _TIME.unpack_from(data, kid_end)
        if not math.isfinite(dated):
            raise SignatureError(MALFORMED, "the signed frame's time is not a number")
        return Frame(kid, dated, body)

    def verify(self, data: bytes, context: bytes = b"") -> bytes:
        """The body of ``data`` once its signature is good (unsigned data passes only when
        signing is not ``required``); dates are not checked.

        Raises:
            SignatureError: as :meth:`open`.
        """
        if data[:4] != MAGIC and not self.required:
            return data
        return self.open(data, context).body

    def check_age(self, frame: Frame, now: float) -> None:
        """Refuse a message dated more than ``max_age`` seconds before ``now``.

        Raises:
            SignatureError: ``expired``.
        """
        if self.max_age is not None and now - frame.dated > self.max_age:
            raise SignatureError(
                EXPIRED,
                f"dated {now - frame.dated:.0f}s ago, past the replay window "
                f"(signing_max_age={self.max_age:g})",
            )


def check_key_id(kid: object) -> str:
    """A key id: 1..255 characters of letters, digits, ``.``, ``_``, ``-``."""
    if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid):
        raise ConfigurationError(
            f"signing key id {kid!r} must be 1..255 letters, digits, '.', '_' or '-'"
        )
    return kid


def parse_keys(text: str) -> dict[str, str]:
    """``"kid:secret,kid2:secret2"`` (the form of ``AQUEUE_SIGNING_KEYS``) as a dict.

    Raises:
        ConfigurationError: an entry without ``:``, or a key id listed twice. The message
            never contains a secret.
    """
    keys: dict[str, str] = {}
    for n, part in enumerate(text.split(","), 1):
        part = part.strip()
        if not part:
            continue
        kid, sep, secret = part.partition(":")
        kid = kid.strip()
        if not sep or not secret.strip():
            raise ConfigurationError(
                f"signing_keys entry {n} must be 'key_id:secret' (entries separated by ',')"
            )
        check_key_id(kid)
        if kid in keys:
            raise ConfigurationError(f"signing_keys lists key id {kid!r} twice")
        keys[kid] = secret.strip()
    return keys
