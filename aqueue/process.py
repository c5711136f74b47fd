"""What surrounds a worker in its process: the log, the start banner, the pid file, detaching.

``aqueue worker`` (through :mod:`aqueue.runner`) uses these; nothing here runs inside an
embedded worker, and the library itself never configures logging.

- :func:`configure_logging`: one handler on the root logger, to stderr or a file (reopened
  when logrotate moves it), with :class:`~aqueue.core.logs.TaskFormatter`, so a line
  logged inside a task names the task (Celery's ``worker_task_log_format``).
- :func:`banner`: what the worker is about to do, printed once at start whatever the level
  (Celery's banner): app, broker and backend (passwords redacted), queues, concurrency,
  limits and the registered tasks.
- :class:`PidFile`: refuses to start when a live process holds the file, removes it at exit.
- :func:`detach`: Celery's ``--detach``, a classic double fork.
- :func:`node_format`: Celery's ``%n`` / ``%h`` / ``%d`` / ``%i`` / ``%I`` in file names.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, TextIO

from . import __version__
from .core.config import Settings
from .core.logs import TaskFormatter
from .core.urls import redact

if TYPE_CHECKING:
    from .core.worker import Worker

__all__ = [
    "EXIT_ALREADY_RUNNING",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "LEVELS",
    "CLIError",
    "PidFile",
    "banner",
    "configure_logging",
    "detach",
    "interpreter_flags",
    "node_format",
    "parse_level",
]

#: exit statuses of the ``aqueue`` commands (docs/cli.md, "Exit status")
EXIT_OK = 0
#: something failed while running: a broker or backend that cannot be reached, a crash
EXIT_ERROR = 1
#: the command cannot run as given: a bad option, app, setting or argument
EXIT_USAGE = 2
#: ``--pidfile`` names a file that a live process holds: that worker is already running
EXIT_ALREADY_RUNNING = 3


class CLIError(Exception):
    """A user mistake reported as one line, exit status 2 (:data:`EXIT_USAGE`)."""


#: Celery's log level names (any case); FATAL is CRITICAL
LEVELS: dict[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}


def parse_level(text: str) -> int:
    """A ``-l`` value as a logging level: one of :data:`LEVELS`, any case."""
    level = LEVELS.get(text.strip().upper())
    if level is None:
        raise CLIError(
            f"bad log level {text!r} (-l/--loglevel): use one of "
            f"{', '.join(n.lower() for n in LEVELS)}"
        )
    return level


def configure_logging(level: int, logfile: str | None = None) -> logging.Handler:
    """Log records of ``level`` and above to stderr, or appended to ``logfile``.

    Adds the handler to the root logger (replacing one an earlier call added) and routes
    ``warnings`` into the log. Returns the handler: :func:`use_formats` sets the app's
    formats on it once the app is loaded (records logged while it loads use the defaults).
    """
    handler: logging.Handler
    if logfile:
        # only here: a module a worker logging to stderr does not need to carry
        from logging.handlers import WatchedFileHandler

        try:
            # reopened when moved away (logrotate), so nothing is written to a deleted file
            handler = WatchedFileHandler(logfile, encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot open the log file {logfile!r} (--logfile): {exc}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    use_formats(handler, Settings())
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if getattr(old, _OURS, False):  # a worker of this process configured it before
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler


_OURS = "_aqueue_worker_handler"


def use_formats(handler: logging.Handler, conf: Settings) -> None:
    """Format ``handler``'s records with ``conf``'s worker log formats.

    Raises:
        CLIError: a format that is not a valid ``%``-style logging format.
    """
    for name in ("worker_log_format", "worker_task_log_format"):
        try:
            logging.Formatter(getattr(conf, name), validate=True)
        except ValueError as exc:
            raise CLIError(f"setting {name} is not a logging format: {exc}") from None
    handler.setFormatter(TaskFormatter(conf.worker_log_format, conf.worker_task_log_format))


def stream_of(handler: logging.Handler) -> TextIO:
    """Where ``handler`` writes (the banner goes there too)."""
    stream = getattr(handler, "stream", None)
    return stream if stream is not None else sys.stderr


def banner(
    worker: Worker,
    *,
    app_spec: str,
    level: int,
    logfile: str | None,
    processes: int | None = None,
) -> str:
    """The start banner: what this worker is and does, secrets redacted.

    Built-in tasks (``aqueue.*``, the workflow engine's) are listed at DEBUG only, as
    Celery lists its own. ``processes``: the first of that many worker processes under a
    supervisor (``--processes``) prints it for all of them.
    """
    app, conf = worker.app, worker.app.conf
    limits = []
    if conf.task_time_limit is not None:
        limits.append(f"time limit {conf.task_time_limit:g}s")
    if conf.task_soft_time_limit is not None:
        limits.append(f"soft time limit {conf.task_soft_time_limit:g}s")
    if worker.max_tasks_per_child is not None:
        limits.append(f"max {worker.max_tasks_per_child} tasks per child")
    if worker.max_memory_per_child is not None:
        limits.append(f"max {worker.max_memory_per_child} KiB per child")
    backend = app.backend_url
    rows = [
        ("app", f"{app.name} ({app_spec})"),
        ("broker", redact(app.broker_url)),
        ("results", redact(backend) if backend else "not stored"),
        ("queues", ", ".join(worker.queues)),
        ("concurrency", f"{worker.concurrency} (asyncio), prefetch {worker.prefetch}"),
        *(
            [
                (
                    "processes",
                    f"{processes}, each with that concurrency (supervisor pid {os.getppid()})",
                )
            ]
            if processes
            else []
        ),
        ("limits", "; ".join(limits) or "none"),
        ("log", f"{logging.getLevelName(level)} to {logfile or 'stderr'}"),
    ]
    names = sorted(n for n in app.tasks if level <= logging.DEBUG or not n.startswith("aqueue."))
    lines = [f"aqueue {__version__} worker {worker.hostname} (pid {os.getpid()})"]
    lines += [f"  {key + ':':<13}{value}" for key, value in rows]
    lines += ["", "[tasks]"]
    lines += [f"  . {name}" for name in names] or ["  (none registered)"]
    return "\n".join(lines) + "\n"


def node_format(template: str, nodename: str, index: int = 0) -> str:
    """Expand Celery's node-name formats in a file name, for node ``name@host.domain``.

    ``%n`` the name (``name``), ``%h`` the host (``host.domain``), ``%d`` the domain,
    ``%p`` the whole node name, ``%i`` the process index (``index``: 0 for a single worker
    or the ``--processes`` supervisor, 1..N for its worker processes), ``%I`` ``-<index>``
    for those (nothing for index 0), ``%%`` a ``%``.
    """
    name, at, host = nodename.partition("@")
    if not at:
        name, host = "aqueue", nodename
    host = host or socket.gethostname()
    keys = {"n": name, "h": host, "d": host.partition(".")[2], "p": nodename}
    keys |= {"i": str(index), "I": f"-{index}" if index else ""}
    out: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if char == "%" and i + 1 < len(template):
            key = template[i + 1]
            if key == "%":
                out.append("%")
                i += 2
                continue
            if key in keys:
                out.append(keys[key])
                i += 2
                continue
        out.append(char)
        i += 1
    return "".join(out)


def interpreter_flags() -> list[str]:
    """This interpreter's own flags (``-X``, ``-W``, ``-O``...), for a worker interpreter
    started from it (the flags multiprocessing passes to its children)."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return flags


class PidFile:
    """A pid file: created at start, refused while a live process holds it, removed at exit.

    A file left by a process that is gone (a crash, ``kill -9``) is replaced, with a
    warning. The worker's own restarts (``--max-tasks-per-child``: the same pid) keep it.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def check(self) -> None:
        """Raise :class:`AlreadyRunning` if another live process holds the file (before
        detaching, so the command that starts a daemon can say so)."""
        holder = self._read()
        if holder is not None and holder != os.getpid() and _alive(holder):
            raise AlreadyRunning(self._held_text(holder))

    def _held_text(self, holder: int) -> str:
        return (
            f"pid file {self.path} holds pid {holder}, which is running: is this worker "
            "already started? (stop it, or use another --pidfile)"
        )

    def acquire(self) -> None:
        """Write this process's pid to the file.

        Raises:
            AlreadyRunning: another live process's pid is in it.
            CLIError: it cannot be written.
        """
        me = os.getpid()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder == me:
                    return  # this process (re-executed to recycle itself) holds it
                if holder is not None and _alive(holder):
                    raise AlreadyRunning(self._held_text(holder)) from None
                logging.getLogger("aqueue.worker").warning(
                    "replacing stale pid file %s (pid %s is not running)", self.path, holder
                )
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            except OSError as exc:
                raise CLIError(f"cannot create the pid file {self.path}: {exc}") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{me}\n")
            return
        raise CLIError(f"cannot create the pid file {self.path}: it keeps coming back")

    def release(self) -> None:
        """Remove the file if it still holds this process's pid."""
        if self._read() == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _read(self) -> int | None:
        try:
            with open(self.path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CLIError(f"cannot read the pid file {self.path}: {exc}") from None
        try:
            return int(text)
        except ValueError:
            return None  # empty or garbage: nobody can hold it


class AlreadyRunning(CLIError):
    """The pid file is held by a live process (exit status 3)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    except OSError as exc:  # pragma: no cover (other errors: assume it lives)
        return exc.errno != errno.ESRCH
    return True


def detach(workdir: str | None = None) -> None:
    """Become a daemon: return in the grandchild of a double fork, in a new session.

    The calling process and the intermediate child exit at once (status 0), so the shell
    that started the command gets its prompt back. Standard input, output and error are
    redirected to ``/dev/null``: log to a file (``--logfile``). Call it before opening
    sockets or starting threads.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os._exit(0)  # the command returns; the child carries on
    os.setsid()  # no controlling terminal: a closed terminal's SIGHUP does not reach it
    if os.fork() > 0:
        os._exit(0)  # the session leader exits: the daemon can never reacquire a terminal
    if workdir:
        os.chdir(workdir)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
