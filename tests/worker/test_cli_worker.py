"""`aqueue worker` as a real process on Redis: what it logs, recycling, detaching, pid files,
time limits and exit statuses (docs/cli.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aqueue import App, TaskFailed

from ..conftest import REDIS_HOST, REDIS_PORT, delete_redis_prefix, require_service
from . import cli_tasks

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.worker.cli_tasks:app"
#: Redis's default user has no password, so any password is accepted: the URL carries one
#: to show that it never reaches the log
PASSWORD = "hunter2-do-not-log"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    prefix = f"aqt-{uuid.uuid4().hex[:12]}"
    url = f"redis://default:{PASSWORD}@{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AQUEUE_")}
    yield {**environ, "AQUEUE_BROKER_URL": url, "PYTHONPATH": str(ROOT)}
    delete_redis_prefix(prefix)


@pytest.fixture
async def app(env: dict[str, str]) -> AsyncIterator[App]:
    cli_tasks.app.conf.update(broker_url=env["AQUEUE_BROKER_URL"])
    async with cli_tasks.app:
        yield cli_tasks.app


def aqueue(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start `aqueue ARGS` (as the installed script runs it), output collected."""
    return subprocess.Popen(
        [sys.executable, "-m", "aqueue.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM) -> tuple[int, str]:
    """Stop a worker we started (by its pid; ``sig=None``: let it exit by itself) and return
    its exit status and output."""
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return proc.returncode, out.decode(errors="replace")


@contextlib.contextmanager
def killed_at_the_end(pidfile: Path) -> Iterator[None]:
    """SIGKILL the detached worker ``pidfile`` names if it still runs when the block ends,
    however it ends (a failed wait for its log must not leave a worker behind)."""
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(pidfile.read_text())
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def wait_for_text(path: Path, needle: str, timeout: float = 30.0) -> str:
    async with asyncio.timeout(timeout):
        while not path.exists() or needle not in path.read_text():
            await asyncio.sleep(0.05)
    return path.read_text()


async def test_level_info_logs_banner_each_task_and_the_traceback(
    app: App, env: dict[str, str]
) -> None:
    worker = aqueue(env, "worker", APP, "-c", "4", "-l", "info")
    try:
        ok = await cli_tasks.add.delay(31337, 27182)
        bad = await cli_tasks.boom.delay("argument-value-7y3")
        assert await ok.wait(timeout=30) == 58519
        with pytest.raises(TaskFailed):
            await bad.wait(timeout=30)
    finally:
        status, out = finish(worker)
    assert status == 0, out
    # the banner: app, broker without its password, queues, concurrency, the tasks
    assert "aqueue" in out and "[tasks]" in out
    assert f"redis://default:***@{REDIS_HOST}:{REDIS_PORT}/0" in out
    assert "queues:      celery" in out and "concurrency: 4 (asyncio)" in out
    assert "  . tests.worker.cli_tasks.add\n" in out and "aqueue.chord_deadline" not in out
    # one line per task received and succeeded, the failure with its traceback
    assert f"Task tests.worker.cli_tasks.add[{ok.id}] received" in out
    assert f"Task tests.worker.cli_tasks.add[{ok.id}] succeeded in " in out
    assert (
        f"ERROR/MainProcess] aqueue.worker: Task tests.worker.cli_tasks.boom[{bad.id}] "
        "raised unexpected: KeyError('missing-key')\nTraceback (most recent call last):"
    ) in out
    assert 'raise KeyError("missing-key")' in out
    # a line logged inside a task names the task (the task-aware formatter)
    assert f"tests.worker.cli_tasks.add[{ok.id}]: adding inside the task" in out
    # never a password, an argument or a result value
    for secret in (PASSWORD, "argument-value-7y3", "31337", "27182", "58519"):
        assert secret not in out
    assert "never retrieved" not in out


async def test_default_level_warning_hides_task_lines_but_not_failures(
    app: App, env: dict[str, str], tmp_path: Path
) -> None:
    logfile = tmp_path / "w.log"
    worker = aqueue(env, "worker", APP, "--logfile", str(logfile))  # no -l: Celery's WARNING
    try:
        ok = await cli_tasks.add.delay(1, 2)
        bad = await cli_tasks.boom.delay("x")
        assert await ok.wait(timeout=30) == 3
        with pytest.raises(TaskFailed):
            await bad.wait(timeout=30)
    finally:
        status, out = finish(worker)
    assert status == 0, out
    text = logfile.read_text()
    assert "[tasks]" in text and "log:         WARNING to " in text
    assert "received" not in text and "succeeded in" not in text
    assert f"[{bad.id}] raised unexpected: KeyError('missing-key')" in text
    assert "Traceback (most recent call last)" in text
    assert out == ""  # everything went to the log file


async def test_max_tasks_per_child_replaces_the_process_and_loses_nothing(
    app: App, env: dict[str, str]
) -> None:
    n, limit = 23, 4
    worker = aqueue(
        env,
        "worker",
        APP,
        "-l",
        "INFO",
        "-c",
        "3",
        "--prefetch",
        "10",
        "--max-tasks-per-child",
        str(limit),
    )
    try:
        handles = [await cli_tasks.whoami.delay(0.05) for _ in range(n)]
        results = [await h.wait(timeout=60) for h in handles]
        assert worker.poll() is None  # the same process all along
    finally:
        status, out = finish(worker)
    assert status == 0, out
    boots = Counter(r["boot"] for r in results)
    print(
        f"\nmax-tasks-per-child {limit}: {n}/{n} succeeded, {len(boots)} lives, tasks per life "
        f"{sorted(boots.values(), reverse=True)}, attempts {Counter(r['attempt'] for r in results)}"
    )
    assert {r["pid"] for r in results} == {worker.pid}  # re-executed in place: same pid
    assert max(boots.values()) <= limit
    assert len(boots) >= -(-n // limit)  # at least ceil(n / limit) lives
    assert {r["attempt"] for r in results} == {1}  # nothing ran twice, nothing was lost
    restarts = len(boots) - 1
    assert f"(restart {restarts})" in out
    assert out.count(f"max_tasks_per_child ({limit}) reached") >= restarts
    assert out.count("[tasks]") == 1  # the banner once, not per life


async def test_max_memory_per_child_hands_back_what_waits_and_restarts(
    app: App, env: dict[str, str]
) -> None:
    # the hog's 160 MiB pass the 120 MiB limit while four tasks wait behind it (c=1): they
    # are handed back, the hog finishes, the process replaces itself and runs them
    worker = aqueue(
        env,
        "worker",
        APP,
        "-l",
        "INFO",
        "-c",
        "1",
        "--prefetch",
        "5",
        "--max-memory-per-child",
        "122880",
    )
    try:
        hog = await cli_tasks.hog.delay(160, 2.5)
        rest = [await cli_tasks.whoami.delay(0.01) for _ in range(4)]
        first = await hog.wait(timeout=60)
        later = [await h.wait(timeout=60) for h in rest]
    finally:
        status, out = finish(worker)
    assert status == 0, out
    assert "max_memory_per_child 122880 KiB: stopping to be replaced" in out
    assert "handed back 4 prefetched task(s)" in out
    assert first["attempt"] == 1 and {r["attempt"] for r in later} == {1}
    assert {r["boot"] for r in later} == {later[0]["boot"]} != {first["boot"]}
    assert {first["pid"], *(r["pid"] for r in later)} == {worker.pid}
    assert "(restart 1)" in out


async def test_detach_writes_the_pid_file_and_logs_to_the_file(
    app: App, env: dict[str, str], tmp_path: Path
) -> None:
    pidfile, logfile = tmp_path / "w1.pid", tmp_path / "%n.log"
    command = ["worker", APP, "-l", "INFO", "-n", "w1@%h", "-D", "--pidfile", str(pidfile)]
    started = subprocess.run(
        [sys.executable, "-m", "aqueue.cli", *command, "--logfile", str(logfile)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout == started.stderr == ""
    log = tmp_path / "w1.log"  # %n: the node name's name part
    with killed_at_the_end(pidfile):
        text = await wait_for_text(log, "ready")
        pid = int(pidfile.read_text())
        assert _alive(pid)
        assert os.getsid(pid) != os.getsid(0)  # its own session: no terminal hangs it up
        assert "[tasks]" in text
        # a second worker on the same pid file refuses to start, exit status 3
        again = aqueue(env, "worker", APP, "--pidfile", str(pidfile))
        code, out = finish(again, sig=None)
        assert code == 3, out
        assert f"holds pid {pid}, which is running" in out
        assert await (await cli_tasks.add.delay(2, 2)).wait(timeout=30) == 4
        os.kill(pid, signal.SIGTERM)
        async with asyncio.timeout(30):
            while _alive(pid):
                await asyncio.sleep(0.05)
    assert not pidfile.exists()  # removed at exit
    assert "stopped: 1 succeeded" in log.read_text()


async def test_a_detached_worker_keeps_its_default_files_when_it_recycles(
    app: App, env: dict[str, str], tmp_path: Path
) -> None:
    # -D without --logfile / --pidfile: %n.log and %n.pid in the working directory, for
    # every life of the worker (it re-executes itself without detaching again)
    command = ["worker", APP, "-l", "INFO", "-D", "--max-tasks-per-child=2", "-n", "d1@%h"]
    started = subprocess.run(
        [sys.executable, "-m", "aqueue.cli", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    pidfile, log = tmp_path / "d1.pid", tmp_path / "d1.log"
    with killed_at_the_end(pidfile):
        await wait_for_text(log, "ready")
        pid = int(pidfile.read_text())
        results = [await (await cli_tasks.whoami.delay(0)).wait(timeout=30) for _ in range(5)]
        assert {r["pid"] for r in results} == {pid}
        assert len({r["boot"] for r in results}) == 3
        text = await wait_for_text(log, "(restart 2)")
        assert int(pidfile.read_text()) == pid
        os.kill(pid, signal.SIGTERM)
        async with asyncio.timeout(30):
            while _alive(pid):
                await asyncio.sleep(0.05)
    assert "(restart 1)" in text and not pidfile.exists()


async def test_a_stale_pid_file_is_replaced(app: App, env: dict[str, str], tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pidfile = tmp_path / "w.pid"
    pidfile.write_text(gone.stdout)
    worker = aqueue(env, "worker", APP, "--pidfile", str(pidfile), "--burst")
    status, out = finish(worker, sig=None)
    assert status == 0, out
    assert f"replacing stale pid file {pidfile} (pid {gone.stdout.strip()} is not running)" in out
    assert not pidfile.exists()


async def test_worker_wide_time_limits_and_queue_options(app: App, env: dict[str, str]) -> None:
    worker = aqueue(
        env,
        "worker",
        APP,
        "-c",
        "2",
        "--prefetch-multiplier",
        "4",
        "-l",
        "INFO",
        "-Q",
        "celery,other",
        "-X",
        "other",
        "--soft-time-limit",
        "0.3",
        "--time-limit",
        "1.5",
    )
    try:
        soft = await cli_tasks.sleeper.delay(10)
        hard = await cli_tasks.spin_def.delay(10)  # a def task past its hard limit
        assert await soft.wait(timeout=30) == "soft limit"
        with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
            await hard.wait(timeout=30)
    finally:
        status, out = finish(worker)
    assert status == 0, out
    assert "queues:      celery\n" in out  # -X removed "other"
    assert "prefetch 8" in out  # 4 per slot, 2 slots
    assert "soft time limit 0.3s" in out and "time limit 1.5s" in out
    assert "never retrieved" not in out


@pytest.mark.parametrize(
    ("args", "status", "needle"),
    [
        (["worker", APP, "--burst", "-l", "info"], 0, "burst: queues celery are drained"),
        (["-A", APP, "worker", "--burst", "-l", "INFO"], 0, "burst: queues celery are drained"),
        (["worker", "-A", APP, "--burst", "-l", "fatal"], 0, "[tasks]"),
        (["worker", APP, "-l", "loud"], 2, "bad log level 'loud'"),
        (["worker", APP, "--prefetch", "0"], 2, "--prefetch"),
        (["worker", APP, "--no-such-option"], 2, "No such option"),
        (["worker", APP, "-Q", "a", "-X", "a"], 2, "no queue left to consume"),
        (["worker", APP, "--prefetch", "4", "--prefetch-multiplier", "2"], 2, "not both"),
        (["worker", "tests.worker.cli_tasks:nope"], 2, "has no attribute 'nope'"),
        (["worker", APP, "--logfile", "/nonexistent-dir/w.log"], 2, "cannot open the log file"),
    ],
    ids=[
        "clean",
        "celery-form",
        "dash-a-fatal",
        "bad-level",
        "bad-prefetch",
        "unknown-option",
        "all-excluded",
        "both-prefetch",
        "bad-app",
        "bad-logfile",
    ],
)
def test_exit_status(env: dict[str, str], args: list[str], status: int, needle: str) -> None:
    code, out = finish(aqueue(env, *args), sig=None)
    assert code == status, out
    assert needle in out
    assert "Traceback" not in out


def test_unreachable_broker_is_exit_status_1(env: dict[str, str]) -> None:
    env = {**env, "AQUEUE_BROKER_URL": f"redis://default:{PASSWORD}@127.0.0.1:1/0"}
    code, out = finish(aqueue(env, "worker", APP), sig=None)
    assert code == 1, out
    assert "redis://default:***@127.0.0.1:1/0" in out or "127.0.0.1:1" in out
    assert PASSWORD not in out and "Traceback" not in out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
