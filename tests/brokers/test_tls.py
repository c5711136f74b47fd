"""TLS end to end (issue 19): ``rediss://`` and ``amqps://`` against a private redis-server
(``--tls-port``) and a private RabbitMQ node with a TLS listener, trusting a CA the test
makes (tests/faults/certificates.py). Each server is started once per module and stopped by
PID; its directory is removed.

Covered: a task round trip (broker and result backend over TLS, and a RabbitMQ broker with a
``rediss://`` backend), mutual TLS, a client without a certificate refused, the wrong CA
refused with a message naming certificate verification and no password, verification
turned off, and ``aqueue worker`` started on a ``rediss://`` URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aqueue import App, BrokerError

from ..faults.certificates import Certificates, make_certificates
from ..faults.rabbitmq_node import RabbitNode, running_node
from ..faults.redis_server import HOST, RedisServer, running_server
from ..faults.tcp_proxy import TcpProxy

# the redis / rabbitmq marks say which server software the test needs (private instances:
# the shared servers are not used)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-tls-pw"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certificates]:
    made = make_certificates(tmp_path_factory.mktemp("pki"))
    yield made
    shutil.rmtree(made.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_tls(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[RedisServer]:
    """A redis-server whose TLS port takes clients with or without a certificate."""
    with running_server(
        tmp_path_factory.mktemp("redis-tls"),
        password=PASSWORD,
        tls=(certs.server_cert, certs.server_key),
        tls_ca=certs.ca,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def redis_mtls(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[RedisServer]:
    """A redis-server whose TLS port requires a client certificate signed by the CA."""
    with running_server(
        tmp_path_factory.mktemp("redis-mtls"),
        password=PASSWORD,
        tls=(certs.server_cert, certs.server_key),
        tls_ca=certs.ca,
        tls_auth_clients=True,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def rabbit_mtls(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[RabbitNode]:
    """A private RabbitMQ node whose TLS listener requires a client certificate."""
    with running_node(
        tmp_path_factory.mktemp("rabbit-tls"),
        tls=(certs.ca, certs.server_cert, certs.server_key),
        tls_verify_clients=True,
    ) as node:
        yield node


def rediss(server: RedisServer, **query: object) -> str:
    assert server.tls_port is not None
    tail = "&".join(f"{k}={v}" for k, v in {"prefix": uuid.uuid4().hex[:8], **query}.items())
    return f"rediss://:{PASSWORD}@127.0.0.1:{server.tls_port}/0?{tail}"


def amqps(node: RabbitNode, **query: object) -> str:
    assert node.tls_port is not None
    tail = "&".join(f"{k}={v}" for k, v in {"prefix": uuid.uuid4().hex[:8], **query}.items())
    return f"amqps://guest:guest@127.0.0.1:{node.tls_port}/?{tail}"


def client_cert(certs: Certificates, *, redis: bool) -> dict[str, Path]:
    if redis:
        return {"ssl_certfile": certs.client_cert, "ssl_keyfile": certs.client_key}
    return {"certfile": certs.client_cert, "keyfile": certs.client_key}


async def round_trip(broker: str, backend: str) -> None:
    """A task sent, run by an in-process worker, its result read back."""
    app = App("tls", broker=broker, backend=backend)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with app, app.worker(concurrency=2):
        handle = await add.delay(2, 3)
        assert await handle.wait(timeout=20) == 5


async def connect_error(url: str, *, backend: str | None = None, send: bool = False) -> str:
    """The message of the BrokerError a connect (or a first ``delay()``) raises."""
    app = App("tls", broker=url, backend=backend or "memory://")

    @app.task
    async def noop() -> None:
        return None

    with pytest.raises(BrokerError) as info:
        if send:
            await noop.delay()
        else:
            await app.connect()
    await app.close()
    text = str(info.value)
    assert PASSWORD not in text and ":guest@" not in text, text
    return text


# -- Redis -------------------------------------------------------------------------------


async def test_redis_round_trip_over_tls(redis_tls: RedisServer, certs: Certificates) -> None:
    url = rediss(redis_tls, ssl_ca_certs=certs.ca)
    await round_trip(url, url)


async def test_redis_mutual_tls(redis_mtls: RedisServer, certs: Certificates) -> None:
    url = rediss(redis_mtls, ssl_ca_certs=certs.ca, **client_cert(certs, redis=True))
    await round_trip(url, url)


async def test_redis_client_without_certificate_is_refused_and_not_retried(
    redis_mtls: RedisServer, certs: Certificates
) -> None:
    assert redis_mtls.tls_port is not None
    async with TcpProxy(HOST, redis_mtls.tls_port) as proxy:  # counts the connections
        url = rediss(redis_mtls, ssl_ca_certs=certs.ca, retries=3)
        text = await connect_error(url.replace(f":{redis_mtls.tls_port}/", f":{proxy.port}/"))
    assert "requires a client certificate" in text and "ssl_certfile" in text, text
    # the refusal comes after the handshake, with the server's first reply, and is as final
    # as a failed handshake: retrying cannot make a certificate appear
    assert proxy.accepted == 1


async def test_redis_wrong_ca_names_certificate_verification(
    redis_tls: RedisServer, certs: Certificates
) -> None:
    url = rediss(redis_tls, ssl_ca_certs=certs.other_ca)
    for send in (False, True):  # App.connect() and a first delay()
        text = await connect_error(url, send=send)
        assert "certificate verification failed" in text and "ssl_ca_certs" in text, text


async def test_redis_missing_ca_file_is_named(redis_tls: RedisServer, certs: Certificates) -> None:
    missing = certs.directory / "no-such-ca.pem"
    text = await connect_error(rediss(redis_tls, ssl_ca_certs=missing))
    assert f"ssl_ca_certs={missing} does not exist" in text, text


async def test_redis_verification_off_connects(redis_tls: RedisServer) -> None:
    url = rediss(redis_tls, ssl_cert_reqs="none")  # insecure: any certificate is taken
    async with App("tls", broker=url, backend=url):
        pass


def test_cli_worker_over_redis_tls(
    redis_mtls: RedisServer, certs: Certificates, tmp_path: Path
) -> None:
    """``aqueue worker`` passes the URL's TLS options through (and says why a wrong CA
    fails, without the password)."""
    url = rediss(redis_mtls, ssl_ca_certs=certs.ca, **client_cert(certs, redis=True))
    env = {
        **os.environ,
        "AQUEUE_BROKER_URL": url,
        "AQUEUE_RESULT_BACKEND": url,
        "AQUEUE_TEST_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    worker = [sys.executable, "-m", "aqueue.cli", "worker", "tests.worker.proc_tasks:app"]
    bad = subprocess.run(
        worker,
        env={**env, "AQUEUE_BROKER_URL": url.replace(str(certs.ca), str(certs.other_ca))},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1, bad.stderr
    assert "certificate verification failed" in bad.stderr and PASSWORD not in bad.stderr

    proc = subprocess.Popen(
        [*worker, "-c", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SEND],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0 and done.stdout.strip() == "5", done.stderr
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert PASSWORD.encode() not in out


_SEND = """
import asyncio
from tests.worker import proc_tasks

