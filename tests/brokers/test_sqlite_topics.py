"""SQLite-specific behaviour of the broker's topics: another process's publish is seen by
polling, caps per topic, and the reply topics' old rows are deleted (the cross-broker
contract is in tests/conformance/test_topics.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aqueue.brokers.sqlite import SQLiteBroker
from aqueue.core.errors import SubscriptionClosed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aq.db'}"


@pytest.fixture
async def broker(url: str) -> AsyncIterator[SQLiteBroker]:
    b = SQLiteBroker(url)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


async def test_a_publish_by_another_process_is_seen(broker: SQLiteBroker, url: str) -> None:
    sub = await broker.topics.subscribe("control")
    script = textwrap.dedent(
        f"""
        import asyncio
        from aqueue.brokers.sqlite import SQLiteBroker

        async def main():
            b = SQLiteBroker({url!r})
            await b.connect()
            await b.topics.publish("control", [b"from-afar"], cap=10)
            await b.close()

        asyncio.run(main())
        """
    )
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=ROOT)
        got = await sub.get(20.0)  # nothing in this process wakes it: only its poll
        assert await proc.wait() == 0
        assert got == [b"from-afar"]
    finally:
        await sub.close()


async def test_caps_are_per_topic(broker: SQLiteBroker) -> None:
    await broker.topics.publish("events", [b"e1", b"e2", b"e3"], cap=2)
    await broker.topics.publish("control", [b"c1"], cap=1)
    await broker.topics.publish("control", [b"c2"], cap=1)
    events = await broker.topics.subscribe("events", since=0.0)
    control = await broker.topics.subscribe("control", since=0.0)
    try:
        assert await events.get(1.0) == [b"e2", b"e3"]
        assert await control.get(1.0) == [b"c2"]
    finally:
        await events.close()
        await control.close()


async def test_reply_rows_older_than_a_minute_are_deleted(
    broker: SQLiteBroker, tmp_path: Path
) -> None:
    await broker.topics.publish("reply.old", [b"r"], cap=10)
    await broker.topics.publish("events", [b"e"], cap=10)
    # age them by two minutes, as if published then (another connection, as a process would)
    with sqlite3.connect(tmp_path / "aq.db") as conn:
        conn.execute("UPDATE aq_topics SET at = at - 120")
    await asyncio.sleep(1.1)  # publishes sweep at most once a second per process
    await broker.topics.publish("reply.new", [b"n"], cap=10)
    with sqlite3.connect(tmp_path / "aq.db") as conn:
        left = sorted(row[0] for row in conn.execute("SELECT topic FROM aq_topics"))
    assert left == ["events", "reply.new"]  # only reply topics expire


async def test_a_waiting_subscription_wakes_at_once_for_this_process(url: str) -> None:
    b = SQLiteBroker(url, topic_poll=30.0)  # a poll that would never come in time
    await b.connect()
    reader = await b.topics.subscribe("control")
    try:
        waiting = asyncio.ensure_future(reader.get(60.0))
        await asyncio.sleep(0.05)
        await b.topics.publish("control", [b"now"], cap=10)
        async with asyncio.timeout(15):  # woken by the publish: the poll is 30 s away
            assert await waiting == [b"now"]
    finally:
        await reader.close()
        await b.close()


async def test_closing_the_broker_ends_waiting_subscriptions(url: str) -> None:
    """A poll after the broker closed would open the file again, on a new thread."""
    b = SQLiteBroker(url)
    await b.connect()
    sub = await b.topics.subscribe("control")
    waiting = asyncio.ensure_future(sub.get(60.0))
    await asyncio.sleep(0.05)
    await b.close()
    async with asyncio.timeout(20):  # the close ended the wait, not its minute
        with pytest.raises(SubscriptionClosed):
            await waiting
    with pytest.raises(SubscriptionClosed):  # at once: nothing is read from the file
        await sub.get(1.0)
