"""The ``rpc://`` result backend: results pushed to the sender's reply queue on RabbitMQ.

An ``amqp://`` broker with no backend uses it. Most tests run the worker on an App of its
own (as another process would), so results travel through RabbitMQ to the client's reply
queue; one runs client and worker on one App, and one runs the quickstart as two processes.
Every test uses its own prefix; the session deletes its queues at the end.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import App, Task, TaskFailed, chord
from aqueue.backends.rpc import REPLY_HEADER, GoneQueues, RPCBackend
from aqueue.core.errors import ConfigurationError
from aqueue.core.urls import default_backend_url
from tests.conftest import RABBIT_HOST, RABBIT_PORT, rabbit_url, require_service

pytestmark = pytest.mark.rabbitmq

ROOT = Path(__file__).resolve().parents[2]


def _register(app: App) -> Any:
    @app.task(name="rpc.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rpc.boom")
    def boom() -> None:
        raise ValueError("kaboom")

    @app.task(name="rpc.progress", bind=True)
    async def progress(self: Task[[int], int], steps: int) -> int:
        for i in range(steps):
            await self.update_state("PROGRESS", meta={"done": i + 1})
            await asyncio.sleep(0.02)
        return steps

    @app.task(name="rpc.tsum")
    async def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="rpc.replaced", bind=True)
    async def replaced(self: Task[[int], int], x: int) -> int:
        await self.replace(add.s(x, 1))

    return add, boom, progress, tsum


@pytest.fixture
def url(_rabbit_prefixes: list[str]) -> str:
    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    prefix = f"aqt-{uuid.uuid4().hex[:12]}"
    _rabbit_prefixes.append(prefix)
    return rabbit_url(prefix)


@pytest.fixture
async def client(url: str) -> AsyncIterator[App]:
    """A producer App, and a worker on a second App (its own connections and reply queue)."""
    app = App("q", broker=url)
    _register(app)
    worker_app = App("q", broker=url)
    _register(worker_app)
    async with app, worker_app, worker_app.worker(concurrency=20):
        yield app


def test_amqp_defaults_to_rpc() -> None:
    assert default_backend_url("amqp://guest:guest@localhost//") == "rpc://"
    assert default_backend_url("amqps://u:p@rabbit/vhost") == "rpc://"
    assert App("q", broker="amqp://guest:guest@localhost//").backend_url == "rpc://"
    explicit = RPCBackend("rpc://guest:s3cret@127.0.0.1:5672/%2F?prefix=abc&cache_size=5")
    assert explicit.reply_queue.startswith("abc.reply.")
    assert "s3cret" not in repr(explicit)
    with pytest.raises(ConfigurationError, match="amqp://"):
        RPCBackend("rpc://", broker_url="redis://localhost:6379/0")


async def test_result_comes_back(client: App) -> None:
    add = client.tasks["rpc.add"]
    handle = await add.delay(2, 2)
    assert await handle.wait(timeout=10) == 4
    assert await handle.state() == "SUCCESS"
    assert await handle.wait(timeout=1) == 4  # kept in this process's cache
    await handle.forget()
    assert await client.AsyncResult(handle.id).state() == "PENDING"


async def test_failure_raises(client: App) -> None:
    handle = await client.tasks["rpc.boom"].delay()
    with pytest.raises(TaskFailed) as info:
        await handle.wait(timeout=10)
    assert info.value.exc_type == "ValueError"
    assert "kaboom" in info.value.exc_message


async def test_events_see_progress(client: App) -> None:
    handle = await client.tasks["rpc.progress"].delay(3)
    seen = [change async for change in handle.events()]
    assert seen[-1].state == "SUCCESS" and seen[-1].info == 3
    progress = [c.info for c in seen if c.state == "PROGRESS"]
    assert progress and progress[-1] == {"done": 3}


async def test_many_waits_share_one_reply_queue(client: App) -> None:
    add = client.tasks["rpc.add"]
    handles = [await add.delay(i, i) for i in range(100)]
    backend = client.backend
    assert isinstance(backend, RPCBackend)
    assert {REPLY_HEADER: backend.reply_queue} == backend.reply_headers()
    results = await asyncio.gather(*(h.wait(timeout=20) for h in handles))
    assert results == [2 * i for i in range(100)]
    assert not backend.watchers  # every watcher unsubscribed


async def test_only_the_sender_sees_results(client: App, url: str) -> None:
    handle = await client.tasks["rpc.add"].delay(1, 1)
    async with App("q", broker=url) as other:
        with pytest.raises(TimeoutError):
            await other.AsyncResult(handle.id).wait(timeout=0.5)
    assert await handle.wait(timeout=10) == 2


async def test_revoke_needs_a_shared_backend(client: App) -> None:
    handle = await client.tasks["rpc.add"].delay(1, 2)
    with pytest.raises(ConfigurationError, match="revocations"):
        await client.control.revoke(handle.id)
    assert await handle.wait(timeout=10) == 3


async def test_chord_needs_a_shared_backend(client: App) -> None:
    add, tsum = client.tasks["rpc.add"], client.tasks["rpc.tsum"]
    with pytest.raises(ConfigurationError, match="redis://"):
        await chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()


async def test_replace_needs_a_shared_backend(client: App) -> None:
    """self.replace() fails the task, saying why, instead of a result that never comes."""
    handle = await client.tasks["rpc.replaced"].delay(1)
    with pytest.raises(TaskFailed, match="redis://") as info:
        await handle.wait(timeout=10)
    assert info.value.exc_type == "ConfigurationError"


async def test_reconnects_with_the_same_reply_queue(client: App) -> None:
    backend = client.backend
    assert isinstance(backend, RPCBackend) and backend.link.conn is not None
    queue = backend.reply_queue
    await backend.link.conn.close()  # as if the connection dropped
    async with asyncio.timeout(10):
        while backend.channel is None or backend.channel.is_closed:
            await asyncio.sleep(0.02)
    assert backend.reply_queue == queue
    assert await (await client.tasks["rpc.add"].delay(5, 5)).wait(timeout=10) == 10


async def test_same_process_client_and_worker(url: str) -> None:
    app = App("q", broker=url)
    add, _, progress, _ = _register(app)
    async with app, app.worker(concurrency=5):
        assert await (await add.delay(20, 22)).wait(timeout=10) == 42
        handle = await progress.delay(2)
        states = [c.state async for c in handle.events()]
        assert states[-1] == "SUCCESS" and "PROGRESS" in states


async def test_a_lone_signature_result_comes_back_over_rpc(client: App) -> None:
    add = client.tasks["rpc.add"]  # the worker runs on another App: routed by reply queue
    assert await (await add.s(1, 2).delay()).wait(timeout=10) == 3


async def test_results_of_an_exited_producer_are_dropped_quietly(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 10: a producer that enqueued and exited (a web request that moved on) left a
    reply queue that no longer exists. Its results cost one returned publish, one INFO line
    naming the queue (never a body), and nothing more; a live producer's results behind
    them still arrive."""
    n, concurrency = 300, 20
    gone = App("q", broker=url)
    _register(gone)
    async with gone:
        await gone.tasks["rpc.add"].delay_many([(i, i) for i in range(n)])
        backend = gone.backend
        assert isinstance(backend, RPCBackend)
        dead = backend.reply_queue
    # closed: its exclusive reply queue went with its connection, before any worker ran
    live, worker_app = App("q", broker=url), App("q", broker=url)
    _register(live)
    _register(worker_app)
    caplog.set_level(logging.DEBUG)  # every logger, aiormq's included
    async with live, worker_app, worker_app.worker(concurrency=concurrency):
        handles = [await live.tasks["rpc.add"].delay(i, 1) for i in range(20)]  # queued last
        results = await asyncio.gather(*(h.wait(timeout=30) for h in handles))
        worker_backend = worker_app.backend
    assert results == [i + 1 for i in range(20)]
    assert isinstance(worker_backend, RPCBackend)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [f"{r.name}: {r.getMessage()[:200]}" for r in loud]
    about_it = [r for r in caplog.records if r.levelno >= logging.INFO and dead in r.getMessage()]
    assert [r.levelno for r in about_it] == [logging.INFO]
    sent = n - worker_backend.dropped
    print(f"\nexited producer: {sent} of {n} results published to its gone reply queue")
    # the ones in flight before RabbitMQ's first return was read, at most ~2 batches
    assert 1 <= sent <= 4 * concurrency


