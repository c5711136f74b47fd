"""Dead letters you can act on: replay (a fresh delivery count, marked as replayed), replay
all, purge, and the refusals (docs/fleet.md, "Dead letters")."""

from __future__ import annotations

import asyncio

import pytest

from aqueue import App, TaskFailed
from aqueue.brokers.memory import MemoryBroker
from aqueue.core.deadletters import REPLAYED_HEADER, DeadLetterError
from aqueue.core.errors import ConfigurationError
from aqueue.core.message import decode_message
from aqueue.core.protocols import Outgoing, ReplaysDeadLetters


def replays_or_skip(app: App) -> None:
    if not isinstance(app.broker, ReplaysDeadLetters):
        pytest.skip(f"{type(app.broker).__name__} cannot replay dead letters")


async def dead_letter_unknown(app: App, name: str, *args: object, queue: str = "celery") -> str:
    """Send a task no worker knows yet: the worker dead-letters it (``unknown_task``)."""
    h = await app.send_task(name, args=args, queue=queue)
    async with app.worker(queues=[queue]):
        with pytest.raises(TaskFailed, match="NotRegistered"):
            await h.wait(timeout=10)
    return h.id


async def test_replay_runs_the_message_again_as_new_and_marks_it(app: App) -> None:
    replays_or_skip(app)
    task_id = await dead_letter_unknown(app, "dlq.later", 20)
    [letter] = await app.control.dead_letters.list()
    assert (letter.id, letter.reason) == (task_id, "unknown_task")
    assert (await app.control.dead_letters.get(task_id)).id == task_id

    @app.task(name="dlq.later")
    async def later(x: int) -> int:
        return x + 1

    await app.control.dead_letters.replay(task_id)
    assert await app.control.dead_letters.list() == []
    # back in its queue as a new message: delivery count 1 on its first claim, marked
    [again] = await app.broker.claim(["celery"], limit=1, lease_seconds=30, owner="t", timeout=5)
    msg = decode_message(again.body, app.conf.max_message_bytes)
    assert again.id == task_id and again.delivery_count == 1
    assert msg.headers[REPLAYED_HEADER] == "1"
    assert msg.prior_attempts >= 1  # past the attempt its FAILURE was recorded with
    assert await again.release(executed=False)
    async with app.worker():
        assert await app.AsyncResult(task_id).wait(timeout=10) == 21


async def test_replay_all_and_purge(app: App) -> None:
    replays_or_skip(app)
    first = await dead_letter_unknown(app, "dlq.a")
    second = await dead_letter_unknown(app, "dlq.b", queue="other")
    runs: list[str] = []

    @app.task(name="dlq.a")
    async def a() -> None:
        runs.append("a")

    @app.task(name="dlq.b")
    async def b() -> None:
        runs.append("b")

    assert await app.control.dead_letters.replay_all(queue="other") == (1, [])
    assert [d.id for d in await app.control.dead_letters.list()] == [first]
    assert await app.control.dead_letters.replay_all() == (1, [])
    async with app.worker(queues=["celery", "other"]):
        await app.AsyncResult(first).wait(timeout=10)
        await app.AsyncResult(second).wait(timeout=10)
    assert sorted(runs) == ["a", "b"]

    await dead_letter_unknown(app, "dlq.c")
    await dead_letter_unknown(app, "dlq.d", queue="other")
    assert await app.control.dead_letters.purge("other") == 1
    assert [d.queue for d in await app.control.dead_letters.list()] == ["celery"]
    assert await app.control.dead_letters.purge() == 1
    assert await app.control.dead_letters.list() == []


async def test_what_cannot_be_replayed_is_refused_and_kept(app: App) -> None:
    replays_or_skip(app)
    await app.broker.publish([Outgoing(id="garbage-1", queue="celery", body=b"\xc1garbage")])
    async with app.worker():
        async with asyncio.timeout(10):
            while not await app.control.dead_letters.list():
                await asyncio.sleep(0.02)
    with pytest.raises(DeadLetterError, match="not a task message"):
        await app.control.dead_letters.replay("garbage-1")
    with pytest.raises(DeadLetterError, match="no dead letter with id 'nope'"):
        await app.control.dead_letters.replay("nope")
    assert [d.id for d in await app.control.dead_letters.list()] == ["garbage-1"]
    replayed, errors = await app.control.dead_letters.replay_all()
    assert replayed == 0 and "garbage-1" in errors[0]


class _NoReplayBroker(MemoryBroker):
    """A broker (a third party's, say) without the optional capability: every broker of
    aqueue's own replays, so this is the only way to reach the refusal."""

    replay_dead_letter = None  # type: ignore[assignment]
    purge_dead_letters = None  # type: ignore[assignment]


async def test_a_broker_without_replay_says_so() -> None:
    broker = _NoReplayBroker("memory://")
    assert not isinstance(broker, ReplaysDeadLetters)
    async with App("noreplay", broker=broker, backend="memory://") as app:
        with pytest.raises(ConfigurationError, match="cannot replay or purge dead letters"):
            await app.control.dead_letters.purge()
        with pytest.raises(ConfigurationError, match="cannot replay or purge dead letters"):
            await app.control.dead_letters.replay("any-id")
        with pytest.raises(ConfigurationError, match="cannot replay or purge dead letters"):
            await app.control.dead_letters.replay_all()


async def test_a_replay_refused_because_the_id_is_queued_keeps_letter_and_record(
    app: App,
) -> None:
    replays_or_skip(app)
    if not app.broker.capabilities.exact_size:
        pytest.skip("AMQP cannot see that the id is queued")
    task_id = await dead_letter_unknown(app, "dlq.twice")
    [letter] = await app.control.dead_letters.list()
    [queued] = await app.broker.publish([Outgoing(id=task_id, queue="celery", body=letter.body)])
    if not queued:
        pytest.skip("this broker refuses an id enqueued recently (dedupe)")
    with pytest.raises(DeadLetterError, match="queued or running again"):
        await app.control.dead_letters.replay(task_id)
    assert await app.control.dead_letters.list() == [letter]
    assert await app.AsyncResult(task_id).state() == "FAILURE"  # its record was put back
