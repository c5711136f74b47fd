"""The `aqueue` commands other than the worker, run through typer's CliRunner against real
brokers (docs/cli.md): call, result, list, report, purge, status; the app given every way;
--json; exit statuses."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aqueue import App, chord
from aqueue.cli import cli

from .cli_project import make_app
from .conftest import delete_redis_prefix, make_url, prefix_of

SPEC = "tests.cli_project:make_app"
runner = CliRunner()


@pytest.fixture
def memory_env(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"memory://cli{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("AQT_CLI_BROKER", url)
    monkeypatch.delenv("AQUEUE_APP", raising=False)
    return url


@pytest.fixture
def redis_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = make_url("redis", tmp_path)
    monkeypatch.setenv("AQT_CLI_BROKER", url)
    monkeypatch.delenv("AQUEUE_APP", raising=False)
    yield url
    delete_redis_prefix(prefix_of(url))


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(cli, list(args), input=input, env=env)


def ok(*args: str, input: str | None = None) -> str:
    result = invoke(*args, input=input)
    assert result.exit_code == 0, result.output
    return str(result.output)


def run_worker_until(app: App, ids: list[str], timeout: float = 30) -> None:
    """Run an embedded worker until every task in ``ids`` reached a final state."""

    async def main() -> None:
        async with app, app.worker(queues=["celery", "hi"]):
            for task_id in ids:
                handle = app.AsyncResult(task_id)
                async with asyncio.timeout(timeout):
                    while not await handle.ready():
                        await asyncio.sleep(0.02)

    asyncio.run(main())


# -- the app, every way ------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        ["list", "tasks", SPEC],
        ["list", "tasks", "-A", SPEC],
        ["list", "tasks", "--app", SPEC],
        ["-A", SPEC, "list", "tasks"],
        ["list", "tasks", "env"],
    ],
    ids=["positional", "dash-a", "long", "celery-form", "AQUEUE_APP"],
)
def test_the_app_is_given_every_way(memory_env: str, form: list[str]) -> None:
    env = None
    if form[-1] == "env":
        form, env = form[:-1], {"AQUEUE_APP": SPEC}
    result = invoke(*form, env=env)
    assert result.exit_code == 0, result.output
    assert "cliproj.add" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["purge", "-f"],
        ["list", "queues"],
        ["list", "tasks"],
        ["call", "cliproj.add"],
        ["result", "some-id"],
    ],
)
def test_without_an_app_every_command_says_how_to_give_it(
    memory_env: str, command: list[str]
) -> None:
    result = invoke(*command)
    assert result.exit_code == 2, result.output
    assert "give the app" in result.output and "-A proj" in result.output


@pytest.mark.parametrize(
    "form",
    [
        lambda task_id: ["result", SPEC, task_id],
        lambda task_id: ["result", task_id, "-A", SPEC],
        lambda task_id: ["-A", SPEC, "result", task_id],
    ],
    ids=["positional", "dash-a", "celery-form"],
)
def test_result_takes_the_app_positional_or_dash_a(memory_env: str, form: Any) -> None:
    out = ok(*form("no-such-task"))
    assert "no-such-task PENDING (no record" in out


# -- call and result ------------------------------------------------------------------------


def test_call_prints_the_id_and_result_reads_it(redis_env: str) -> None:
    task_id = ok("call", SPEC, "cliproj.add", "--args", "[2, 3]").strip()
    failed_id = json.loads(
        ok("-A", SPEC, "call", "cliproj.fail", "--kwargs", '{"key": "k"}', "--json")
    )["id"]
    uuid.UUID(task_id)
    run_worker_until(make_app(), [task_id, failed_id])

    assert ok("result", SPEC, task_id).strip() == f"{task_id} SUCCESS cliproj.add attempt=1 5"
    found = json.loads(ok("result", task_id, "-A", SPEC, "--json"))
    assert found["state"] == "SUCCESS" and found["result"] == 5 and found["attempt"] == 1

    text = ok("result", SPEC, failed_id)
    assert text.strip() == f"{failed_id} FAILURE cliproj.fail attempt=1 KeyError: 'k'"
    with_tb = ok("result", SPEC, failed_id, "--traceback")
    assert "Traceback (most recent call last)" in with_tb and "raise KeyError(key)" in with_tb
    error = json.loads(ok("result", SPEC, failed_id, "--json"))["error"]
    assert error["type"] == "KeyError" and "raise KeyError(key)" in error["traceback"]


def test_call_options_reach_the_message(redis_env: str) -> None:
    app = make_app()
    later = ok("call", SPEC, "cliproj.add", "--args", "[1, 1]", "--countdown", "3600").strip()
    elsewhere = ok("call", SPEC, "cliproj.hi", "--queue", "elsewhere").strip()

    async def check() -> None:
        async with app:
            # delayed an hour: on the broker, not claimable now
            got = await app.broker.claim(
                ["celery"], limit=10, lease_seconds=5, owner="t", timeout=0.2
            )
            assert got == []
            assert await app.broker.size("celery") == 1
            [d] = await app.broker.claim(
                ["elsewhere"], limit=10, lease_seconds=5, owner="t", timeout=2
            )
            assert d.id == elsewhere
            await d.ack()
            await app.broker.purge("celery")

    asyncio.run(check())
    assert later


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--args", "[1,"], "--args is not valid JSON"),
        (["--args", '{"x": 1}'], "--args must be a JSON list"),
        (["--kwargs", "[1]"], "--kwargs must be a JSON object"),
        (["--eta", "tomorrow"], "--eta 'tomorrow' is not an ISO 8601 time"),
        (["--countdown", "1", "--eta", "2030-01-01T00:00:00+00:00"], "countdown or eta"),
    ],
)
def test_call_refuses_bad_input_in_one_line(memory_env: str, args: list[str], needle: str) -> None:
    result = invoke("call", SPEC, "cliproj.add", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output


def test_too_many_positionals_is_a_usage_error(memory_env: str) -> None:
    result = invoke("result", SPEC, "a", "b")
    assert result.exit_code == 2
    assert "expected [APP] TASK_ID, got 3 arguments" in result.output


# -- list, report ------------------------------------------------------------------------


def test_list_queues_and_tasks(memory_env: str) -> None:
    assert ok("list", "queues", SPEC).splitlines() == [
        "celery (default): 3 task(s)",
        "hi: 1 task(s)",
    ]
    queues = json.loads(ok("list", "queues", SPEC, "--json"))
    assert queues[1] == {"queue": "hi", "default": False, "tasks": ["cliproj.hi"]}
    # task_queues and static task_routes name queues too
    os.environ["AQT_CLI_ROUTES"] = "1"
    try:
        assert [q["queue"] for q in json.loads(ok("list", "queues", SPEC, "--json"))] == [
            "celery",
            "declared",
            "hi",
            "routed",
        ]
    finally:
        del os.environ["AQT_CLI_ROUTES"]
    text = ok("list", "tasks", SPEC)
    assert "cliproj.hi  [def (thread), queue hi] time_limit=5.0" in text
    assert "aqueue.chord_deadline" not in text
    assert "aqueue.chord_deadline" in ok("list", "tasks", SPEC, "--all")
    tasks = json.loads(ok("list", "tasks", SPEC, "--json"))
    assert [t["name"] for t in tasks] == [
        "cliproj.add",
        "cliproj.fail",
        "cliproj.hi",
        "cliproj.total",
    ]
    assert tasks[0]["kind"] == "async" and tasks[0]["queue"] == "celery"


def test_report_redacts_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQT_CLI_BROKER", "redis://user:hunter2@127.0.0.1:6379/0")
    monkeypatch.setenv("AQT_CLI_BACKEND", "redis://user:hunter2@127.0.0.1:6379/1")
    text = ok("report", SPEC)
    assert "aqueue:" in text and "python:" in text and "msgspec:" in text
    assert "broker: redis://user:***@127.0.0.1:6379/0" in text
    assert "cliproj.add" in text and "task_default_queue = 'celery'" in text
    data = json.loads(ok("-A", SPEC, "report", "--json"))
    assert data["app"]["settings"]["result_backend"] == "redis://user:***@127.0.0.1:6379/1"
    assert data["versions"]["python"]
    assert "hunter2" not in text + json.dumps(data)
    # without an app: versions only
    assert "app:" not in ok("report")


# -- purge, status -------------------------------------------------------------------------


def test_purge_asks_and_deletes_waiting_messages(redis_env: str) -> None:
    for i in range(3):
        ok("call", SPEC, "cliproj.add", "--args", f"[{i}, 1]")
    ok("call", SPEC, "cliproj.hi")
    aborted = invoke("purge", SPEC, "-Q", "celery", input="n\n")
    assert aborted.exit_code == 1 and "aborted: nothing purged" in aborted.output
    assert "Purge celery on redis://" in aborted.output
    out = ok("purge", SPEC, "-Q", "celery", input="y\n")
    assert "purged 3 message(s) from celery" in out
    # default: every queue the app knows; -X leaves one alone
    assert json.loads(ok("purge", SPEC, "-f", "-X", "hi", "--json")) == {
        "purged": {"celery": 0},
        "total": 0,
    }
    assert json.loads(ok("purge", "-A", SPEC, "-f", "--json"))["purged"] == {"celery": 0, "hi": 1}


@pytest.mark.parametrize(
    "kind",
    [
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_status_counts_chord_deadline_timers_apart(
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    url = make_url(kind, tmp_path)
    backend = None
    if kind == "rabbitmq":  # rpc:// has no chords: a redis result store beside it
        request.getfixturevalue("_rabbit_prefixes").append(prefix_of(url))
        backend = make_url("redis", tmp_path)
        monkeypatch.setenv("AQT_CLI_BACKEND", backend)
    monkeypatch.setenv("AQT_CLI_BROKER", url)
    app = make_app()

    async def send() -> None:
        async with app:
            add, total = app.tasks["cliproj.add"], app.tasks["cliproj.total"]
            await chord([add.s(1, 1), add.s(2, 2)], total.s()).delay()
            await add.delay(5, 5)

    try:
        asyncio.run(send())
        found = json.loads(ok("status", SPEC, "--json"))
        text = ok("status", "-A", SPEC)
    finally:
        for prefixed in (url, backend):
            if prefixed and prefixed.startswith("redis"):
                delete_redis_prefix(prefix_of(prefixed))
    default = found["queues"]["celery"]
    if kind == "rabbitmq":  # AMQP cannot look at ids without consuming: counted in
        assert default == {"messages": 4, "timers": None}
        assert "queue celery: 4 message(s); chord deadline timers included" in text
    else:
        assert default == {"messages": 3, "timers": 1}  # two members and one call
        assert "queue celery: 3 message(s) (+ 1 chord deadline timer(s))" in text
    assert found["queues"]["hi"] == {"messages": 0, "timers": 0 if kind != "rabbitmq" else None}
    assert "***" in found["broker"] or "@" not in found["broker"]


@pytest.mark.redis
def test_status_lists_workers_and_marks_missing_ones(redis_env: str) -> None:
    from aqueue.core.presence import new_worker_id, worker_info
    from aqueue.core.protocols import KeepsWorkers

    app = make_app()
    live, gone = new_worker_id("live@h"), new_worker_id("gone@h")

    async def register() -> None:
        async with app:
            assert isinstance(app.broker, KeepsWorkers)
            registry = app.broker.worker_registry
            # gone beat long enough ago to be missing: lost_after 0 makes any entry lapsed
            await asyncio.to_thread(registry.beat, worker_info(gone, "gone@h", ["hi"], 2), [], 60)
            await asyncio.to_thread(registry.reap, 0.0)
            await asyncio.to_thread(
                registry.beat, worker_info(live, "live@h", ["celery"], 4), [], 60
            )

    asyncio.run(register())
    found = json.loads(ok("status", SPEC, "--json"))
    text = ok("status", SPEC)
    by_id = {w["id"]: w for w in found["workers"]}
    assert by_id[live]["missing"] is False and by_id[live]["concurrency"] == 4
    assert by_id[gone]["missing"] is True and by_id[gone]["queues"] == ["hi"]
    assert [w["id"] for w in found["workers"]] == [live, gone]  # live ones first
    assert f"worker live@h id={live}" in text
    assert f"worker MISSING gone@h id={gone}" in text


@pytest.mark.rabbitmq
def test_status_says_when_the_broker_keeps_no_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = make_url("rabbitmq", tmp_path)
    request.getfixturevalue("_rabbit_prefixes").append(prefix_of(url))
    monkeypatch.setenv("AQT_CLI_BROKER", url)
    assert json.loads(ok("status", SPEC, "--json"))["workers"] is None
    assert "workers: not tracked on this broker" in ok("status", SPEC)


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_dlq_list_show_replay_purge(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_url(kind, tmp_path)
    monkeypatch.setenv("AQT_CLI_BROKER", url)
    monkeypatch.delenv("AQUEUE_APP", raising=False)
    app = make_app()

    async def send() -> str:
        async with app:
            return (await app.send_task("cliproj.nope", args=(1,))).id

    try:
        task_id = asyncio.run(send())
        run_worker_until(app, [task_id])  # unknown: dead-lettered
        [row] = json.loads(ok("dlq", "list", SPEC, "--json"))
        assert (row["id"], row["reason"], row["task"], row["replayed"]) == (
            task_id,
            "unknown_task",
            "cliproj.nope",
            0,
        )
        assert f"{task_id} queue=celery reason=unknown_task task=cliproj.nope" in ok(
            "dlq", "list", SPEC
        )
        shown = json.loads(ok("dlq", "show", task_id, SPEC, "--json"))
        assert shown["id"] == task_id and shown["body_encoding"] in ("text", "hex")
        assert shown["size"] == shown["kept"] > 0
        assert "reason: unknown_task" in ok("dlq", "show", task_id, SPEC)

        assert json.loads(ok("dlq", "replay", task_id, SPEC, "--json")) == {
            "replayed": 1,
            "errors": [],
        }
        assert json.loads(ok("dlq", "list", SPEC, "--json")) == []
        run_worker_until(app, [task_id])  # still unknown: dead-lettered again, marked
        [row] = json.loads(ok("dlq", "list", SPEC, "--json"))
        assert row["replayed"] == 1
        assert "replayed 1 dead letter(s)" in ok("dlq", "replay", "--all", "-A", SPEC)
        run_worker_until(app, [task_id])
        assert json.loads(ok("dlq", "list", SPEC, "--json"))[0]["replayed"] == 2

        missing = invoke("dlq", "show", "nope", SPEC)
        assert missing.exit_code == 1 and "no dead letter with id 'nope'" in missing.output
        both = invoke("dlq", "replay", task_id, "--all", SPEC)
        assert both.exit_code == 2 and "ID or --all" in both.output
        assert json.loads(ok("dlq", "purge", SPEC, "-f", "--json")) == {"purged": 1}
        assert "no dead letters" in ok("dlq", "list", SPEC)
    finally:
        if kind == "redis":
            delete_redis_prefix(prefix_of(url))


class WorkerThread:
    """An embedded worker on its own event loop in a thread, beside CliRunner's loop (a
    ``memory://`` store is shared by every loop of the process)."""

    def __init__(self, hostname: str) -> None:
        import threading

        self.app = make_app()
        self.hostname = hostname
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Any = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with self.app:
            self._worker = self.app.worker(hostname=self.hostname, queues=["celery", "hi"])
            async with self._worker:
                self.ready.set()
                await self._worker.wait_stopped()
        self.stopped.set()

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.stopped.is_set() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._worker.request_stop)
        self._thread.join(30)