def test_a_gone_reply_queue_is_probed_again() -> None:
    """A reply queue also vanishes while its process reconnects: after ``recheck`` seconds
    one record goes out as a probe; unless it is returned within ``grace``, the queue is
    alive again."""
    gone = GoneQueues()
    gone.recheck, gone.grace = 2.0, 0.5
    assert gone.sendable("a", 0.0) and not gone
    assert gone.returned("a", 10.0) is True  # first return: log it
    assert not gone.sendable("a", 11.9)  # dropped
    assert gone.sendable("a", 12.0)  # the probe
    assert not gone.sendable("a", 12.4)  # waiting for the probe to come back
    assert gone.returned("a", 12.1) is False  # it came back: still gone, not logged again
    assert not gone.sendable("a", 14.0)
    assert gone.sendable("a", 14.1)  # the next probe
    assert gone.sendable("a", 14.7)  # not returned: alive again
    assert gone.sendable("a", 14.8) and not gone


#: a client that never closes its app: ``asyncio.run(main())`` simply returns
UNCLOSED = """
import asyncio, logging, sys
logging.basicConfig(level=logging.WARNING)
from aqueue import App

async def main(url, shape):
    app = App("q", broker=url)  # no backend=: results over rpc://

    @app.task(name="rpc.add")
    async def add(x: int, y: int) -> int:
        return x + y

    handle = await add.delay(2, 2)
    if shape == "wait":  # a worker in the test process runs it; the result comes back
        print(await handle.wait(timeout=20))

url, shape, loop = sys.argv[1:]
if loop == "uvloop":
    import uvloop
    uvloop.run(main(url, shape))
else:
    asyncio.run(main(url, shape))
"""


