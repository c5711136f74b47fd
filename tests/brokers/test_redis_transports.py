"""Redis over TLS and over a Unix socket, and a ``rediss://`` URL that points at a plaintext
server, each against a private redis-server (tests/faults/redis_server.py).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aqueue.backends.redis import RedisBackend
from aqueue.brokers.redis import RedisBroker
from aqueue.core.errors import BackendError, BrokerError
from aqueue.core.protocols import Lease, Outgoing
from tests.faults.redis_server import HOST, RedisServer, running_server
from tests.faults.tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[RedisServer]:
    with running_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def tls(tmp_path: Path, certificate: tuple[Path, Path]) -> Iterator[RedisServer]:
    with running_server(tmp_path / "redis", tls=certificate) as server:
        yield server


async def roundtrip(broker: RedisBroker, backend: RedisBackend) -> None:
    """Publish, claim, renew (the blocking client), ack; store and watch a result (pub/sub)."""
    mid = uuid.uuid4().hex
    assert await broker.publish([Outgoing(id=mid, queue="q", body=b"x")]) == [True]
    [d] = await broker.claim(["q"], limit=1, lease_seconds=30, owner="t", timeout=0)
    assert await asyncio.to_thread(broker.renew, [d.lease], 30.0) == []
    assert await d.ack()
    records = backend.watch(mid)
    watching = asyncio.ensure_future(anext(records))
    await backend.store(mid, b"done", state="SUCCESS", attempt=1, ttl=60)
    async with asyncio.timeout(5):
        assert await watching == b"done"
    await records.aclose()


async def test_broker_and_backend_over_tls(
    tls: RedisServer, certificate: tuple[Path, Path]
) -> None:
    cert, _ = certificate
    url = f"rediss://127.0.0.1:{tls.tls_port}/0?ssl_ca_certs={cert}&prefix=tls"
    broker, backend = RedisBroker(url), RedisBackend(url)
    try:
        await roundtrip(broker, backend)
    finally:
        await broker.close()
        await backend.close()


async def test_a_refused_certificate_fails_at_once_and_is_not_retried(tls: RedisServer) -> None:
    assert tls.tls_port is not None
    async with TcpProxy(HOST, tls.tls_port) as proxy:  # counts the connections made
        # no ssl_ca_certs: the self-signed certificate is not trusted
        broker = RedisBroker(f"rediss://127.0.0.1:{proxy.port}/0", retries=3)
        with pytest.raises(BrokerError) as info:
            await broker.connect()
        await broker.close()
    text = str(info.value)
    assert "TLS handshake" in text and "certificate verification failed" in text, text
    assert "redis://" not in text.split("failed:", 1)[1]  # no hint: the server speaks TLS
    assert proxy.accepted == 1  # one try: no retries


async def test_rediss_to_a_plaintext_server_fails_at_once(plain: RedisServer) -> None:
    # issue 11, defect 5: this waited out the connect timeout, retried, and said "timeout"
    slow = {"socket_connect_timeout": 30, "operation_timeout": 60, "retries": 3}
    for make, error in ((RedisBroker, BrokerError), (RedisBackend, BackendError)):
        async with TcpProxy(HOST, plain.port) as proxy:
            component = make(f"rediss://127.0.0.1:{proxy.port}/0", **slow)
            with pytest.raises(error) as info:
                async with asyncio.timeout(20):  # far below the connect timeout
                    await component.connect()
            await component.close()
        text = str(info.value)
        assert "TLS handshake with 127.0.0.1" in text and "plaintext" in text, text
        assert "redis://" in text  # says what to use instead
        assert proxy.accepted == 2  # the handshake and the plaintext probe; no retries


async def test_rediss_to_a_plaintext_server_is_not_retried_by_the_renewal_client(
    plain: RedisServer,
) -> None:
    async with TcpProxy(HOST, plain.port) as proxy:
        url = f"rediss://127.0.0.1:{proxy.port}/0"
        broker = RedisBroker(url, socket_connect_timeout=0.5, retries=3)
        with pytest.raises(BrokerError, match="TLS handshake"):
            await asyncio.to_thread(broker.renew, [Lease(id="x", queue="q", token=1)], 30.0)
        await broker.close()
    assert proxy.accepted == 1


async def test_broker_and_backend_over_a_unix_socket(tmp_path: Path) -> None:
    # unix:// URLs lost their "//" on the way to redis-py, and redis-py refused the TCP
    # keepalive option for them: no Unix socket ever worked
    with running_server(tmp_path / "redis", unix_socket=True) as server:
        url = f"unix://{server.socket_path}?db=1&prefix=unix"
        broker, backend = RedisBroker(url), RedisBackend(url)
        try:
            await roundtrip(broker, backend)
            db1 = redis.Redis(host=HOST, port=server.port, db=1)
            try:
                assert db1.dbsize() > 0  # in the database asked for
            finally:
                db1.close()
        finally:
            await broker.close()
            await backend.close()
