"""Every store keeps the same promises: one lease holder, fenced records, versions, and
code entries synced without losing state. Run against memory, SQLite and the real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from aqueue import App
from aqueue.beat import BeatStore, store_for
from aqueue.core.errors import ConfigurationError


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[BeatStore]:
    the_store = store_for(App("stores", broker=store_url))
    await the_store.connect()
    yield the_store
    await the_store.close()


async def test_one_holder_at_a_time(store: BeatStore) -> None:
    now = time.time()
    assert await store.acquire("a", 30, now)
    assert not await store.acquire("b", 30, now)
    assert await store.acquire("a", 30, now)  # renewed by its holder
    await store.release("b")  # not the holder: nothing happens
    assert not await store.acquire("b", 30, now)
    assert (await store.snapshot()).leader == "a"
    await store.release("a")
    assert (await store.snapshot()).leader is None
    assert await store.acquire("b", 30, now)


async def test_an_expired_lease_goes_to_the_next(store: BeatStore) -> None:
    assert await store.acquire("a", 0.2, time.time())
    deadline = time.monotonic() + 10
    while not await store.acquire("b", 30, time.time()):
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.05)
    assert not await store.acquire("a", 30, time.time())


async def test_records_are_fenced_by_the_lease(store: BeatStore) -> None:
    now = time.time()
    assert await store.put("e", b"spec", 1, replace=False) == "added"
    assert await store.acquire("a", 30, now)
    assert await store.record("a", "e", b"state-a", now)
    assert not await store.record("b", "e", b"state-b", now)  # not the holder
    assert not await store.record("a", "missing", b"x", now)  # no such entry
    await store.release("a")
    assert await store.acquire("b", 30, now)
    assert not await store.record("a", "e", b"late", now)  # a deposed leader
    snapshot = await store.snapshot()
    assert snapshot.entries["e"].state == b"state-a"


async def test_run_time_entries(store: BeatStore) -> None:
    v0 = await store.version()
    assert await store.put("e", b"one", 5, replace=False) == "added"
    v1 = await store.version()
    assert v1 != v0
    assert await store.put("e", b"two", 9, replace=False) == "exists"
    assert await store.put("e", b"two", 9, replace=True) == "replaced"
    assert await store.set_paused("e", True)
    assert not await store.set_paused("nope", True)
    entry = (await store.snapshot()).entries["e"]
    assert (entry.spec, entry.since, entry.paused, entry.code) == (b"two", 5, True, False)
    assert await store.version() not in (v0, v1)
    assert await store.remove("e") == "removed"
    assert await store.remove("e") == "missing"
    assert (await store.snapshot()).entries == {}


async def test_code_entries_sync_keeping_state_and_pause(store: BeatStore) -> None:
    assert sorted(await store.sync_code({"x": b"x1", "y": b"y1"}, 100)) == ["x", "y"]
    version = await store.version()
    assert await store.sync_code({"x": b"x1", "y": b"y1"}, 200) == []  # nothing changed
    assert await store.version() == version
    now = time.time()
    assert await store.acquire("leader", 30, now)
    assert await store.record("leader", "x", b"x-state", now)
    assert await store.set_paused("x", True)
    assert await store.put("z", b"z-runtime", 300, replace=False) == "added"
    # a later deploy: y gone, x changed, z now defined in code
    assert sorted(await store.sync_code({"x": b"x2", "z": b"z-code"}, 400)) == ["x", "y", "z"]
    entries = (await store.snapshot()).entries
    assert set(entries) == {"x", "z"}
    x = entries["x"]
    assert (x.spec, x.state, x.paused, x.since, x.code) == (b"x2", b"x-state", True, 100, True)
    assert (entries["z"].code, entries["z"].since) == (True, 300)
    assert await store.remove("z") == "code"
    assert await store.put("z", b"other", 1, replace=True) == "code"


def test_a_backend_that_cannot_hold_schedules_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="cannot hold them"):
        store_for(App("rpc", broker="amqp://guest:guest@localhost//"))
    with pytest.raises(ConfigurationError, match="has none"):
        from aqueue.brokers.memory import MemoryBroker

        store_for(App("obj", broker=MemoryBroker("memory://obj")))
