"""The ResultBackend protocol: fenced writes, TTLs and race-free watching."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from aqueue.core import states
from aqueue.core.protocols import ResultBackend
from aqueue.core.urls import backend_class


@pytest.fixture
async def backend(broker_url: str) -> AsyncIterator[ResultBackend]:
    b: ResultBackend = backend_class(broker_url)(broker_url)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


def tid() -> str:
    return uuid.uuid4().hex


async def test_store_get_forget(backend: ResultBackend) -> None:
    t = tid()
    assert await backend.get(t) is None
    assert await backend.store(t, b"r1", state=states.STARTED, attempt=1, ttl=60) is True
    assert await backend.get(t) == b"r1"
    await backend.forget(t)
    assert await backend.get(t) is None


async def test_fencing_by_attempt(backend: ResultBackend) -> None:
    t = tid()
    assert await backend.store(t, b"a2-started", state=states.STARTED, attempt=2, ttl=60)
    # a zombie from attempt 1 cannot overwrite attempt 2
    assert not await backend.store(t, b"a1-success", state=states.SUCCESS, attempt=1, ttl=60)
    assert await backend.store(t, b"a2-success", state=states.SUCCESS, attempt=2, ttl=60)
    # a late non-final write of the same attempt cannot hide the final one
    assert not await backend.store(t, b"a2-progress", state="PROGRESS", attempt=2, ttl=60)
    assert await backend.get(t) == b"a2-success"
    # a later attempt may (a re-run after the result was written and the ack was lost)
    assert await backend.store(t, b"a3-success", state=states.SUCCESS, attempt=3, ttl=60)
    assert await backend.get(t) == b"a3-success"


async def test_ttl_expires(backend: ResultBackend) -> None:
    t = tid()
    await backend.store(t, b"x", state=states.SUCCESS, attempt=1, ttl=1)
    assert await backend.get(t) == b"x"
    async with asyncio.timeout(5):
        while await backend.get(t) is not None:
            await asyncio.sleep(0.1)  # polling the clock here, not the code under test


async def test_watch_sees_stored_then_new(backend: ResultBackend) -> None:
    t = tid()
    await backend.store(t, b"one", state=states.STARTED, attempt=1, ttl=60)
    seen: list[bytes] = []
    async with asyncio.timeout(5):
        async with contextlib.aclosing(backend.watch(t)) as stream:
            async for raw in stream:
                seen.append(raw)
                if raw == b"one":
                    await backend.store(t, b"two", state="PROGRESS", attempt=1, ttl=60)
                if raw == b"three":
                    break
                if raw == b"two":
                    await backend.store(t, b"three", state=states.SUCCESS, attempt=1, ttl=60)
    assert seen == [b"one", b"two", b"three"]


async def test_watch_before_any_record(backend: ResultBackend) -> None:
    t = tid()

    async def first() -> bytes:
        async with contextlib.aclosing(backend.watch(t)) as stream:
            async for raw in stream:
                return raw
        raise AssertionError("stream ended")

    waiter = asyncio.create_task(first())
    await asyncio.sleep(0.05)
    await backend.store(t, b"done", state=states.SUCCESS, attempt=1, ttl=60)
    async with asyncio.timeout(5):
        assert await waiter == b"done"


async def test_many_watchers(backend: ResultBackend) -> None:
    ids = [tid() for _ in range(50)]

    async def first(t: str) -> bytes:
        async with contextlib.aclosing(backend.watch(t)) as stream:
            async for raw in stream:
                return raw
        raise AssertionError("stream ended")

    waiters = [asyncio.create_task(first(t)) for t in ids]
    await asyncio.sleep(0.05)
    for t in ids:
        await backend.store(t, t.encode(), state=states.SUCCESS, attempt=1, ttl=60)
    async with asyncio.timeout(10):
        assert await asyncio.gather(*waiters) == [t.encode() for t in ids]
