"""Child processes: each in its own process group, always killed, group and all."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from .config import REPO_ROOT

_live: set[Proc] = set()


class Proc:
    """A child started in a new session (its own process group), output to a log file."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str], name: str) -> None:
        self.name = name
        self.cmd = list(cmd)
        fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        self.log_path = Path(path)
        self._log = os.fdopen(fd, "wb")
        self.out_path = self.log_path.with_suffix(".out")
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in kill()
        self.popen = subprocess.Popen(
            self.cmd,
            cwd=REPO_ROOT,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._log,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        _live.add(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        """The process and its live descendants."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group, then any descendant that left it (by pid).

        Nothing is graceful here on purpose: every run starts from a flushed Redis DB and
        deleted queues, so no state has to survive, and SIGKILL never hangs.
        """
        escaped = self.tree()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for p in escaped:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        psutil.wait_procs(escaped, timeout=2)
        self._log.close()
        self._out.close()
        _live.discard(self)

    def output(self) -> str:
        self._out.flush()
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def remove_log(self) -> None:
        for path in (self.log_path, self.out_path):
            with contextlib.suppress(OSError):
                path.unlink()


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env["PYTHONUNBUFFERED"] = "1"
    # Every system loads compiled bytecode: the peers' from site-packages, and aqueue and the
    # benchmark's own modules (imported from this tree) from a cache the first process of a
    # run writes. A PYTHONDONTWRITEBYTECODE=1 inherited from the shell would otherwise make
    # them compile from source in every process, which costs the tree's modules start-up
    # time and ~0.5 MiB of peak RSS that no peer pays.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cache = Path(tempfile.gettempdir()) / f"aqueue-bench-pyc-{os.getuid()}"
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    env.update(extra)
    return env


def kill_all() -> None:
    """Kill every child still tracked (end of a scenario, Ctrl-C, exit)."""
    for proc in list(_live):
        proc.kill()


def _on_signal(signum: int, _frame: object) -> None:
    kill_all()
    sys.exit(128 + signum)


def install_handlers() -> None:
    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