async def main():
    async with proc_tasks.app:
        handle = await proc_tasks.add.delay(2, 3)
        print(await handle.wait(timeout=30))

asyncio.run(main())
"""


# -- RabbitMQ ---------------------------------------------------------------------------


# One test for the private node (a RabbitMQ node is ~8 s of CPU to start: as five tests
# spread over the xdist workers, each worker that ran one started its own)
@pytest.mark.rabbitmq
async def test_rabbitmq_over_mutual_tls(
    rabbit_mtls: RabbitNode, redis_tls: RedisServer, certs: Certificates
) -> None:
    mine = client_cert(certs, redis=False)
    # a round trip, with results on Redis over TLS
    broker = amqps(rabbit_mtls, cafile=certs.ca, **mine)
    await round_trip(broker, rediss(redis_tls, ssl_ca_certs=certs.ca))

    # a client without a certificate is refused, and told what to set
    text = await connect_error(amqps(rabbit_mtls, cafile=certs.ca))
    assert "client certificate" in text and "certfile" in text, text

    # a wrong CA names certificate verification, at connect and at the first send
    url = amqps(rabbit_mtls, cafile=certs.other_ca, **mine)
    for send in (False, True):
        text = await connect_error(url, send=send)
        assert "certificate verification failed" in text and "cafile" in text, text

    # a CA file that does not exist is named
    missing = certs.directory / "no-such-ca.pem"
    text = await connect_error(amqps(rabbit_mtls, cafile=missing, **mine))
    assert f"cafile={missing} does not exist" in text, text

    # verification off connects whatever the CA, as a query option ...
    url = amqps(rabbit_mtls, no_verify_ssl=1, **mine)
    async with App("tls", broker=url, backend="memory://"):
        pass
    # ... and as keyword options (broker_options), which win over the query
    url = amqps(rabbit_mtls, cafile=certs.other_ca)
    options = {"no_verify_ssl": True, **mine}
    async with App("tls", broker=url, backend="memory://", broker_options=options):
        pass
