"""Shared fixtures: one URL per broker kind, each isolated per test."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aqueue import App

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Fail (never skip) when a server the suite needs is down: `make services` starts it."""
    if not _port_open(host, port):
        pytest.fail(f"{name} is not running on {host}:{port}: run `make services`", pytrace=False)


def _delete_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        keys += list(client.scan_iter(match=f"*{{{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


BROKER_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


def make_url(kind: str, tmp_path: Path) -> str:
    """A URL for ``kind`` that no other test shares."""
    unique = uuid.uuid4().hex[:12]
    if kind == "memory":
        return f"memory://t{unique}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'aqueue.db'}"
    if kind == "redis":
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix=aqt-{unique}"
    raise AssertionError(kind)


@pytest.fixture(params=BROKER_KINDS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = make_url(request.param, tmp_path)
    yield url
    if request.param == "redis":
        _delete_redis_prefix(url.rsplit("prefix=", 1)[1])


@pytest.fixture
async def app(broker_url: str) -> AsyncIterator[App]:
    the_app = App("tests", broker=broker_url, lease_seconds=5.0)
    async with the_app:
        yield the_app
