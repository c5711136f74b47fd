"""No credential in any output channel, for every URL form aqueue accepts (issue 19).

Each test gives aqueue distinctive passwords (a random token, and one with ``@``, ``:``
and ``%`` in it, raw and URL-encoded), makes a channel speak, and searches what it said:

- logs at DEBUG from every logger (a handler on the root logger, tracebacks included),
- ``repr``/``str`` of the app, its settings, brokers, backends, and of every exception
  raised, with ``traceback.format_exception``,
- the CLI: ``report`` (text and ``--json``), ``status`` (and ``--json``), ``list queues``,
  ``inspect stats|conf --json``, ``events --json``, ``dlq list --json``, the worker's
  banner, and the one-line message of an error exit,
- the dashboard's pages and Flower's API, the events (``worker-online`` ...), the worker
  registry, ``inspect conf``/``stats`` replies, the Prometheus text, OpenTelemetry spans.

The live parts run against a private ``redis-server --requirepass`` (the shared Redis has
no password and is never reconfigured) and the shared RabbitMQ as guest/guest; failure
paths use wrong passwords and a closed loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from typer.testing import CliRunner

from aqueue import App, AsyncResult
from aqueue.cli import cli
from aqueue.core.errors import AqueueError
from aqueue.core.urls import make_backend, make_broker, redact

from ..conftest import RABBIT_HOST, RABBIT_PORT, require_service
from ..faults.redis_server import HOST, RedisServer, free_port

TOKEN = f"S3cr3t-{uuid.uuid4().hex[:10]}"
#: a password with the characters URLs treat specially
ODD = f"p@ss:w%rd-{uuid.uuid4().hex[:8]}"
#: what must never be printed: each password raw and in its URL-encoded spellings
NEEDLES = sorted(
    {form for pw in (TOKEN, ODD) for form in (pw, quote(pw, safe=""), quote_plus(pw))}
    | {":guest@", "guest:guest"}  # the shared RabbitMQ's real credentials
)
#: a loopback port nobody listens on: connecting fails at once
CLOSED = free_port()


def leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle in text]


def everything_said(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


class Sweep:
    """What the channels said, searched for the passwords at the end of the test."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []
        self.records: list[str] = []

    def add(self, channel: str, said: Any) -> str:
        text = said if isinstance(said, str) else repr(said)
        self.said.append((channel, text))
        return text

    def error(self, channel: str, exc: BaseException) -> str:
        return self.add(channel, everything_said(exc))

    def check(self) -> None:
        found = [(channel, leaks(text), text) for channel, text in self.said if leaks(text)]
        logged = "\n".join(self.records)
        if leaks(logged):
            found.append(("logs", leaks(logged), logged))
        assert not found, "\n\n".join(f"{c} shows {n}:\n{t[:3000]}" for c, n, t in found)


class _Recorder(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record))  # formats exc_info and stack_info too


@pytest.fixture
def sweep() -> Iterator[Sweep]:
    """Every log record at DEBUG, from every logger, recorded; checked after the test."""
    found = Sweep()
    handler = _Recorder(found.records)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield found
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    found.check()


# -- every URL form, without a server -------------------------------------------------------

