"""Workflows with RabbitMQ as the broker and Redis as the result backend (issue 7)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aqueue import App, chain, chord, group

from ..conftest import delete_redis_prefix, make_url, rabbit_url, require_service

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis]


@pytest.fixture
async def app(tmp_path: Path, _rabbit_prefixes: list[str]) -> AsyncIterator[App]:
    prefix = f"aqt-{uuid.uuid4().hex[:12]}"
    _rabbit_prefixes.append(prefix)
    backend = make_url("redis", tmp_path)
    require_service("RabbitMQ", "127.0.0.1", 5672)
    the_app = App("mixed", broker=rabbit_url(prefix), backend=backend)
    try:
        async with the_app:
            yield the_app
    finally:
        delete_redis_prefix(backend.rsplit("prefix=", 1)[1])


async def test_chain_group_chord_on_amqp_with_redis_results(app: App) -> None:
    @app.task(name="m.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="m.tsum")
    async def tsum(numbers: list[int]) -> int:
        return sum(numbers)

    async with app.worker(concurrency=20):
        assert await (await chain(add.s(1, 1), add.s(2), add.s(3)).delay()).wait(timeout=30) == 7
        assert await (await group(add.s(i, i) for i in range(5)).delay()).wait(timeout=30) == [
            0,
            2,
            4,
            6,
            8,
        ]
        total = await chord((add.s(i, i) for i in range(20)), tsum.s()).delay()
        assert await total.wait(timeout=30) == 380
    # results live in Redis: another process (here, a fresh App) can read them
    other = App("mixed", broker=app.broker_url, backend=app.backend_url)
    async with other:
        assert await other.AsyncResult(total.id).wait(timeout=5) == 380
