"""`aqueue events`: in-process through typer's runner (memory://), and as a real process
watching a real `aqueue worker -E` process print a chain's lifecycle live (docs/fleet.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aqueue import App
from aqueue.cli import cli
from aqueue.core.protocols import KeepsTopics

from ..conftest import (
    RABBIT_HOST,
    RABBIT_PORT,
    REDIS_HOST,
    REDIS_PORT,
    delete_redis_prefix,
    rabbit_url,
    require_service,
)
from ..worker import cli_tasks

SPEC = "tests.cli_project:make_app"
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def memory_env(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"memory://ev{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("AQT_CLI_BROKER", url)
    monkeypatch.setenv("AQUEUE_TASK_SEND_SENT_EVENT", "1")
    monkeypatch.delenv("AQUEUE_APP", raising=False)
    return url


def run_chain(url: str) -> list[str]:
    """Run a two-step chain with an events-sending worker; the step ids, in order."""
    from ..cli_project import make_app

    app = make_app()

    async def main() -> list[str]:
        async with app, app.worker(task_events=True):
            add = app.tasks["cliproj.add"]
            handle = await (add.s(1, 2) | add.s(3)).apply_async()
            assert await handle.get(timeout=15) == 6
            assert handle.parent is not None
            return [handle.parent.id, handle.id]

    return asyncio.run(main())


def test_json_lines_of_a_chain_caught_up_with_since(memory_env: str) -> None:
    steps = run_chain(memory_env)
    result = runner.invoke(
        cli, ["events", SPEC, "--json", "--since", "60", "--type", "task-*", "--count", "8"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 8
    for step in steps:
        assert [e["type"] for e in lines if e["uuid"] == step] == [
            "task-sent",
            "task-received",
            "task-started",
            "task-succeeded",
        ]
    second_sent = next(e for e in lines if e["uuid"] == steps[1])
    assert second_sent["parent_id"] == steps[0] and second_sent["root_id"] == steps[0]
    assert {"timestamp", "hostname", "pid", "clock", "utcoffset"} <= second_sent.keys()
    assert "watching memory://" in result.stderr  # the ready line goes to stderr


def test_text_lines_filters_and_timeout(memory_env: str) -> None:
    steps = run_chain(memory_env)
    result = runner.invoke(
        cli,
        [
            "events",
            "-A",
            SPEC,
            "--since",
            "60",
            "-t",
            "task-failed,task-succeeded",
            "--timeout",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2, lines  # the two successes; nothing more came within the timeout
    for line, step in zip(lines, steps, strict=True):
        assert " task-succeeded " in line and f"uuid={step}" in line and "runtime=" in line
    # without --since: only what comes next (nothing), until the timeout
    t0 = time.monotonic()
    quiet = runner.invoke(cli, ["events", SPEC, "--timeout", "0.5"])
    assert quiet.exit_code == 0 and quiet.stdout == ""
    assert time.monotonic() - t0 < 10


def test_without_an_app_it_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQT_CLI_BROKER", "memory://x")
    result = runner.invoke(cli, ["events", "--count", "1"])
    assert result.exit_code == 2 and "give the app" in result.output


# -- a real worker, a real `aqueue events` -----------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        "sqlite",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def proc_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    prefix = f"aqt-{uuid.uuid4().hex[:12]}"
    redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
    backend: dict[str, str] = {}
    if request.param == "redis":
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        url = redis_url
    elif request.param == "rabbitmq":
        require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        url = rabbit_url(prefix)
        backend = {"AQUEUE_RESULT_BACKEND": redis_url}  # a chain needs a shared store
        request.getfixturevalue("_rabbit_prefixes").append(prefix)  # deleted at the end
    else:
        url = f"sqlite:///{tmp_path / 'events.db'}"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AQUEUE_")}
    yield {**environ, "AQUEUE_BROKER_URL": url, "PYTHONPATH": str(ROOT), **backend}
    if request.param in ("redis", "rabbitmq"):
        delete_redis_prefix(prefix)


def aqueue(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aqueue.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    """Stop a process we started (by its pid) and collect its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    stuck = ""
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        # say why it did not stop: its signal dispositions (ignored / blocked / caught)
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            stuck = "did not stop: " + " ".join(s for s in status if s.startswith("Sig"))
        proc.kill()
        out, err = proc.communicate(timeout=10)
    said = err.decode(errors="replace") + (f"\n{stuck}" if stuck else "")
    return proc.returncode, out.decode(errors="replace"), said