def test_inspect_and_control_from_the_command_line(memory_env: str) -> None:
    with WorkerThread("cli@rc") as w:
        assert json.loads(ok("inspect", "ping", "-A", SPEC, "--json", "-t", "10")) == {
            "cli@rc": {"ok": "pong"}
        }
        text = ok("inspect", "ping", "-A", SPEC, "-t", "10")
        assert "->  cli@rc: OK" in text and "pong" in text and "1 node online." in text
        assert "cliproj.add" in ok("inspect", "registered", "-A", SPEC, "-t", "10")
        queues = json.loads(ok("inspect", "active_queues", "-A", SPEC, "--json", "-t", "10"))
        assert [q["name"] for q in queues["cli@rc"]] == ["celery", "hi"]
        replies = json.loads(
            ok("control", "rate_limit", "cliproj.add", "10/m", "-A", SPEC, "--json", "-t", "10")
        )
        assert replies == {"cli@rc": {"ok": "rate limit of cliproj.add set to 10/m"}}
        assert w.app.tasks["cliproj.add"].rate_limit == "10/m"
        refused = ok("control", "rate_limit", "no.such", "1/s", "-A", SPEC, "-t", "10")
        assert "->  cli@rc: ERROR" in refused and "unknown task 'no.such'" in refused
        for args, needle in (
            (["control", "rate_limit", "cliproj.add", "fast"], "bad rate_limit"),
            (["control", "pool_grow", "x"], "whole number"),
            (["control", "time_limit", "cliproj.add"], "usage: aqueue control time_limit"),
            (["control", "nonsense"], "unknown control command"),
            (["inspect", "nonsense"], "unknown inspect command"),
            (["control", "shutdown", "--terminate"], "--terminate goes with revoke"),
        ):
            result = invoke(*args, "-A", SPEC)
            assert result.exit_code == 2, result.output
            assert needle in result.output
        replies = json.loads(ok("control", "shutdown", "-A", SPEC, "--json", "-t", "10"))
        assert replies == {"cli@rc": {"ok": "shutting down"}}
        assert w.stopped.wait(30)
    result = invoke("inspect", "ping", "-A", SPEC, "-t", "0.3")
    assert result.exit_code == 1
    assert "no worker replied in time" in result.output