ENCODED = quote(ODD, safe="")
BROKER_FORMS = [
    f"redis://user:{TOKEN}@127.0.0.1:{CLOSED}/0",
    f"redis://:{TOKEN}@127.0.0.1:{CLOSED}/0",
    f"redis://:{ENCODED}@127.0.0.1:{CLOSED}/0",
    f"redis://:{ODD}@127.0.0.1:{CLOSED}/0",  # unencoded: the last "@" ends the userinfo
    f"redis://127.0.0.1:{CLOSED}/0?password={TOKEN}",
    f"redis://127.0.0.1:{CLOSED}/0?password={ENCODED}",
    f"rediss://:{TOKEN}@127.0.0.1:{CLOSED}/0",
    f"rediss://127.0.0.1:{CLOSED}/0?ssl_password={TOKEN}&ssl_cert_reqs=none",
    f"unix:///nonexistent/redis.sock?password={TOKEN}",
    f"amqp://user:{TOKEN}@127.0.0.1:{CLOSED}/%2F",
    f"amqp://user:{ENCODED}@127.0.0.1:{CLOSED}/%2F",
    f"amqps://user:{TOKEN}@127.0.0.1:{CLOSED}/%2F",
    f"pyamqp://user:{TOKEN}@127.0.0.1:{CLOSED}//",
    # a bad port: the URL cannot be parsed, so nothing of it is shown
    f"redis://user:{TOKEN}@127.0.0.1:notaport/0",
    # Redis Sentinel: the master's password in the userinfo, the sentinels' in the query;
    # nobody listens on the sentinels' port, so connect fails naming each of them
    f"redis+sentinel://:{TOKEN}@127.0.0.1:{CLOSED},127.0.0.1:{CLOSED}/mymaster/0",
    f"redis+sentinel://user:{ENCODED}@127.0.0.1:{CLOSED}/mymaster/0?sentinel_password={TOKEN}",
    f"sentinel://:{TOKEN}@127.0.0.1:{CLOSED}/0;sentinel://:{TOKEN}@127.0.0.1:{CLOSED}/0"
    "?master_name=mymaster",
    # a bad sentinel port: refused, naming the port, never the password
    f"redis+sentinel://:{TOKEN}@127.0.0.1:{CLOSED},127.0.0.1:notaport/mymaster/0",
    # a Redis Cluster: several nodes, the password in the userinfo or the query
    f"redis+cluster://:{TOKEN}@127.0.0.1:{CLOSED},127.0.0.2:{CLOSED}/0",
    f"redis+cluster://user:{ENCODED}@127.0.0.1:{CLOSED},127.0.0.2:{CLOSED}/0",
    f"redis+cluster://:{ODD}@127.0.0.1:{CLOSED},127.0.0.2:{CLOSED}/0",
    f"redis+cluster://127.0.0.1:{CLOSED}/0?password={TOKEN}",
]
# signing_keys: message signing is not on this branch; its setting is added to the sweep
# when it lands.
OPTION_FORMS: list[tuple[str, dict[str, Any]]] = [
    (f"redis://127.0.0.1:{CLOSED}/0", {"password": TOKEN}),
    (f"rediss://127.0.0.1:{CLOSED}/0", {"password": ODD, "ssl_cert_reqs": "none"}),
    (f"redis+cluster://127.0.0.1:{CLOSED}/0", {"password": TOKEN}),
    (
        f"amqp://guest:guest@127.0.0.1:{CLOSED}/%2F",
        {"dedupe_url": f"redis://:{TOKEN}@127.0.0.1:{CLOSED}/0"},
    ),
    (
        f"amqp://guest:guest@127.0.0.1:{CLOSED}/%2F?dedupe_url="
        + quote(f"redis://:{ODD}@127.0.0.1:{CLOSED}/0", safe=""),
        {},
    ),
    # Celery's Sentinel spelling with broker_transport_options' keys
    (
        f"sentinel://127.0.0.1:{CLOSED};sentinel://127.0.0.1:{CLOSED}",
        {"master_name": "mymaster", "sentinel_kwargs": {"password": TOKEN}, "password": ODD},
    ),
]
BACKEND_FORMS = [
    (f"redis://:{TOKEN}@127.0.0.1:{CLOSED}/0", f"memory://b{uuid.uuid4().hex[:8]}"),
    (f"rpc://user:{TOKEN}@127.0.0.1:{CLOSED}/%2F", "memory://x"),
    ("rpc://", f"amqp://user:{ENCODED}@127.0.0.1:{CLOSED}/%2F"),
    (
        f"redis+sentinel://:{TOKEN}@127.0.0.1:{CLOSED}/mymaster/0?sentinel_password={ENCODED}",
        "memory://s",
    ),
]
#: connect quickly and give up at once
FAST = {"redis": "socket_connect_timeout=0.5&retries=0", "amqp": "connect_timeout=0.5"}


def _fast(url: str) -> str:
    extra = FAST["amqp" if "amq" in url.split("://")[0] else "redis"]
    return url + ("&" if "?" in url else "?") + extra


def _with_options(url: str, options: dict[str, Any]) -> App:
    return App("sweep", broker=url, backend=f"memory://r{uuid.uuid4().hex[:8]}", **options)


@pytest.mark.parametrize("url", BROKER_FORMS, ids=range(len(BROKER_FORMS)))
async def test_broker_url_forms(url: str, sweep: Sweep) -> None:
    await _sweep_app(sweep, url, {})


@pytest.mark.parametrize(("url", "options"), OPTION_FORMS, ids=range(len(OPTION_FORMS)))
async def test_broker_options_forms(url: str, options: dict[str, Any], sweep: Sweep) -> None:
    await _sweep_app(sweep, url, {"broker_options": options})