@pytest.mark.slow
async def test_a_client_that_never_closes_exits_quietly(url: str) -> None:
    """Defect 9: a script whose ``main`` sends a task (and maybe waits for its result) and
    returns without ``await app.close()`` must exit without a warning, an error or "Task
    was destroyed but it is pending" on stderr."""
    worker_app = App("q", broker=url)
    _register(worker_app)

    async def run(shape: str, loop: str) -> tuple[str, int | None, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            UNCLOSED,
            url,
            shape,
            loop,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return f"{shape}/{loop}", proc.returncode, out.decode(), err.decode()

    async with worker_app, worker_app.worker(concurrency=4):
        runs = await asyncio.gather(
            *(run(shape, loop) for shape in ("send", "wait") for loop in ("asyncio", "uvloop"))
        )
    for name, code, out, err in runs:
        assert (code, err) == (0, ""), name
        assert out.strip() == ("4" if name.startswith("wait") else ""), name


def test_an_unclosed_app_closes_its_connections_when_the_loop_ends(url: str) -> None:
    """The loop's end cancels aiormq's reader and writer, which cuts the connections; the
    broker and the backend then close them properly (aio-pika's ``__del__`` would otherwise
    schedule a close task on a loop about to stop)."""
    app = App("q", broker=url)
    _register(app)

    async def main() -> list[Any]:
        await app.tasks["rpc.add"].delay(1, 1)
        backend = app.backend
        assert isinstance(backend, RPCBackend)
        return [app.broker.channels.link.conn, backend.link.conn]  # type: ignore[attr-defined]

    connections = asyncio.run(main())
    assert all(c is not None and c.is_closed for c in connections)
