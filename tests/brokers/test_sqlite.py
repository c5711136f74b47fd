"""SQLite-specific behaviour: many processes on one file, locking, leases and fencing.

The cross-broker contract lives in ``tests/conformance/``; these tests cover what only the
embedded broker has (URLs, the lock retry, the data_version poll, several OS processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aqueue.backends.sqlite import SQLiteBackend
from aqueue.brokers.sqlite import SQLiteBroker
from aqueue.core import states
from aqueue.core.errors import BrokerError, ConfigurationError
from aqueue.core.protocols import (
    DEAD_LETTER_BODY_LIMIT,
    Broker,
    Delivery,
    Outgoing,
    ResultBackend,
)
from tests.conftest import assert_none_before

ROOT = Path(__file__).resolve().parents[2]


def url_for(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aq.db'}"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[SQLiteBroker]:
    b = SQLiteBroker(url_for(tmp_path))
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    b = SQLiteBackend(url_for(tmp_path))
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


def msg(queue: str = "q", *, priority: int = 0, eta: float | None = None) -> Outgoing:
    mid = uuid.uuid4().hex
    return Outgoing(id=mid, queue=queue, body=mid.encode(), priority=priority, eta=eta)


async def claim(
    broker: Broker,
    queues: tuple[str, ...] = ("q",),
    *,
    limit: int = 10,
    lease: float = 30.0,
    timeout: float = 0.0,
) -> list[Delivery]:
    return await broker.claim(
        list(queues), limit=limit, lease_seconds=lease, owner="test", timeout=timeout
    )


def row(tmp_path: Path, id: str) -> tuple[float, str | None, int, int] | None:
    with contextlib.closing(sqlite3.connect(tmp_path / "aq.db")) as conn:
        found = conn.execute(
            "SELECT lease_until, owner, deliveries, token FROM aq_messages WHERE id = ?", (id,)
        ).fetchone()
    return found


# -- URLs and lifecycle ---------------------------------------------------------------------


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert SQLiteBroker("sqlite:///data/q.db").path == str(tmp_path / "data" / "q.db")
    assert SQLiteBroker("sqlite:////var/tmp/q.db").path == "/var/tmp/q.db"
    assert SQLiteBackend("sqlite:////var/tmp/q.db").path == "/var/tmp/q.db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/q.db",
        "sqlite:///:memory:",
        "sqlite:///q.db?x=1",
        "redis://localhost/0",
        "q.db",
    ],
)
def test_bad_urls_name_the_right_form(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"sqlite:////absolute"):
        SQLiteBroker(url)
    with pytest.raises(ConfigurationError, match=r"sqlite:////absolute"):
        SQLiteBackend(url)


async def test_no_io_before_connect_and_idempotent_lifecycle(tmp_path: Path) -> None:
    b = SQLiteBroker(url_for(tmp_path))
    r = SQLiteBackend(url_for(tmp_path))
    assert isinstance(b, Broker) and isinstance(r, ResultBackend)
    assert not (tmp_path / "aq.db").exists()
    await b.connect()
    await b.connect()
    await r.connect()  # same file, its own tables
    assert await b.publish([msg()]) == [True]
    assert await r.store("t", b"x", state=states.SUCCESS, attempt=1, ttl=None)
    await b.close()
    await b.close()
    await r.close()
    await r.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "aq.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_missing_directory_is_a_broker_error(tmp_path: Path) -> None:
    b = SQLiteBroker(f"sqlite:///{tmp_path / 'nope' / 'aq.db'}")
    with pytest.raises(BrokerError, match="cannot open"):
        await b.connect()
    await b.close()


# -- claiming, leases, fencing --------------------------------------------------------------


async def test_lease_expiry_redelivers_and_fences_the_stale_holder(broker: SQLiteBroker) -> None:
    await broker.publish([msg()])
    [stale] = await claim(broker, lease=0.2)
    assert await claim(broker) == []
    t0 = time.monotonic()
    [fresh] = await claim(broker, timeout=5.0)  # woken by the lease's end, not by a publish
    assert time.monotonic() - t0 < 2.0
    assert fresh.delivery_count == 2 and fresh.lease.token > stale.lease.token
    assert await stale.ack() is False
    assert await stale.requeue(b"x", eta=None) is False
    assert await stale.dead_letter("zombie") is False
    assert broker.renew([stale.lease], 30) == [stale.lease]
    assert await fresh.ack() is True
    assert await broker.dead_letters() == []


async def test_expired_but_untaken_lease_can_still_be_renewed(
    broker: SQLiteBroker, tmp_path: Path
) -> None:
    low = msg(priority=0)
    await broker.publish([low])
    [d] = await claim(broker, lease=0.05)
    await broker.publish([msg(priority=9)])
    async with asyncio.timeout(5):
        while time.time() <= d_lease_end(tmp_path, d.id):
            await asyncio.sleep(0.02)  # waiting for the clock
    # This claim moves the expired row back to ready but takes the higher-priority one.
    [high] = await claim(broker, limit=1)
    assert high.id != d.id and (row(tmp_path, d.id) or (1.0,))[0] == 0
    assert broker.renew([d.lease], 30) == []  # nobody took it over: still ours
    assert await claim(broker) == []
    assert await d.ack() is True
    assert await high.ack() is True


def d_lease_end(tmp_path: Path, id: str) -> float:
    found = row(tmp_path, id)
    assert found is not None
    return found[0]


async def test_renew_extends_and_reports_lost(broker: SQLiteBroker, tmp_path: Path) -> None:
    await broker.publish([msg(), msg()])
    a, b = await claim(broker, lease=1.0, limit=2)
    assert await b.ack()
    lost = await asyncio.to_thread(broker.renew, [a.lease, b.lease], 60.0)
    assert lost == [b.lease]
    found = row(tmp_path, a.id)
    assert found is not None and found[0] > time.time() + 50
    assert await a.release(executed=True)
    assert broker.renew([a.lease], 60.0) == [a.lease]  # released: nothing left to renew


async def test_release_unexecuted_does_not_count(broker: SQLiteBroker) -> None:
    await broker.publish([msg()])
    for _ in range(3):
        [d] = await claim(broker)
        assert d.delivery_count == 1
        assert await d.release(executed=False)
    assert await d.release(executed=False) is False  # settled once
    [d] = await claim(broker)
    assert await d.release(executed=True)
    [d] = await claim(broker)
    assert d.delivery_count == 2
    assert await d.ack()


async def test_cancelled_claim_hands_its_messages_back(broker: SQLiteBroker) -> None:
    await broker.publish([msg() for _ in range(5)])
    pending = asyncio.create_task(claim(broker, limit=10))
    await asyncio.sleep(0)  # the claim is now in the database thread
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    got: list[Delivery] = []
    async with asyncio.timeout(5):
        while len(got) < 5:
            got += await claim(broker, timeout=1.0)
    assert [d.delivery_count for d in got] == [1] * 5  # handed back uncounted, no lease wait
    assert [d.lease.token for d in got] == [2] * 5  # the cancelled claim did take them


async def test_token_is_never_reused_after_a_reset(broker: SQLiteBroker) -> None:
    # The delivery count goes back to 0 on requeue; the fencing token must not.
    await broker.publish([msg()])
    [first] = await claim(broker)
    assert await first.requeue(b"retry", eta=None)
    [second] = await claim(broker)
    assert second.delivery_count == 1 and second.body == b"retry"
    assert second.lease.token > first.lease.token
    assert await first.ack() is False
    assert await second.ack() is True


async def test_requeue_resets_and_delays(broker: SQLiteBroker) -> None:
    await broker.publish([msg()])
    [d] = await claim(broker)
    assert await d.release(executed=True)
    [d] = await claim(broker)
    assert d.delivery_count == 2
    due = time.time() + 0.3
    assert await d.requeue(b"v2", eta=due)
    got = await claim(broker)
    assert_none_before(got, due)
    assert await broker.size("q") == 1
    [again] = got or await claim(broker, timeout=5.0)
    assert time.time() >= due - 0.01
    assert (again.body, again.delivery_count) == (b"v2", 1)
    assert await again.ack()


async def test_delayed_not_claimable_before_due(tmp_path: Path) -> None:
    # Slow polling: only the "next due" deadline can wake the claim in time.
    b = SQLiteBroker(url_for(tmp_path), poll_min=10, poll_max=10)
    await b.connect()
    try:
        due = time.time() + 0.3
        late, now = msg(eta=due), msg()
        await b.publish([late, now, msg(eta=time.time() + 3600)])
        first = await claim(b, limit=10)
        assert now.id in {d.id for d in first} <= {now.id, late.id}
        assert_none_before([d for d in first if d.id == late.id], due, slack=0.01)
        if len(first) == 1:
            t0 = time.monotonic()
            got = await claim(b, timeout=5.0)
            assert [d.id for d in got] == [late.id]
            assert time.time() >= due - 0.01 and time.monotonic() - t0 < 2.0
        assert await b.size("q") == 3
    finally:
        await b.close()


async def test_priority_and_queue_order(broker: SQLiteBroker) -> None:
    low, high, mid = msg(priority=0), msg(priority=9), msg(priority=5)
    await broker.publish([low, high, mid])
    other = msg("other", priority=100)
    await broker.publish([other])
    got = await claim(broker, ("q", "other"), limit=10)
    assert [d.id for d in got] == [high.id, mid.id, low.id, other.id]


async def test_publish_is_one_transaction_and_deduplicates(broker: SQLiteBroker) -> None:
    delayed, ready = msg(eta=time.time() + 60), msg()
    assert await broker.publish([delayed, ready, ready]) == [True, True, False]
    [d] = await claim(broker)
    assert await broker.publish([delayed, ready, msg()]) == [False, False, True]
    assert await broker.size("q") == 3
    assert await d.ack()


async def test_dead_letters_newest_first(broker: SQLiteBroker) -> None:
    a, b, c = msg(), msg(), msg("other")
    await broker.publish([a, b, c])
    for d in await claim(broker, ("q", "other"), limit=3):
        assert await d.dead_letter(f"bad-{d.id}")
    assert await broker.size("q") == 0
    letters = await broker.dead_letters()
    assert [x.id for x in letters] == [c.id, b.id, a.id]
    assert letters[0].reason == f"bad-{c.id}" and letters[0].body == c.body
    assert [x.id for x in await broker.dead_letters("q", limit=1)] == [b.id]


async def test_dead_letters_keep_the_start_of_a_big_body_and_its_size(
    tmp_path: Path, broker: SQLiteBroker
) -> None:
    # issue 11, defect 6: a 60 MB garbage message kept whole in the dead-letter table
    big = os.urandom(5 * 1024 * 1024)
    await broker.publish([Outgoing(id="big", queue="q", body=big), msg()])
    for d in await claim(broker, limit=2):
        assert await d.dead_letter("undecodable")
    letters = {x.id: x for x in await broker.dead_letters()}
    assert letters["big"].body == big[:DEAD_LETTER_BODY_LIMIT]
    assert letters["big"].size == len(big)
    small = next(x for x in letters.values() if x.id != "big")
    assert small.size == len(small.body) < DEAD_LETTER_BODY_LIMIT  # whole
    with contextlib.closing(sqlite3.connect(tmp_path / "aq.db")) as conn:
        stored = conn.execute("SELECT length(body) FROM aq_dead_letters WHERE id = 'big'")
        assert stored.fetchone() == (DEAD_LETTER_BODY_LIMIT,)


async def test_a_dead_letter_table_from_before_sizes_gets_the_column(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "aq.db")) as conn:
        conn.execute(
            "CREATE TABLE aq_dead_letters (seq INTEGER PRIMARY KEY, id TEXT NOT NULL,"
            " queue TEXT NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL, at REAL NOT NULL)"
        )
        conn.execute(
            "INSERT INTO aq_dead_letters (id, queue, reason, body, at)"
            " VALUES ('old', 'q', 'why', x'00ff', 1.0)"
        )
        conn.commit()
    b = SQLiteBroker(url_for(tmp_path))
    try:
        await b.connect()
        await b.publish([Outgoing(id="new", queue="q", body=b"n" * (DEAD_LETTER_BODY_LIMIT + 1))])
        [d] = await claim(b)
        assert await d.dead_letter("why")
        letters = {x.id: x for x in await b.dead_letters()}
        assert (letters["old"].body, letters["old"].size) == (b"\x00\xff", 2)
        assert letters["new"].size == DEAD_LETTER_BODY_LIMIT + 1
        assert len(letters["new"].body) == DEAD_LETTER_BODY_LIMIT
    finally:
        await b.close()
    again = SQLiteBroker(url_for(tmp_path))  # the column is there now: opening again is fine
    try:
        assert len(await again.dead_letters()) == 2
    finally:
        await again.close()


async def test_purge_keeps_in_flight(broker: SQLiteBroker) -> None:
    await broker.publish([msg(), msg(), msg(eta=time.time() + 60), msg("other")])
    [held] = await claim(broker, limit=1)
    assert await broker.purge("q") == 2
    assert await broker.size("q") == 1
    assert await broker.size("other") == 1
    assert await held.ack()


async def test_in_process_publish_wakes_a_waiting_claim(tmp_path: Path) -> None:
    b = SQLiteBroker(url_for(tmp_path), poll_min=10, poll_max=10)  # polling cannot help
    await b.connect()
    try:
        waiter = asyncio.create_task(claim(b, timeout=10.0))
        await asyncio.sleep(0.05)
        m = msg()
        t0 = time.monotonic()
        await b.publish([m])
        got = await asyncio.wait_for(waiter, 5)
        assert [d.id for d in got] == [m.id] and time.monotonic() - t0 < 1.0
    finally:
        await b.close()


async def test_other_connection_publish_found_by_polling(tmp_path: Path) -> None:
    consumer, producer = SQLiteBroker(url_for(tmp_path)), SQLiteBroker(url_for(tmp_path))
    await consumer.connect()
    await producer.connect()
    try:
        waiter = asyncio.create_task(claim(consumer, timeout=10.0))
        await asyncio.sleep(0.3)  # idle long enough for the poll interval to grow
        m = msg()
        t0 = time.monotonic()
        await producer.publish([m])
        got = await asyncio.wait_for(waiter, 5)
        assert [d.id for d in got] == [m.id] and time.monotonic() - t0 < 1.0
    finally:
        await consumer.close()
        await producer.close()


async def test_locked_file_is_waited_out_not_lost(tmp_path: Path) -> None:
    b = SQLiteBroker(url_for(tmp_path), busy_timeout=0.02, lock_timeout=30)
    await b.connect()
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with contextlib.closing(sqlite3.connect(tmp_path / "aq.db", isolation_level=None)) as c:
            c.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(10)
            c.execute("COMMIT")

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 5)
        m = msg()
        publish = asyncio.create_task(b.publish([m]))
        await asyncio.sleep(0.2)  # several busy retries happen meanwhile
        assert not publish.done()
        release.set()
        assert await asyncio.wait_for(publish, 10) == [True]
        assert [d.id for d in await claim(b)] == [m.id]
    finally:
        release.set()
        holder.join()
        await b.close()


async def test_lock_timeout_raises_and_writes_nothing(tmp_path: Path) -> None:
    b = SQLiteBroker(url_for(tmp_path), busy_timeout=0.01, lock_timeout=0.2)
    await b.connect()
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with contextlib.closing(sqlite3.connect(tmp_path / "aq.db", isolation_level=None)) as c:
            c.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(10)
            c.execute("ROLLBACK")

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 5)
        with pytest.raises(BrokerError, match="stayed locked"):
            await b.publish([msg()])
    finally:
        release.set()
        holder.join()
    assert await b.size("q") == 0
    await b.close()


# -- many OS processes on one file ----------------------------------------------------------

CONSUMER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from aqueue.brokers.sqlite import SQLiteBroker
    from aqueue.core.protocols import Outgoing

    async def main(url, name, go, done, count):
        broker = SQLiteBroker(url)
        await broker.connect()  # every process opens the fresh file at about the same time
        print("ready", flush=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(go):
            assert time.monotonic() < deadline, "no go signal"
            await asyncio.sleep(0.005)
        ids = [f"{name}-{i}" for i in range(int(count))]
        for i in range(0, len(ids), 50):  # producing while the others consume
            batch = [Outgoing(id=x, queue="q", body=x.encode()) for x in ids[i:i + 50]]
            assert all(await broker.publish(batch))
        print("published", flush=True)
        got, refused = [], 0
        while time.monotonic() < deadline:
            ds = await broker.claim(["q"], limit=20, lease_seconds=60, owner=name, timeout=0.1)
            if not ds:
                if os.path.exists(done) and await broker.size("q") == 0:
                    break
                continue
            got += [d.id for d in ds]
            refused += sum(not ok for ok in await asyncio.gather(*(d.ack() for d in ds)))
        await broker.close()
        print(json.dumps({"ids": got, "refused": refused}), flush=True)

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def run_script(script: str, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def expect_line(proc: asyncio.subprocess.Process, text: str) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != text.encode():
        stderr = await proc.stderr.read() if proc.stderr else b""
        raise AssertionError(f"expected {text!r}, got {line!r}; stderr: {stderr.decode()}")


@pytest.mark.slow
async def test_four_processes_claim_each_message_exactly_once(tmp_path: Path) -> None:
    url, go, done = url_for(tmp_path), tmp_path / "go", tmp_path / "done"
    names = [f"w{i}" for i in range(4)]
    procs = [await run_script(CONSUMER, url, n, str(go), str(done), "500") for n in names]
    try:
        for p in procs:
            await expect_line(p, "ready")
        go.touch()
        for p in procs:
            await expect_line(p, "published")
        done.touch()
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
    reports = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    claimed = [i for r in reports for i in r["ids"]]
    expected = {f"{n}-{i}" for n in names for i in range(500)}
    assert len(claimed) == len(expected) == 2000  # nothing claimed twice
    assert set(claimed) == expected  # nothing lost
    assert sum(r["refused"] for r in reports) == 0
    b = SQLiteBroker(url)
    try:
        assert await b.size("q") == 0
    finally:
        await b.close()


STORER = textwrap.dedent(
    """
    import asyncio, sys
    from aqueue.backends.sqlite import SQLiteBackend

    async def main(url, task_id):
        backend = SQLiteBackend(url)
        await backend.connect()
        assert await backend.store(task_id, b"from-child", state="SUCCESS", attempt=1, ttl=60)
        await backend.close()

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.mark.slow
async def test_watch_sees_a_store_from_another_process(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    seen: list[bytes] = []

    async def watch() -> None:
        async with contextlib.aclosing(backend.watch("t1")) as stream:
            async for raw in stream:
                seen.append(raw)
                if raw == b"from-child":
                    return

    watcher = asyncio.create_task(watch())
    await backend.store("t1", b"started", state=states.STARTED, attempt=1, ttl=60)
    proc = await run_script(STORER, url_for(tmp_path), "t1")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    await asyncio.wait_for(watcher, 5)
    assert seen[-1] == b"from-child" and seen[0] == b"started"


# -- result backend -------------------------------------------------------------------------


async def test_backend_fencing(backend: SQLiteBackend) -> None:
    assert await backend.store("t", b"a2", state=states.STARTED, attempt=2, ttl=None)
    assert not await backend.store("t", b"a1", state=states.SUCCESS, attempt=1, ttl=None)
    assert await backend.store("t", b"a2-ok", state=states.SUCCESS, attempt=2, ttl=None)
    assert not await backend.store("t", b"a2-again", state=states.FAILURE, attempt=2, ttl=None)
    assert await backend.get("t") == b"a2-ok"


async def test_backend_fences_across_connections(tmp_path: Path) -> None:
    one, two = SQLiteBackend(url_for(tmp_path)), SQLiteBackend(url_for(tmp_path))
    try:
        results = await asyncio.gather(
            *(
                b.store("t", f"{b is one}-{a}".encode(), state=states.SUCCESS, attempt=a, ttl=60)
                for a in (1, 2, 3)
                for b in (one, two)
            )
        )
        assert results.count(True) >= 1
        assert (await two.get("t") or b"").endswith(b"-3")
    finally:
        await one.close()
        await two.close()


async def test_expired_results_are_absent_then_swept(tmp_path: Path) -> None:
    backend = SQLiteBackend(url_for(tmp_path), sweep_interval=0)
    try:
        assert await backend.store("t", b"x", state=states.SUCCESS, attempt=5, ttl=0.05)
        async with asyncio.timeout(5):
            while await backend.get("t") is not None:
                await asyncio.sleep(0.02)  # waiting for the clock, not for the code
        # expired counts as absent: even an earlier attempt may write again
        assert await backend.store("t", b"y", state=states.STARTED, attempt=1, ttl=0)
        assert await backend.store("u", b"z", state=states.STARTED, attempt=1, ttl=None)
        with contextlib.closing(sqlite3.connect(tmp_path / "aq.db")) as conn:
            assert conn.execute("SELECT id FROM aq_results").fetchall() == [("u",)]
    finally:
        await backend.close()


async def test_watch_yields_current_then_newer_and_ends_on_close(
    backend: SQLiteBackend,
) -> None:
    await backend.store("t", b"one", state=states.STARTED, attempt=1, ttl=None)
    stream = backend.watch("t")
    assert await asyncio.wait_for(anext(stream), 5) == b"one"
    nxt = asyncio.ensure_future(anext(stream))
    await backend.forget("t")
    await backend.store("t", b"two", state=states.SUCCESS, attempt=1, ttl=None)
    assert await asyncio.wait_for(nxt, 5) == b"two"
    nxt = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    await backend.close()
    with pytest.raises(Exception, match="closed"):
        await asyncio.wait_for(nxt, 5)