async def _sweep_app(sweep: Sweep, url: str, settings: dict[str, Any]) -> None:
    sweep.add("redact", redact(url))
    try:
        app = _with_options(_fast(url), settings)
    except Exception as exc:  # refused at once (e.g. an option this redis-py lacks)
        sweep.error("App()", exc)
        return
    shown = sweep.add("repr(app)", repr(app)) + sweep.add("str(app)", str(app))
    shown += sweep.add("repr(conf)", repr(app.conf)) + sweep.add("as_dict", app.conf.as_dict())
    assert "***" in shown or "<unparsable url>" in shown
    try:
        broker = make_broker(app.broker_url or "", app.conf.broker_options)
    except Exception as exc:
        sweep.error("make_broker", exc)
    else:
        sweep.add("repr(broker)", repr(broker)) + sweep.add("str(broker)", str(broker))
    with pytest.raises(AqueueError) as info:
        async with asyncio.timeout(20):
            async with app:
                await app.send_task("sweep.never", queue="celery")
    sweep.error("connect", info.value)


@pytest.mark.parametrize(("backend", "broker"), BACKEND_FORMS, ids=range(len(BACKEND_FORMS)))
async def test_backend_url_forms(backend: str, broker: str, sweep: Sweep) -> None:
    app = App("sweep", broker=_fast(broker), backend=_fast(backend))
    shown = sweep.add("repr(app)", repr(app)) + sweep.add("repr(conf)", repr(app.conf))
    assert "***" in shown
    made = make_backend(app.backend_url or "", app.broker_url or "")
    sweep.add("repr(backend)", repr(made)) + sweep.add("str(backend)", str(made))
    with pytest.raises(AqueueError) as info:
        async with asyncio.timeout(20):
            async with app:
                await (await app.send_task("sweep.never", queue="celery")).wait(timeout=5)
    sweep.error("connect", info.value)


runner = CliRunner()


def _cli(sweep: Sweep, *args: str, env: dict[str, str], code: int | None = 0) -> str:
    result = runner.invoke(cli, list(args), env=env)
    said = sweep.add(f"aqueue {' '.join(args)}", result.output)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        sweep.error(f"aqueue {' '.join(args)} raised", result.exception)
    if code is not None:
        assert result.exit_code == code, said
    return said


@pytest.mark.parametrize(
    "broker", [BROKER_FORMS[2], BROKER_FORMS[4], OPTION_FORMS[3][0]], ids=range(3)
)
def test_cli_report_and_error_exit(broker: str, sweep: Sweep) -> None:
    env = {"AQT_CLI_BROKER": _fast(broker), "AQUEUE_APP": "tests.cli_project:make_app"}
    report = _cli(sweep, "report", env=env) + _cli(sweep, "report", "--json", env=env)
    assert "***" in report
    json.loads(_cli(sweep, "report", "--json", env=env))
    # nothing listens: a one-line error naming the redacted broker
    said = _cli(sweep, "status", env=env, code=None)
    assert "***" in said or "could not" in said


# -- live: a private Redis that requires a password, the shared RabbitMQ ------------------


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-pw"), password=TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def redis_url(server: RedisServer, password: str = TOKEN, **query: str) -> str:
    tail = "&".join(
        f"{k}={v}" for k, v in {"prefix": f"sw-{uuid.uuid4().hex[:8]}", **query}.items()
    )
    return f"redis://:{quote(password, safe='')}@{HOST}:{server.port}/0?{tail}"