@pytest.mark.slow
async def test_aqueue_events_shows_a_chains_lifecycle_live(proc_env: dict[str, str]) -> None:
    app: App = cli_tasks.app
    app.conf.update(
        broker_url=proc_env["AQUEUE_BROKER_URL"],
        result_backend=proc_env.get("AQUEUE_RESULT_BACKEND"),
        task_send_sent_event=True,
    )
    async with app:
        if not isinstance(app.broker, KeepsTopics):
            pytest.skip(f"{type(app.broker).__name__} has no topics yet: it carries no events")
    # the worker sends the later steps: it tells their task-sent when its app says so too
    worker = aqueue(
        {**proc_env, "AQUEUE_TASK_SEND_SENT_EVENT": "1"},
        "worker",
        "tests.worker.cli_tasks:app",
        "-E",
        "-c",
        "4",
    )
    watcher = aqueue(
        proc_env,
        "events",
        "-A",
        "tests.worker.cli_tasks:app",
        "--json",
        "--type",
        "task-*",
        "--count",
        "12",
        "--timeout",
        "60",
    )
    try:
        assert watcher.stderr is not None
        # live: nothing is sent before `aqueue events` says it watches (no --since)
        ready = await asyncio.wait_for(asyncio.to_thread(watcher.stderr.readline), 60)
        assert b"aqueue events: watching" in ready, ready
        async with app:
            add = cli_tasks.add
            handle = await (add.s(1, 2) | add.s(3) | add.s(4)).apply_async()
            assert await handle.get(timeout=30) == 10
            ids = [handle.parent.parent.id, handle.parent.id, handle.id]  # type: ignore[union-attr]
        out, _ = await asyncio.to_thread(watcher.communicate, timeout=60)
        assert watcher.returncode == 0
    finally:
        app.conf.update(task_send_sent_event=False, result_backend=None)
        stop(watcher, signal.SIGINT)
        status, _, werr = stop(worker)
    assert status == 0, werr
    events: list[dict[str, Any]] = [json.loads(line) for line in out.decode().splitlines()]
    assert len(events) == 12
    for step in ids:  # in the order they happened (publishers differ: see test_events.py)
        mine = sorted((e for e in events if e["uuid"] == step), key=lambda e: e["timestamp"])
        assert [e["type"] for e in mine] == [
            "task-sent",
            "task-received",
            "task-started",
            "task-succeeded",
        ]
    received = sorted(
        (e for e in events if e["type"] == "task-received"), key=lambda e: e["timestamp"]
    )
    assert {e["hostname"] for e in received} == {e["hostname"] for e in received[:1]}
    assert received[0]["hostname"].startswith("aqueue@") and received[0]["pid"] == worker.pid
    assert [e.get("parent_id") for e in received] == [None, ids[0], ids[1]]  # None: left out
    assert {e["root_id"] for e in received} == {ids[0]}


@pytest.mark.slow
async def test_ctrl_c_exits_quietly(proc_env: dict[str, str]) -> None:
    watcher = aqueue(proc_env, "events", "-A", "tests.worker.cli_tasks:app")
    try:
        assert watcher.stderr is not None
        ready = await asyncio.wait_for(asyncio.to_thread(watcher.stderr.readline), 60)
    finally:
        status, out, err = stop(watcher, signal.SIGINT)
    if b"has no topics" in ready:
        pytest.skip(ready.decode().strip())
    assert status == 0 and out == "" and "Traceback" not in err, err
