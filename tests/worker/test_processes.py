"""``aqueue worker --processes N`` as real processes on SQLite, Redis and RabbitMQ (issue 20):
the children are distinct workers in the registry and share a drain; a child killed with
``kill -9`` is replaced and its task runs again; a supervisor killed with ``kill -9`` takes
its children with it and a new one runs what was left; SIGTERM stops everything cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aqueue import App

from . import proc_tasks
from .test_fleet_processes import fleet_size
from .test_process import ROOT, app, env, wait_for_file  # noqa: F401

pytestmark = pytest.mark.slow

HOST = socket.gethostname()
APP = "tests.worker.proc_tasks:app"


def start(environ: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``aqueue worker tests.worker.proc_tasks:app -l info ARGS``, its output (N processes'
    worth: more than a pipe holds) appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aqueue.cli", "worker", APP, "-l", "info", *args],
            env=environ,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finish(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Kill ``proc`` if it still runs; the output logged so far."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)
    return log.read_text(errors="replace")


async def live_workers(the_app: App) -> dict[str, int]:
    """The registry's live workers: node name -> pid."""
    return {w.info.hostname: w.info.pid for w in await the_app.control.workers() if not w.missing}


async def exits(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


def running(pid: int) -> bool:
    """Whether ``pid`` runs (not our child: it may linger as a zombie until reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover (no /proc: ask the kernel)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


async def all_stopped(pids: list[int], timeout: float) -> None:
    """Return once none of ``pids`` runs (children stopping after their supervisor died)."""
    async with asyncio.timeout(timeout):
        while any(running(pid) for pid in pids):
            await asyncio.sleep(0.05)


async def test_children_are_distinct_workers_that_share_a_drain(
    app: App,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    supervisor = start(env, log, "--processes", "3", "-n", "p@%h", "-c", "10")
    try:
        await fleet_size(app, 3)
        pids = await live_workers(app)
        assert sorted(pids) == [f"p-{i}@{HOST}" for i in (1, 2, 3)]
        assert len(set(pids.values())) == 3 and supervisor.pid not in pids.values()
        handles = [await proc_tasks.add.delay(i, i) for i in range(300)]
        assert [await h.wait(timeout=30) for h in handles] == [2 * i for i in range(300)]
        stats = await app.control.inspect(timeout=20).stats()
        ran = {name: s["total"].get("tests.worker.proc_tasks.add", 0) for name, s in stats.items()}
        print(f"\n300 tasks over 3 processes: {sorted(ran.values())}")
        assert sum(ran.values()) == 300
        assert len([n for n in ran.values() if n]) >= 2  # spread, not one child doing all
        supervisor.send_signal(signal.SIGTERM)
        assert await exits(supervisor) == 0
        assert await live_workers(app) == {}  # each child left the registry
    finally:
        out = finish(supervisor, log)
    assert "Traceback" not in out, out
    assert out.count("[tasks]") == 1, out  # one banner for the three
    assert "processes:   3, each with that concurrency" in out


async def test_a_child_killed_mid_task_is_replaced_and_its_task_runs_again(
    app: App,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    supervisor = start(env, log, "--processes", "2", "-n", "k@%h", "-c", "1")
    try:
        await fleet_size(app, 2)
        before = await live_workers(app)
        h = await proc_tasks.slow_here.delay("k", 1.0)
        attempt, pid = (await wait_for_file(tmp_path / "started-k")).split()
        assert attempt == "1" and int(pid) in before.values()
        [killed] = [name for name, p in before.items() if p == int(pid)]
        os.kill(int(pid), signal.SIGKILL)
        assert await h.wait(timeout=30) == "k:2"
        starts = (tmp_path / "started-k").read_text().splitlines()
        assert [line.split()[0] for line in starts] == ["1", "2"]
        async with asyncio.timeout(20):  # the replacement registered under the same name
            while (await live_workers(app)).get(killed) in (None, int(pid)):
                await asyncio.sleep(0.05)
        supervisor.send_signal(signal.SIGTERM)
        assert await exits(supervisor) == 0
    finally:
        out = finish(supervisor, log)
    assert f"worker process {killed} (pid {pid}) was killed by SIGKILL: starting another" in out
    print(f"\nchild killed mid-task: lost 0/1, executions {len(starts)}")


async def test_supervisor_killed_its_children_stop_and_a_new_one_runs_the_rest(
    app: App,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    handles = [await proc_tasks.slow.delay(f"s{i}", 0.2) for i in range(30)]
    log = tmp_path / "worker.log"
    first = start(env, log, "--processes", "2", "-n", "a@%h", "-c", "2", "--shutdown-timeout", "5")
    try:
        await fleet_size(app, 2)
        children = list((await live_workers(app)).values())
        await wait_for_file(tmp_path / "started-s0")
        first.send_signal(signal.SIGKILL)
        await exits(first)
        await all_stopped(children, 10)  # each child stops once its supervisor is gone
    finally:
        out = finish(first, log)
    # each stopped gracefully (Linux sends it SIGTERM; elsewhere it notices in a second)
    assert f"worker a-1@{HOST} stopped:" in out and f"worker a-2@{HOST} stopped:" in out, out
    second = start(env, log, "--processes", "2", "-n", "b@%h", "-c", "2")
    try:
        results = [await h.wait(timeout=30) for h in handles]
        second.send_signal(signal.SIGTERM)
        assert await exits(second) == 0
    finally:
        out = finish(second, log)
    assert [r.split(":")[0] for r in results] == [f"s{i}" for i in range(30)]  # lost 0
    assert "Traceback" not in out, out
    again = [r for r in results if not r.endswith(":1")]
    print(f"\nsupervisor killed: lost 0/30, {len(again)} ran again")


async def test_four_processes_survive_kill_9_of_children_and_of_the_supervisor(
    app: App,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    # issue 20's done-when: `--processes 4`, two children and then the supervisor killed
    # with SIGKILL while they hold tasks (each holds until the test opens the gate); a new
    # supervisor runs everything once the gate is open: nothing lost
    n = 60
    handles = [await proc_tasks.hold.delay("gate") for _ in range(n)]
    log = tmp_path / "worker.log"
    first = start(env, log, "--processes", "4", "-n", "f@%h", "-c", "2", "--shutdown-timeout", "1")
    try:
        await fleet_size(app, 4)
        children = await live_workers(app)
        await wait_for_file(tmp_path / "started-gate")
        killed = sorted(children)[:2]
        for name in killed:
            os.kill(children[name], signal.SIGKILL)
        async with asyncio.timeout(30):  # both replaced, under their names, by new pids
            while True:
                now = await live_workers(app)
                if all(now.get(name) not in (None, children[name]) for name in killed):
                    break
                await asyncio.sleep(0.05)
        survivors = list((await live_workers(app)).values())
        first.send_signal(signal.SIGKILL)
        await exits(first)
        await all_stopped(survivors, 20)  # each child stops once its supervisor is gone
    finally:
        out = finish(first, log)
    for name in killed:
        assert f"worker process {name} (pid {children[name]}) was killed by SIGKILL" in out, out
    assert not [h for h in handles if await h.ready()]  # the gate was shut: all still to do
    (tmp_path / "release-gate").touch()
    second = start(env, log, "--processes", "4", "-n", "g@%h", "-c", "2")
    try:
        results = [await h.wait(timeout=60) for h in handles]
        second.send_signal(signal.SIGTERM)
        assert await exits(second) == 0
    finally:
        out = finish(second, log)
    assert results == ["gate"] * n  # lost 0
    assert "Traceback" not in out, out
    starts = (tmp_path / "started-gate").read_text().split()
    assert set(starts) == {h.id for h in handles}
    print(f"\n--processes 4, 2 children + supervisor killed: lost 0/{n}, {len(starts) - n} re-runs")


async def test_a_child_that_cannot_start_stops_the_supervisor_with_its_status(
    env: dict[str, str],  # noqa: F811
) -> None:
    if not env["AQUEUE_BROKER_URL"].startswith("sqlite"):
        pytest.skip("the broker plays no part")
    bad = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aqueue.cli",
            "worker",
            "tests.worker.no_such_module:app",
            "--processes",
            "2",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert await exits(bad) == 2
    out = bad.communicate(timeout=30)[0].decode(errors="replace")
    assert "cannot import 'tests.worker.no_such_module'" in out
    assert "cannot start (status 2)" in out


async def test_autoscale_grows_with_the_backlog_and_shrinks_when_idle(
    app: App,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    environ = {**env, "AQUEUE_AUTOSCALE_KEEPALIVE": "1"}
    args = ("--autoscale", "3,1", "-n", "s@%h", "-c", "1", "--prefetch", "1")
    supervisor = start(environ, log, *args)
    names = [f"s-{i}@{HOST}" for i in (1, 2, 3)]
    try:
        await fleet_size(app, 1)
        assert list(await live_workers(app)) == names[:1]
        # six tasks that hold their process: three wait, so processes start up to three
        handles = [await proc_tasks.hold.delay(f"h{i}") for i in range(6)]
        await fleet_size(app, 3)
        for i in range(6):
            (tmp_path / f"release-h{i}").write_text("go")
        assert [await h.wait(timeout=30) for h in handles] == [f"h{i}" for i in range(6)]
        async with asyncio.timeout(30):  # idle: one process stops per keepalive, down to one
            while len(await live_workers(app)) > 1:
                await asyncio.sleep(0.05)
        assert list(await live_workers(app)) == names[:1]
        supervisor.send_signal(signal.SIGTERM)
        assert await exits(supervisor) == 0
    finally:
        out = finish(supervisor, log)
    assert "Traceback" not in out, out
    assert "autoscale: " in out and "starting worker process 3" in out
    assert "(pid" in out and "stopped (autoscale)" in out
    assert "s-4@" not in out  # never more than MAX


async def test_children_that_keep_crashing_at_start_make_it_give_up(
    env: dict[str, str],  # noqa: F811
) -> None:
    if not env["AQUEUE_BROKER_URL"].startswith("sqlite"):
        pytest.skip("one broker that cannot be reached is enough")
    unreachable = {**env, "AQUEUE_BROKER_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run(
        [sys.executable, "-m", "aqueue.cli", "worker", APP, "--processes", "1"],
        env=unreachable,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    # restarted with a growing delay: 0.5, 1, 2, 4 s, then given up
    assert proc.stderr.count("exited with status 1: starting another in") == 4
    assert "exited with status 1 soon after starting, 5 times in a row: giving up" in proc.stderr


async def test_each_child_recycles_itself_with_the_same_pid(
    app: App,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    args = ("--processes", "2", "-n", "r@%h", "-c", "1", "--max-tasks-per-child", "3")
    supervisor = start(env, log, *args)
    try:
        await fleet_size(app, 2)
        pids = await live_workers(app)
        handles = [await proc_tasks.add.delay(i, 1) for i in range(12)]
        assert [await h.wait(timeout=30) for h in handles] == [i + 1 for i in range(12)]
        await fleet_size(app, 2)
        assert set((await live_workers(app)).values()) <= set(pids.values())
        supervisor.send_signal(signal.SIGTERM)
        assert await exits(supervisor) == 0
    finally:
        out = finish(supervisor, log)
    assert "replaced itself (restart 1)" in out
    assert "starting another" not in out  # the supervisor saw no child die
