"""Priorities mean the same on every broker: 0..9, higher runs first."""

from __future__ import annotations

import pytest

from aqueue import App, ConfigurationError, Queue

PRIORITIES = [0, 3, 9, 1, 5, 9, 0]


async def _run_in_order(app: App, queue: str) -> list[tuple[int, int]]:
    """Queue tasks of every priority while no worker runs, then run them one at a time."""
    order: list[tuple[int, int]] = []

    @app.task(name="p.record")
    async def record(priority: int, seq: int) -> None:
        order.append((priority, seq))

    handles = [
        await record.apply_async((p, seq), priority=p, queue=queue)
        for seq, p in enumerate(PRIORITIES)
    ]
    async with app.worker(queues=[queue], concurrency=1, prefetch=1):
        for h in handles:
            await h.wait(timeout=15)
    return order


async def test_higher_priority_runs_first(app: App, broker_url: str) -> None:
    """Highest priority first, equal ones in the order sent, on every broker. RabbitMQ 3's
    quorum queues have no priorities: a queue that needs them says so in task_queues (it is
    then a classic queue with x-max-priority)."""
    if broker_url.startswith("amqp"):
        app.conf.update(task_queues=[Queue("prio", max_priority=9)])
    order = await _run_in_order(app, "prio")
    assert order == sorted(order, key=lambda item: (-item[0], item[1]))
    assert [p for p, _ in order] == [9, 9, 5, 3, 1, 0, 0]


async def test_task_queue_max_priority_gives_every_rabbitmq_queue_priorities(
    app: App, broker_url: str
) -> None:
    if not broker_url.startswith("amqp"):
        pytest.skip("x-max-priority is RabbitMQ's; the other brokers always order by priority")
    app.conf.update(task_queue_max_priority=9)
    order = await _run_in_order(app, "anyq")
    assert [p for p, _ in order] == [9, 9, 5, 3, 1, 0, 0]


def test_the_range_is_checked_in_settings_and_routes() -> None:
    with pytest.raises(ConfigurationError, match="priority must be between 0 and 9"):
        App("p", broker="memory://", task_routes={"t": {"priority": 10}}).router()
    with pytest.raises(ConfigurationError, match=r"task_default_priority must be 0\.\.9"):
        App("p", broker="memory://", task_default_priority=10)
