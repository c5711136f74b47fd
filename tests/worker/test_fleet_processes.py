"""A fleet of real worker processes seen and steered from the command line: three workers on
Redis and on RabbitMQ, two on SQLite (issue 16's "done when"). ``aqueue inspect`` lists each
worker and the right tasks; ``aqueue control`` makes a running worker take a new queue,
revokes running tasks, and shuts the fleet down cleanly."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aqueue import App, states

from . import proc_tasks
from .test_process import ROOT, app, env, start_worker, stop, wait_for_file  # noqa: F401

pytestmark = pytest.mark.slow

HOST = socket.gethostname()


def aqueue(environ: dict[str, str], *args: str) -> Any:
    """Run ``aqueue -A tests.worker.proc_tasks:app ARGS --json``; its parsed output."""
    done = subprocess.run(
        [sys.executable, "-m", "aqueue.cli", "-A", "tests.worker.proc_tasks:app", *args, "--json"],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


async def fleet_size(the_app: App, n: int, timeout: float = 30.0) -> None:
    """Wait until the registry lists ``n`` live workers."""
    async with asyncio.timeout(timeout):
        while len([w for w in await the_app.control.workers() if not w.missing]) < n:
            await asyncio.sleep(0.05)


async def test_inspect_and_control_a_fleet_of_processes(
    app: App,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    n = 2 if env["AQUEUE_BROKER_URL"].startswith("sqlite") else 3
    names = [f"f{i}@{HOST}" for i in range(n)]
    procs = [start_worker(env, "-n", f"f{i}@%h", "-c", "1", "--prefetch", "2") for i in range(n)]
    try:
        await fleet_size(app, n)
        assert aqueue(env, "inspect", "ping", "-t", "20") == {
            name: {"ok": "pong"} for name in names
        }
        # 2n tasks that hold: each worker runs one and holds one more (prefetch 2)
        handles = [await proc_tasks.hold.delay(f"h{i}") for i in range(2 * n)]
        key_of = {h.id: f"h{i}" for i, h in enumerate(handles)}
        ids = set(key_of)
        later = await proc_tasks.add.apply_async((1, 2), countdown=600)
        inspect = app.control.inspect(timeout=20)
        async with asyncio.timeout(30):  # until every worker claimed its two, one running
            while True:
                seen = [await inspect.reserved(), await inspect.active()]
                if all(len(r) == n and all(len(v) == 1 for v in r.values()) for r in seen):
                    break
                await asyncio.sleep(0.1)
        active = aqueue(env, "inspect", "active", "-t", "20")
        reserved = aqueue(env, "inspect", "reserved", "-t", "20")
        assert set(active) == set(names) == set(reserved)
        running = {t["id"] for tasks in active.values() for t in tasks}
        waiting = {t["id"] for tasks in reserved.values() for t in tasks}
        assert running | waiting == ids and not running & waiting
        for name in names:
            [task] = active[name]
            assert task["name"] == "tests.worker.proc_tasks.hold"
            assert task["hostname"] == name
            # the task itself wrote its id when it started: this worker runs it
            started = await wait_for_file(tmp_path / f"started-{key_of[task['id']]}")
            assert started.strip() == task["id"]
        scheduled = aqueue(env, "inspect", "scheduled", "-t", "20")
        if not env["AQUEUE_BROKER_URL"].startswith("amqp"):
            assert {w: [s["request"]["id"] for s in v] for w, v in scheduled.items()} == {
                name: [later.id] for name in names
            }
        stats = aqueue(env, "inspect", "stats", "-t", "20")
        pids = {w.info.hostname: w.info.pid for w in await app.control.workers()}
        assert {w: s["pid"] for w, s in stats.items()} == pids
        assert all(s["pool"]["max-concurrency"] == 1 for s in stats.values())

        # a running worker takes a new queue
        extra = await proc_tasks.add.apply_async((20, 22), queue="fleet-extra")
        replies = aqueue(env, "control", "add_consumer", "fleet-extra", "-d", names[0], "-t", "20")
        assert "now consuming" in replies[names[0]]["ok"]
        assert list(replies) == [names[0]]
        queues = aqueue(env, "inspect", "active_queues", "-d", names[0], "-t", "20")
        assert [q["name"] for q in queues[names[0]]] == ["celery", "fleet-extra"]
        # its slot is busy: terminate what runs, and let what waited run to its end
        replies = aqueue(env, "control", "revoke", *sorted(running), "--terminate", "-t", "20")
        assert set(replies) == set(names)
        for h in handles:
            if h.id in running:
                assert await h.state() == states.REVOKED
            else:
                (tmp_path / f"release-{key_of[h.id]}").write_text("go")
                assert await h.wait(timeout=30) == key_of[h.id]
        assert await extra.wait(timeout=30) == 42

        # shutdown: every worker stops cleanly (what it held goes back to the queue)
        t0 = time.monotonic()
        replies = aqueue(env, "control", "shutdown", "-t", "20")
        assert replies == {name: {"ok": "shutting down"} for name in names}
        codes = [await asyncio.to_thread(p.wait, 30) for p in procs]
        print(f"\n{n} workers: shutdown to exit {time.monotonic() - t0:.2f}s")
        assert codes == [0] * n
        await fleet_size_zero(app)
    finally:
        outputs = [stop(p) for p in procs]
    assert all("Traceback" not in out for out in outputs), outputs


async def fleet_size_zero(the_app: App) -> None:
    """After a graceful stop the registry lists nobody (each left it)."""
    assert [w.info.hostname for w in await the_app.control.workers()] == []
