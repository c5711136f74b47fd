"""Issue 19, limits on what a message may cost: every bad input is dead-lettered (or its
task failed) with the worker still processing healthy tasks, on every broker.

The inputs are built in ``bodies.py``: a wrong type in every envelope field, bytes claiming
4 GiB, too many or too long headers, unknown protocol versions, invalid UTF-8, arguments
nested 5 000 deep. Then a result over ``max_result_bytes``, and a 100 MB body on the wire.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from typing import Any

import msgspec
import pytest

from aqueue import App, ResultTooLarge, TaskFailed, states
from aqueue.core.protocols import Outgoing

from .bodies import every_bad_body
from .tasks import Recorder, register


@pytest.fixture
def t(app: App) -> Any:
    return register(app, Recorder())


async def _dead_letters(app: App, count: int, timeout: float = 20.0) -> dict[str, str]:
    """The broker's dead letters (id -> reason) once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        letters = {d.id: d.reason for d in await app.broker.dead_letters()}
        if len(letters) >= count or time.monotonic() > deadline:
            return letters
        await asyncio.sleep(0.05)


async def test_every_bad_input_is_refused_and_nothing_healthy_is_lost(app: App, t: Any) -> None:
    """docs/reliability.md row 30: 42 bad bodies between 40 healthy tasks."""
    queue = app.conf.task_default_queue
    bad = every_bad_body()
    before = [await t.add.delay(i, i) for i in range(20)]
    await app.broker.publish([Outgoing(id=b.id, queue=queue, body=b.body) for b in bad])
    after = [await t.add.delay(i, 1) for i in range(20)]
    async with app.worker():
        assert [await h.wait(timeout=20) for h in before] == [i + i for i in range(20)]
        assert [await h.wait(timeout=20) for h in after] == [i + 1 for i in range(20)]
        for b in bad:
            if b.fails_task:
                with pytest.raises(TaskFailed) as info:
                    await app.AsyncResult(b.id).wait(timeout=20)
                assert b.text in info.value.exc_message, (b.name, info.value.exc_message)
        letters = await _dead_letters(app, len(bad))
    assert letters == {b.id: b.reason for b in bad}
    for b in bad:
        if not b.fails_task:
            assert await app.AsyncResult(b.id).state() == states.PENDING, b.name
    assert await app.broker.size(queue) == 0
    print(f"\n{len(bad)} bad bodies dead-lettered; healthy 40/40, lost 0")


async def test_a_result_over_max_result_bytes_fails_its_task(app: App) -> None:
    app.conf.update(max_result_bytes=4096)
    runs: list[int] = []

    @app.task(name="t.big")
    async def big(n: int) -> str:
        runs.append(n)
        return "x" * n

    async with app.worker():
        with pytest.raises(TaskFailed) as info:
            await (await big.delay(5000)).wait(timeout=10)
        assert await (await big.delay(100)).wait(timeout=10) == "x" * 100  # still healthy
    assert info.value.exc_type == "ResultTooLarge"
    assert "max_result_bytes" in info.value.exc_message
    assert runs == [5000, 100]  # run once: never redelivered
    assert await app.broker.dead_letters() == []


async def test_a_stored_record_over_max_result_bytes_is_refused_on_read(app: App) -> None:
    @app.task(name="t.big")
    async def big(n: int) -> str:
        return "x" * n

    async with app.worker():
        h = await big.delay(5000)
        assert len(await h.wait(timeout=10)) == 5000
    app.conf.update(max_result_bytes=4096)
    with pytest.raises(ResultTooLarge, match="max_result_bytes=4096"):
        await app.AsyncResult(h.id).state()


HUNDRED_MB = 100 * 1024 * 1024
MIB = 1024 * 1024

#: how many copies of a 100 MB body a worker may hold at once while it refuses it, by broker.
#: The body reaches the worker whole (one Redis value, one AMQP message, one SQLite row) and
#: is refused by its length, before decoding: memory hands over the stored bytes themselves
#: (no copy); Redis has the reply in the client's read buffer, which grows by doubling, and
#: then as bytes (234 MiB measured, bound 3); AMQP assembles the frames into one body (121
#: MiB measured, bound 2). SQLite's claim updates the row's lease
#: columns, which makes SQLite rewrite the whole record, body included, and its RETURNING
#: clause keeps another copy: 603 MiB measured for 100 MB (6, bound 7); keeping bodies in a
#: table of their own would avoid it (not done: it changes the file's schema).
_COPIES = {"memory": 0, "redis": 3, "redis-cluster": 3, "rabbitmq": 2, "sqlite": 7}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def _reset_peak_rss() -> None:
    """Make VmHWM (the peak resident size) start again from the current size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


@pytest.mark.slow
async def test_a_100_mb_body_on_the_wire_is_dead_lettered(
    app: App, t: Any, request: pytest.FixtureRequest
) -> None:
    """docs/reliability.md row 31: a valid message with a 100 MB argument, published raw
    between healthy tasks: dead-lettered ``decode_error`` (over ``max_message_bytes``, 10 MiB)
    before it is decoded, healthy tasks done, and the peak resident size of this process
    (worker and producer) while the worker runs grows by at most ``_COPIES`` bodies + 32 MiB."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure the peak resident size")
    kind = request.node.callspec.params["broker_url"]
    if kind == "sqlite":
        # claiming the 100 MB row holds the file for seconds (tens on a loaded machine):
        # heartbeats wait behind it, and the short claim leases of the healthy tasks ran
        # out (docs/security.md); this test is about the body, not about that stall
        app.conf.update(worker_lost_timeout=120.0, lease_seconds=240.0)
    queue = app.conf.task_default_queue
    tid = str(uuid.uuid4())
    body = msgspec.msgpack.encode({"id": tid, "task": "t.add", "args": ["x" * HUNDRED_MB, 1]})
    before = await t.add.delay(1, 1)
    await app.broker.publish([Outgoing(id=tid, queue=queue, body=body)])
    del body
    gc.collect()
    after = await t.add.delay(2, 2)
    _reset_peak_rss()
    base = _status_kib("VmRSS")
    async with app.worker():
        assert await before.wait(timeout=60) == 2
        assert await after.wait(timeout=60) == 4
        letters = await _dead_letters(app, 1, timeout=60)
    grown = (_status_kib("VmHWM") - base) * 1024
    assert letters == {tid: "decode_error"}
    assert await app.AsyncResult(tid).state() == states.PENDING  # its id is not read
    assert await app.broker.size(queue) == 0
    print(f"\n{kind}: 100 MB body dead-lettered; peak RSS grew {grown / MIB:.0f} MiB")
    assert grown <= _COPIES[kind] * HUNDRED_MB + 32 * MIB, grown / MIB
