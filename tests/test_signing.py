"""Issue 19: the signed frame, the keyring, and the signing settings (docs/security.md)."""

from __future__ import annotations

import hashlib
import hmac
import struct

import msgspec
import pytest

from aqueue import App, ConfigurationError, SignatureError
from aqueue.core.config import Settings, keyring_of
from aqueue.core.message import MessageOut, decode_message, encode_message
from aqueue.core.serialization import format_of
from aqueue.core.signing import MAGIC, Keyring, parse_keys, unframe

SECRET = "s3cr3t-" + "x" * 32
OTHER = "0th3r-" + "y" * 32


def ring(**kwargs: object) -> Keyring:
    return Keyring({"a": SECRET, "b": OTHER}, **kwargs)  # type: ignore[arg-type]


def reason_of(keyring: Keyring, data: bytes, context: bytes = b"") -> str:
    with pytest.raises(SignatureError) as info:
        keyring.open(data, context)
    return info.value.reason


def test_a_frame_round_trips_and_carries_key_and_date() -> None:
    frame = ring().open(ring().sign(b"\x81\xa2id\xa1x", now=1000.0))
    assert (frame.key_id, frame.dated, frame.body) == (b"a", 1000.0, b"\x81\xa2id\xa1x")
    # a later ETA dates it: fresh until the ETA plus the window
    assert ring().open(ring().sign(b"x", now=1000.0, eta=5000.0)).dated == 5000.0
    assert ring().open(ring().sign(b"x", now=1000.0, eta=10.0)).dated == 1000.0


def test_the_magic_never_starts_a_body() -> None:
    """0xc1 is the one byte msgpack never uses, and no JSON text begins with it."""
    with pytest.raises(msgspec.DecodeError):
        msgspec.msgpack.decode(MAGIC)
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(MAGIC)


def test_every_kind_of_bad_frame_has_its_reason() -> None:
    signed = ring().sign(b"body")
    assert reason_of(ring(), b"\x81\xa1a\x01") == "unsigned"
    assert reason_of(Keyring({"b": OTHER}), signed) == "unknown_key"
    for i in range(len(MAGIC) + 2, len(signed)):  # every byte after the key id
        flipped = bytearray(signed)
        flipped[i] ^= 0x40
        assert reason_of(ring(), bytes(flipped)) in ("bad_signature", "malformed"), i
    assert reason_of(ring(), signed + b"!") == "bad_signature"
    assert reason_of(ring(), signed, b"another context") == "bad_signature"
    assert reason_of(ring(), signed[:20]) == "malformed"
    assert reason_of(ring(), MAGIC + b"\x00" + b"\x00" * 60) == "malformed"  # empty key id
    assert reason_of(ring(), MAGIC + b"\xff" + b"a" * 60) == "malformed"  # cut short
    nan = MAGIC + b"\x01a" + struct.pack(">d", float("nan"))
    forged = Keyring({"a": SECRET})
    # a NaN date cannot be signed by aqueue; signed by hand it is still refused
    mac = hmac.new(SECRET.encode(), nan + b"body", hashlib.sha256).digest()
    assert reason_of(forged, nan + mac + b"body") == "malformed"


def test_verify_lets_unsigned_through_only_when_not_required() -> None:
    assert ring(required=False).verify(b"\x80") == b"\x80"
    with pytest.raises(SignatureError, match="not signed"):
        ring().verify(b"\x80")
    with pytest.raises(SignatureError):  # signed ones are still checked
        ring(required=False).verify(Keyring({"c": OTHER}).sign(b"\x80"))


def test_the_window() -> None:
    keyring = ring(max_age=60.0)
    frame = keyring.open(keyring.sign(b"x", now=1000.0))
    keyring.check_age(frame, 1060.0)
    with pytest.raises(SignatureError) as info:
        keyring.check_age(frame, 1061.0)
    assert info.value.reason == "expired"
    ring(max_age=None).check_age(frame, 1e10)


def test_keys_are_checked_and_never_shown() -> None:
    with pytest.raises(ConfigurationError, match="shorter than 16 bytes"):
        Keyring({"a": "short"})
    with pytest.raises(ConfigurationError, match="not among"):
        Keyring({"a": SECRET}, signing_key="b")
    with pytest.raises(ConfigurationError, match="key id"):
        Keyring({"a b": SECRET})
    assert ring(signing_key="b").open(ring(signing_key="b").sign(b"x")).key_id == b"b"
    assert SECRET not in repr(ring())


def test_signed_messages_decode_for_readers_that_only_look() -> None:
    msg = MessageOut(id="t1", task="t.add", args=(1, 2))
    for fmt in ("msgpack", "json"):
        body = encode_message(msg, fmt, 1 << 20, ring())
        assert body[:4] == MAGIC and format_of(body) == fmt
        assert decode_message(body, 1 << 20).id == "t1"
        assert unframe(body) == encode_message(msg, fmt, 1 << 20)
    assert unframe(b"\x80") == b"\x80"


# -- settings ------------------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    settings = Settings()
    settings.load_environment(
        {
            "AQUEUE_SIGNING_KEYS": f" new:{SECRET} , old:{OTHER} ",
            "AQUEUE_SIGNING_KEY_ID": "old",
            "AQUEUE_SIGNING_REQUIRED": "no",
            "AQUEUE_SIGNING_MAX_AGE": "none",
        }
    )
    assert settings.signing_keys == {"new": SECRET, "old": OTHER}
    keyring = keyring_of(settings)
    assert keyring is not None
    assert (keyring.key_id, keyring.key_ids, keyring.required, keyring.max_age) == (
        "old",
        ("new", "old"),
        False,
        None,
    )


@pytest.mark.parametrize(
    "text", [f"new{SECRET}", f"new:{SECRET},new:{OTHER}", "new:", f"bad id:{SECRET}"]
)
def test_bad_keys_in_the_environment_name_the_variable_not_the_secret(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings().load_environment({"AQUEUE_SIGNING_KEYS": text})
    assert "AQUEUE_SIGNING_KEYS" in str(info.value)
    assert SECRET not in str(info.value) and OTHER not in str(info.value)


def test_keys_as_text_or_mapping_and_redacted_everywhere() -> None:
    app = App("x", broker="memory://sign-settings", signing_keys=f"k1:{SECRET}")
    assert app.conf.signing_keys == {"k1": SECRET}
    app.conf.update(signing_keys={"k2": OTHER.encode(), "k1": SECRET})
    for text in (repr(app.conf), str(app.conf), repr(app.conf.as_dict()), repr(app)):
        assert SECRET not in text and OTHER not in text, text
    assert app.conf.as_dict()["signing_keys"] == {"k2": "***", "k1": "***"}
    keyring = keyring_of(app.conf)
    assert keyring is not None and keyring.key_id == "k2"  # rebuilt when the keys changed
    with pytest.raises(ConfigurationError, match="shorter"):  # refused at construction
        App("x", broker="memory://sign-settings", signing_keys={"k": "tiny"})
    with pytest.raises(ConfigurationError, match="signing_keys"):
        App("x", broker="memory://sign-settings", signing_keys=["k"])
    assert parse_keys("") == {}
    assert keyring_of(Settings()) is None  # no keys: no signing, no cost
