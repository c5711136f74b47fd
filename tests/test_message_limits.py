"""Issue 19, limits on what a message may cost, where no broker is involved: what
``decode_message`` refuses and how little it allocates doing so, and what producers refuse
before they publish (nothing reaches the queue)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgspec
import pytest

from aqueue import App, DecodeError, EncodeError, MessageTooLarge, ResultTooLarge
from aqueue.core.message import (
    MAX_HEADER_NAME_LENGTH,
    MAX_HEADER_VALUE_LENGTH,
    MAX_HEADERS,
    ResultOut,
    decode_message,
    decode_result,
    encode_result,
)

from .conformance.bodies import Bad, every_bad_body, huge_claims

MAX = 10 * 1024 * 1024


@pytest.mark.parametrize("bad", every_bad_body(), ids=lambda b: b.name)
def test_each_bad_body_is_refused_by_the_envelope_or_its_arguments(bad: Bad) -> None:
    """The envelope refuses every case the worker calls ``decode_error``, with its text;
    the ``bad_arguments`` ones pass it (their arguments stay raw until bound)."""
    if bad.reason == "decode_error":
        with pytest.raises(DecodeError) as info:
            decode_message(bad.body, MAX)
        assert bad.text in str(info.value)
    else:
        decode_message(bad.body, MAX)


@pytest.mark.parametrize("bad", huge_claims(), ids=lambda b: b.name)
def test_a_claimed_4_gib_length_allocates_nothing_for_it(bad: Bad) -> None:
    """A 68-byte body claiming a 4 GiB string, binary, array or map fails as truncated:
    msgspec checks that the claimed length is there before allocating for it."""
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="truncated"):
            decode_message(bad.body, MAX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(bad.body) < 80
    assert peak < 64 * 1024, peak


def test_headers_at_their_caps_are_accepted() -> None:
    headers = {f"h{i:03}": "v" for i in range(MAX_HEADERS - 1)}
    headers["n" * MAX_HEADER_NAME_LENGTH] = "v" * MAX_HEADER_VALUE_LENGTH
    body = msgspec.msgpack.encode({"id": "i", "task": "t", "headers": headers})
    assert decode_message(body, MAX).headers == headers


def test_a_message_over_max_message_bytes_is_refused_before_decoding() -> None:
    body = msgspec.msgpack.encode({"id": "i", "task": "t", "args": ["x" * 2000]})
    with pytest.raises(DecodeError, match="exceeds max_message_bytes=1024"):
        decode_message(body, 1024)


def test_a_result_record_over_max_result_bytes() -> None:
    record = ResultOut(id="i", state="SUCCESS", task="t", value="x" * 2000)
    with pytest.raises(ResultTooLarge, match="the limit is 1024 \\(setting max_result_bytes\\)"):
        encode_result(record, "msgpack", 1024)
    body = encode_result(record, "msgpack", 4096)
    assert decode_result(body, 4096).state == "SUCCESS"
    with pytest.raises(ResultTooLarge, match="exceeds max_result_bytes=1024"):
        decode_result(body, 1024)


# -- producers: refused before any I/O ------------------------------------------------------


@pytest.fixture
def app() -> App:
    return App("limits", broker="memory://limits-unit")


@pytest.fixture
def echo(app: App) -> Any:
    @app.task(name="l.echo")
    async def echo(value: Any) -> Any:
        return value

    return echo


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(_nested(5000), EncodeError, id="nested-5000"),
        pytest.param("x" * (11 * 1024 * 1024), MessageTooLarge, id="11-MiB"),
    ],
)
async def test_producers_refuse_before_any_io(app: App, echo: Any, value: Any, error: Any) -> None:
    # (sending connects first, the result backend may route results, then encodes)
    with pytest.raises(error):
        await echo.delay(value)
    with pytest.raises(error):
        await echo.delay_many([(value,)])
    assert await app.broker.size(app.conf.task_default_queue) == 0  # nothing was published
