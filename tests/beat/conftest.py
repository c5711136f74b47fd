"""Helpers for the scheduler's tests: apps on each store, and reading what was published."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aqueue import App
from aqueue.core.message import MessageIn, decode_message

from ..conftest import CLUSTER_KIND, delete_cluster_prefix, delete_redis_prefix, make_url, prefix_of

STORE_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    CLUSTER_KIND,
]


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A broker URL whose result store (the same URL) holds the schedules."""
    url = make_url(request.param, tmp_path)
    yield url
    if request.param == "redis":
        delete_redis_prefix(prefix_of(url))
    elif request.param == "redis-cluster":
        delete_cluster_prefix(prefix_of(url))


async def published(app: App, queue: str = "celery") -> list[MessageIn]:
    """Every message waiting in ``queue``, taken off it (oldest first)."""
    broker = await app.connected_broker()
    out: list[MessageIn] = []
    while True:
        got = await broker.claim([queue], limit=1000, lease_seconds=60, owner="test", timeout=0)
        if not got:
            return out
        for delivery in got:
            out.append(decode_message(delivery.body, app.conf.max_message_bytes))
            await delivery.ack()
