"""What surrounds the worker process (aqueue/process.py): log levels, node-name formats in
file names, pid files, the banner."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aqueue import App
from aqueue.core.config import Settings
from aqueue.core.errors import ConfigurationError
from aqueue.process import (
    AlreadyRunning,
    CLIError,
    PidFile,
    banner,
    node_format,
    parse_level,
    use_formats,
)
from aqueue.supervisor import Autoscaler, Supervisor, child_hostname


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("debug", logging.DEBUG),
        ("INFO", logging.INFO),
        ("Warning", logging.WARNING),
        ("error", logging.ERROR),
        ("critical", logging.CRITICAL),
        ("FATAL", logging.CRITICAL),
    ],
)
def test_celery_log_levels_in_any_case(text: str, level: int) -> None:
    assert parse_level(text) == level


def test_a_bad_log_level_names_the_choices() -> None:
    with pytest.raises(CLIError, match=r"bad log level 'warn' .*debug, info, warning"):
        parse_level("warn")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%n.log", "w1.log"),
        ("/var/log/%h/%n%I.log", "/var/log/host.example.com/w1.log"),
        ("%d-%i-%p", "example.com-0-w1@host.example.com"),
        ("100%%-%n", "100%-w1"),
        ("%x%", "%x%"),
    ],
)
def test_node_format(template: str, expected: str) -> None:
    assert node_format(template, "w1@host.example.com") == expected


def test_node_format_of_a_supervised_process() -> None:
    # process 2 of `--processes`: %i its index, %I "-2" (the supervisor is index 0)
    assert node_format("/var/log/%h-%i.log", "w1-2@host", 2) == "/var/log/host-2.log"
    assert node_format("app%I.log", "w1-2@host", 2) == "app-2.log"
    assert node_format("%n.log", "w1-2@host", 2) == "w1-2.log"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("w1@%h", "w1-3@%h"),
        ("aqueue@%h", "aqueue-3@%h"),
        ("w%i@%h", "w3@%h"),
        ("%n%I@example", "%n-3@example"),
        ("solo", "solo-3"),
    ],
)
def test_child_hostname(template: str, expected: str) -> None:
    assert child_hostname(template, 3) == expected


def test_pid_file_is_written_refused_while_held_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    mine = PidFile(str(path))
    mine.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    mine.acquire()  # this process again (a worker re-executing itself): kept
    # another live process holds it: refused
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path.write_text(f"{sleeper.pid}\n")
        with pytest.raises(AlreadyRunning, match=f"holds pid {sleeper.pid}, which is running"):
            PidFile(str(path)).check()
        with pytest.raises(AlreadyRunning):
            PidFile(str(path)).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: the stale file is replaced
    PidFile(str(path)).acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    mine.release()
    assert not path.exists()
    mine.release()  # already gone: nothing to do


def test_release_leaves_another_process_s_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    path.write_text("1\n")
    PidFile(str(path)).release()
    assert path.read_text() == "1\n"


def test_banner_redacts_and_lists_the_tasks() -> None:
    app = App("proj", broker="redis://user:hunter2@redis.example:6379/0", backend="rpc://")
    app.conf.update(task_time_limit=30, worker_max_tasks_per_child=100)

    @app.task(name="proj.add")
    async def add(x: int, y: int) -> int:
        return x + y

    worker = app.worker(
        queues=["celery", "hi"], concurrency=8, hostname="w1@box", max_tasks_per_child=100
    )
    text = banner(worker, app_spec="proj", level=logging.INFO, logfile=None)
    assert "hunter2" not in text
    assert "broker:      redis://user:***@redis.example:6379/0" in text
    assert "results:     rpc://" in text
    assert "queues:      celery, hi" in text
    assert "concurrency: 8 (asyncio), prefetch 8" in text
    assert "limits:      time limit 30s; max 100 tasks per child" in text
    assert "worker w1@box (pid " in text
    assert text.endswith("[tasks]\n  . proj.add\n")
    # the built-in tasks at DEBUG only, as Celery lists its own
    debug = banner(worker, app_spec="proj", level=logging.DEBUG, logfile="w.log")
    assert "  . aqueue.chord_deadline" in debug and "log:         DEBUG to w.log" in debug


def test_a_bad_log_format_setting_is_one_line() -> None:
    conf = Settings()
    conf.update(worker_task_log_format="%(task_name)q: %(message)q")
    with pytest.raises(CLIError, match="setting worker_task_log_format is not a logging format"):
        use_formats(logging.NullHandler(), conf)


def test_each_worker_process_serves_metrics_on_its_own_port() -> None:
    # every child was given the same --metrics-port: the second failed to bind ("Address
    # already in use", exit status 2) and the supervisor stopped the whole fleet
    options: Any = {"hostname": None, "metrics_port": 9808}
    supervisor = Supervisor(options, 3)
    assert [supervisor.child_options(i)["metrics_port"] for i in (1, 2, 3)] == [9808, 9809, 9810]
    unset: Any = {"hostname": None, "metrics_port": None}
    assert Supervisor(unset, 2).child_options(2)["metrics_port"] is None
    with pytest.raises(ConfigurationError, match="need ports 65535-65536"):
        Supervisor({**options, "metrics_port": 65535}, 2)


class _Fleet:
    """What the autoscaler steers, counting its readings (one ``stopping`` look each)."""

    def __init__(self) -> None:
        self.active, self.readings = 1, 0
        self.read_often, self.grown = asyncio.Event(), asyncio.Event()

    @property
    def stopping(self) -> bool:
        self.readings += 1
        if self.readings >= 6:  # several readings
            self.read_often.set()
        return False

    def grow(self) -> None:
        self.active += 1
        self.grown.set()

    def shrink(self) -> None:
        raise AssertionError("nothing asked it to shrink")


async def test_autoscale_grows_for_ready_messages_not_for_running_ones() -> None:
    # it read the queues' sizes, which count messages in flight: one long task made the
    # fleet grow to MAX while nothing waited
    app = App("scale", broker=f"memory://scale-{os.getpid()}-{id(object())}")
    async with app:
        await app.send_task("t.long")
        running = await app.broker.claim(
            ["celery"], limit=1, lease_seconds=60, owner="w", timeout=1
        )
        assert len(running) == 1 and await app.broker.size("celery") == 1
        fleet = _Fleet()
        scaler = Autoscaler(app, ["celery"], maximum=3, minimum=1, keepalive=3600, interval=0.01)
        steering = asyncio.create_task(scaler.run(fleet))  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(10):
                await fleet.read_often.wait()  # several readings with only the running task
                assert not fleet.grown.is_set()
                await app.send_task("t.next")  # now one waits
                await fleet.grown.wait()
        finally:
            steering.cancel()