@contextlib.asynccontextmanager
async def live_app(url: str, backend: str | None = None) -> AsyncIterator[App]:
    app = App("sweep", broker=url, backend=backend, lease_seconds=5.0)

    @app.task(name="sweep.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="sweep.fail")
    async def fail() -> None:
        raise KeyError("no such thing")

    async with app:
        yield app


WORKER = "sweep@host"


async def send_through(app: App, sweep: Sweep, what: str, timeout: float) -> AsyncResult[Any]:
    """``sweep.add(1, 1)`` sent again until it is accepted (a server restarting or failing
    over refuses some), each refusal's text swept as ``what``."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await app.send_task("sweep.add", args=(1, 1))
            except AqueueError as exc:
                sweep.error(what, exc)
                await asyncio.sleep(0.05)


def _tracing() -> tuple[Any, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.mark.slow
async def test_a_worker_on_a_redis_that_requires_a_password(
    private_redis: RedisServer, sweep: Sweep
) -> None:
    from aqueue import TaskFailed
    from aqueue.contrib.otel import TracingMiddleware
    from aqueue.contrib.prometheus import WorkerMetrics, metrics_app
    from aqueue.web import dashboard_app

    provider, exporter = _tracing()
    async with live_app(redis_url(private_redis)) as app:
        app.add_middleware(TracingMiddleware(provider))
        metrics = WorkerMetrics(app)
        app.add_middleware(metrics)
        async with app.worker(task_events=True, hostname=WORKER, concurrency=2):
            sweep.add("repr(app) connected", repr(app))
            sweep.add("repr(broker)", repr(app.broker)) + sweep.add(
                "repr(backend)", repr(app.backend)
            )
            assert await (await app.send_task("sweep.add", args=(2, 3))).wait(timeout=15) == 5
            failing = await app.send_task("sweep.fail")
            with pytest.raises(TaskFailed) as failed:
                await failing.wait(timeout=15)
            sweep.error("TaskFailed", failed.value)
            # a reconnect: the private server restarts under the worker
            private_redis.restart()
            # the first publish on a dropped connection may be indeterminate
            again = await send_through(app, sweep, "publish during the restart", 30)
            assert await again.wait(timeout=30) == 2
            inspect = app.control.inspect(timeout=2.0)
            conf = sweep.add("inspect conf", await inspect.conf(with_defaults=True))
            assert "***" in conf
            sweep.add("inspect stats", await inspect.stats())
            sweep.add("workers (registry)", await app.control.workers())
            events: list[Any] = []
            async with asyncio.timeout(15):
                async with contextlib.aclosing(app.events(since=0)) as stream:
                    async for event in stream:
                        events.append(event)
                        if getattr(event, "type", "") == "task-failed":
                            break
            sweep.add("events", [vars(e) if hasattr(e, "__dict__") else e for e in events])
            web = dashboard_app(app, show_arguments=True, mounts={"/metrics": metrics_app(app)})
            board = web.state.dashboard
            transport = httpx.ASGITransport(app=web)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    for path in (
                        "/",
                        "/tasks",
                        f"/task/{failing.id}",
                        "/workers",
                        "/queues",
                        "/dead-letters",
                        "/schedules",
                        "/api/workers",
                        "/api/tasks",
                        "/api/task/types",
                        f"/api/task/info/{failing.id}",
                        "/api/queues/length",
                        "/metrics",
                    ):
                        response = await client.get(path)
                        sweep.add(f"GET {path} ({response.status_code})", response.text)
            finally:
                await board.close()
            from prometheus_client import generate_latest

            sweep.add("worker metrics", generate_latest(metrics.registry).decode())
    spans = exporter.get_finished_spans()
    assert spans
    sweep.add("spans", [(s.name, dict(s.attributes or {})) for s in spans])
    # a wrong password: refused, and neither password is shown
    wrong = App("sweep", broker=redis_url(private_redis, password=ODD, retries="0"))
    with pytest.raises(AqueueError) as info:
        async with wrong:
            pass
    sweep.error("wrong password", info.value)


@pytest.mark.slow
def test_the_cli_on_a_redis_that_requires_a_password(
    private_redis: RedisServer, sweep: Sweep
) -> None:
    url = redis_url(private_redis)
    env = {"AQT_CLI_BROKER": url, "AQUEUE_APP": "tests.cli_project:make_app"}
    _cli(sweep, "call", "cliproj.add", "--args", "[1, 2]", env=env)
    _cli(sweep, "call", "cliproj.fail", "--args", '["k"]', env=env)
    banner = _cli(sweep, "worker", "--burst", "-E", "-n", WORKER, env=env)
    assert "***" in banner
    for args in (
        ("status",),
        ("status", "--json"),
        ("list", "queues"),
        ("report",),
        ("report", "--json"),
        ("dlq", "list", "--json"),
        ("events", "--json", "--since", "0", "--count", "3", "--timeout", "5"),
    ):
        _cli(sweep, *args, env=env)
    _cli(sweep, "inspect", "conf", "--json", env=env, code=None)  # no worker left: exit 1
    wrong = {**env, "AQT_CLI_BROKER": redis_url(private_redis, password=ODD, retries="0")}
    said = _cli(sweep, "status", env=wrong, code=None)
    assert said.strip() and len(said.strip().splitlines()) <= 2, said


@pytest.mark.slow
@pytest.mark.rabbitmq
async def test_rabbitmq_with_a_redis_dedupe_store(
    private_redis: RedisServer, sweep: Sweep, tmp_path: Path
) -> None:
    from ..conftest import make_url

    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    url = make_url("rabbitmq", tmp_path)  # guest:guest, its queues deleted after the session
    dedupe = redis_url(private_redis)
    app = App("sweep", broker=url, broker_options={"dedupe_url": dedupe})

    @app.task(name="sweep.add")
    async def add(x: int, y: int) -> int:
        return x + y

    shown = sweep.add("repr(app)", repr(app)) + sweep.add("repr(conf)", repr(app.conf))
    assert "***" in shown
    async with app, app.worker(hostname=WORKER):
        sweep.add("repr(broker)", repr(app.broker)) + sweep.add("repr(backend)", repr(app.backend))
        assert await (await add.delay(2, 2)).wait(timeout=15) == 4
        sweep.add("inspect conf", await app.control.inspect(timeout=2.0).conf(with_defaults=True))
    for broker in (url.replace("guest:guest", f"guest:{quote(TOKEN)}"),):
        with pytest.raises(AqueueError) as info:
            async with App("sweep", broker=broker):
                pass
        sweep.error("wrong amqp password", info.value)
    bad_store = App(
        "sweep",
        broker=url,
        broker_options={"dedupe_url": redis_url(private_redis, password=ODD, retries="0")},
    )

    @bad_store.task(name="sweep.add")
    async def add2(x: int, y: int) -> int:
        return x + y

    with pytest.raises(AqueueError) as info:
        async with bad_store:
            await add2.options(task_id="same").delay(1, 1)
    sweep.error("wrong dedupe password", info.value)


# -- the signing keys (issue 19) ------------------------------------------------------------

SIGNING_SECRET = f"{TOKEN}-signing-key"
#: too short to be a key (refused): its error must not show it either
SHORT_SECRET = f"tiny{uuid.uuid4().hex[:6]}"


async def test_signing_keys_are_never_shown(sweep: Sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signing keys set in code and in AQUEUE_SIGNING_KEYS: the reprs, the settings dump,
    a signed task's run (logs at DEBUG), ``inspect conf`` and the error of a key too short
    name key ids only."""
    NEEDLES.extend((SIGNING_SECRET, SHORT_SECRET))
    try:
        app = App(
            "sweep",
            broker=f"memory://sign-{uuid.uuid4().hex[:8]}",
            signing_keys={"k2": SIGNING_SECRET, "k1": SIGNING_SECRET + "-old"},
        )

        @app.task(name="sweep.add")
        async def add(x: int, y: int) -> int:
            return x + y

        shown = sweep.add("repr(conf)", repr(app.conf)) + sweep.add("as_dict", app.conf.as_dict())
        assert "k2" in shown and "***" in shown
        async with app, app.worker(hostname=WORKER):
            assert await (await add.delay(2, 2)).wait(timeout=10) == 4
            replies = await app.control.inspect(timeout=5, limit=1).conf()
            sweep.add("inspect conf", replies)
        monkeypatch.setenv("AQUEUE_SIGNING_KEYS", f"k9:{SIGNING_SECRET}")
        sweep.add("repr(env conf)", repr(App("sweep", broker="memory://env").conf))
        monkeypatch.setenv("AQUEUE_SIGNING_KEYS", f"k9:{SHORT_SECRET}")
        with pytest.raises(AqueueError) as refused:
            App("sweep", broker="memory://env")
        sweep.error("a bad key list", refused.value)
    finally:
        sweep.check()
        NEEDLES.remove(SIGNING_SECRET)
        NEEDLES.remove(SHORT_SECRET)


@pytest.mark.slow
async def test_a_worker_through_a_sentinel_failover(tmp_path: Path, sweep: Sweep) -> None:
    """Behind Redis Sentinel, with a password for the master and another for the sentinels:
    a round trip, a crash of the master under the worker (every client reconnects through
    the sentinels, logging as it goes), and a round trip on the new master."""
    from ..faults.redis_sentinel import running_sentinels

    with running_sentinels(
        tmp_path / "sentinel", replicas=2, password=TOKEN, sentinel_password=ODD
    ) as setup:
        url = setup.url(prefix=f"sw-{uuid.uuid4().hex[:8]}", sentinel_password=ENCODED)
        async with live_app(url) as app, app.worker(hostname=WORKER, concurrency=2):
            sweep.add("repr(broker)", repr(app.broker)) + sweep.add(
                "repr(backend)", repr(app.backend)
            )
            assert await (await app.send_task("sweep.add", args=(2, 3))).wait(15) == 5
            await asyncio.to_thread(setup.crash_master)
            again = await send_through(app, sweep, "publish during the failover", 60)
            assert await again.wait(timeout=60) == 2
