"""Several worker processes from one command: ``aqueue worker --processes N``.

The supervisor is a small process that never connects to the broker: it starts N worker
processes (each a fresh interpreter running :mod:`aqueue.runner`, with its own event loop
and connections: nothing shared), restarts one that dies, and stops them all gracefully
when it is told to (docs/cli.md, "Several processes").

- Child ``i`` (1..N) is the node ``name-i@host`` (Celery's ``%I``), so the fleet registry,
  ``aqueue inspect`` and ``aqueue control -d`` see N distinct workers.
- A child that exits abnormally (a crash, ``kill -9``, out of memory) is replaced after a
  short backoff. A child that exits 0 (``--burst`` drained, ``aqueue control shutdown``)
  is not. One that cannot start (a bad app or option: exit status 2 or 3), or that crashes
  at start again and again, makes the supervisor stop the others and exit with its status.
- SIGTERM or SIGINT: forwarded to the children as SIGTERM (each stops as a single worker
  does, within ``--shutdown-timeout``); the supervisor waits for them and exits 0. The
  children run in their own process group, so a terminal's Ctrl-C reaches them once,
  through the supervisor.
- The supervisor killed (``kill -9``): each child notices within a second (on Linux at
  once, by ``PR_SET_PDEATHSIG``) and stops gracefully, as Celery's pool children die with
  their parent: no worker keeps running unsupervised.
- Recycling (``--max-tasks-per-child``, ``--max-memory-per-child``) stays each child's
  own: it re-executes itself with the same pid, unseen by the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time

from .core.app import App
from .core.errors import AqueueError, ConfigurationError
from .core.protocols import PeeksHead
from .core.stopping import stop_on_signals
from .core.worker import expand_hostname
from .process import (
    EXIT_ALREADY_RUNNING,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    AlreadyRunning,
    CLIError,
    PidFile,
    configure_logging,
    detach,
    interpreter_flags,
    node_format,
    parse_level,
)
from .runner import (
    DETACHED_LOGFILE,
    DETACHED_PIDFILE,
    WorkerOptions,
    fail,
    load_app,
    setup_django,
)

__all__ = ["child_hostname", "supervise"]

log = logging.getLogger("aqueue.supervisor")

#: a child that exits abnormally sooner than this after its start crashed at start
STEADY_SECONDS = 10.0
#: crashes at start in a row after which the supervisor gives up (exit status 1)
CRASH_LOOP = 5
#: the delay before a dead child's replacement starts, doubled for each crash in a row
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0


def child_hostname(template: str, index: int) -> str:
    """Child ``index``'s node name: ``%i`` / ``%I`` expanded (``1`` / ``-1``) where the
    template has them, else ``-<index>`` after its name part (``w1@%h`` -> ``w1-1@%h``)."""
    if "%i" in template or "%I" in template:
        return template.replace("%I", f"-{index}").replace("%i", str(index))
    name, at, host = template.partition("@")
    return f"{name}-{index}{at}{host}"


def supervise(options: WorkerOptions) -> int:
    """Run ``options["processes"]`` worker processes until they stop; the exit status.

    0 after a graceful stop (SIGTERM / SIGINT, or every child exited 0), 2 or 3 when a
    child could not start as given (its one-line error is on stderr), 1 when children
    crash at start again and again.
    """
    processes = options.get("processes") or 1
    if options["detach"]:
        options = {
            **options,
            "logfile": options["logfile"] or DETACHED_LOGFILE,
            "pidfile": options["pidfile"] or DETACHED_PIDFILE,
        }
    pidfile: PidFile | None = None
    try:
        level = parse_level(options["loglevel"])
        nodename = expand_hostname(options["hostname"] or "aqueue@%h")
        logfile = node_format(options["logfile"], nodename) if options["logfile"] else None
        configure_logging(level, logfile)
        autoscale = _autoscaler(options)
        if options["pidfile"]:
            pidfile = PidFile(node_format(options["pidfile"], nodename))
            pidfile.check()
    except AlreadyRunning as exc:
        return fail(exc, EXIT_ALREADY_RUNNING)
    except (CLIError, ConfigurationError) as exc:
        return fail(exc, EXIT_USAGE)
    if options["detach"]:
        detach()
    try:
        if pidfile is not None:
            pidfile.acquire()
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return fail(exc, EXIT_ALREADY_RUNNING)
    except CLIError as exc:
        log.error("%s", exc)
        return fail(exc, EXIT_ERROR)
    try:
        # plain asyncio, not uvloop: it has no process_group for subprocesses
        return asyncio.run(Supervisor(options, processes, autoscale).run())
    finally:
        if pidfile is not None:
            pidfile.release()


def _autoscaler(options: WorkerOptions) -> Autoscaler | None:
    """The ``--autoscale`` controller, with the app loaded to read its queues' sizes."""
    bounds = options.get("autoscale")
    if not bounds:
        return None
    maximum, minimum = bounds
    if options.get("django"):
        setup_django()
    the_app = load_app(options["app"])
    try:  # the queues the worker processes consume, by the worker's own rule
        queues = the_app.worker(
            queues=options["queues"], exclude_queues=options["exclude_queues"]
        ).queues
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    keepalive = os.environ.get("AQUEUE_AUTOSCALE_KEEPALIVE", "30")
    try:
        seconds = float(keepalive)
    except ValueError:
        raise CLIError(
            f"AQUEUE_AUTOSCALE_KEEPALIVE={keepalive!r} is not a number of seconds"
        ) from None
    return Autoscaler(the_app, queues, maximum, minimum, keepalive=seconds)


class Supervisor:
    """Keeps worker processes running (run :meth:`run` in an event loop): ``processes`` of
    them, or between ``autoscale``'s minimum and maximum, as the queues' depth asks."""

    def __init__(
        self, options: WorkerOptions, processes: int, autoscale: Autoscaler | None = None
    ) -> None:
        self.template = options["hostname"] or "aqueue@%h"
        self.base = options
        self.autoscale = autoscale
        self.processes = autoscale.minimum if autoscale is not None else processes
        self.count = autoscale.maximum if autoscale is not None else processes
        port = options.get("metrics_port")
        if port is not None and port + self.count - 1 > 65535:
            raise ConfigurationError(
                f"--metrics-port {port}: {self.count} worker processes need ports {port}-"
                f"{port + self.count - 1}, past 65535"
            )
        self.children: dict[int, asyncio.subprocess.Process] = {}
        #: the processes being kept (index -> its keeper), and those told to stop for good
        self.keepers: dict[int, asyncio.Task[None]] = {}
        self.retiring: set[int] = set()
        self.stopping = False
        self.status = EXIT_OK
        self._wake: asyncio.Event | None = None

    def child_options(self, index: int) -> WorkerOptions:
        """What worker process ``index`` runs with: no pid file (the supervisor's), never
        detached, its own node name, and its own metrics port (``--metrics-port`` is the
        first process's; process ``i`` serves on that port ``+ i - 1``)."""
        port = self.base.get("metrics_port")
        return {
            **self.base,
            "hostname": child_hostname(self.template, index),
            "metrics_port": None if port is None else port + index - 1,
            "detach": False,
            "pidfile": None,
            "restarts": 0,
            "processes": None,
            "autoscale": None,
            "process_index": index,
            "process_count": self.count,
            "supervisor": os.getpid(),
        }

    def name(self, index: int) -> str:
        return expand_hostname(child_hostname(self.template, index))

    async def run(self) -> int:
        """Start the children, keep them running, return once all have stopped."""
        self._wake = asyncio.Event()
        with stop_on_signals(self.stop):
            return await self._supervise()

    async def _supervise(self) -> int:
        loop = asyncio.get_running_loop()
        log.info(
            "supervisor (pid %d) starting %d worker processes: %s%s",
            os.getpid(),
            self.processes,
            ", ".join(self.name(i) for i in range(1, self.processes + 1)),
            f" (autoscale up to {self.count})" if self.autoscale else "",
        )
        for _ in range(self.processes):
            self.grow()
        scaler = None
        if self.autoscale is not None:
            scaler = loop.create_task(self.autoscale.run(self))
        while self.keepers:
            keepers = list(self.keepers.values())
            done, _ = await asyncio.wait(keepers, return_when=asyncio.FIRST_COMPLETED)
            for keeper in done:  # a child that cannot even be started (fork failed...)
                if not keeper.cancelled() and keeper.exception() is not None:
                    self._give_up(
                        EXIT_ERROR, f"cannot start a worker process: {keeper.exception()!r}"
                    )
        if scaler is not None:
            scaler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scaler
        log.info("supervisor (pid %d): every worker process has stopped", os.getpid())
        return self.status

    @property
    def active(self) -> int:
        """Worker processes kept running (not stopping for good)."""
        return len(self.keepers) - len(self.retiring)

    def grow(self) -> None:
        """Start one more worker process, with the lowest free index."""
        index = next(i for i in range(1, len(self.keepers) + 2) if i not in self.keepers)
        self.keepers[index] = asyncio.get_running_loop().create_task(self._keep(index))

    def shrink(self) -> None:
        """Stop the worker process with the highest index gracefully, for good."""
        index = max(i for i in self.keepers if i not in self.retiring)
        self.retiring.add(index)
        child = self.children.get(index)
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Stop every child gracefully (SIGTERM); safe from a signal handler, repeatable."""
        if not self.stopping:
            log.info("supervisor: stopping %d worker processes", len(self.children))
        self.stopping = True
        if self._wake is not None:
            self._wake.set()
        for child in self.children.values():
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)

    def _give_up(self, status: int, message: str) -> None:
        log.error("%s", message)
        if self.status == EXIT_OK:
            self.status = status
        self.stop()

    async def _keep(self, index: int) -> None:
        try:
            await self._keep_running(index)
        finally:
            del self.keepers[index]
            self.retiring.discard(index)

    async def _keep_running(self, index: int) -> None:
        """Keep child ``index`` running until the supervisor stops (or it exits 0)."""
        name, crashes = self.name(index), 0
        argv = [*interpreter_flags(), "-m", "aqueue.runner", json.dumps(self.child_options(index))]
        while not self.stopping and index not in self.retiring:
            started = time.monotonic()
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                process_group=0,  # a terminal's Ctrl-C reaches it once: through us
            )
            self.children[index] = child
            if self.stopping or index in self.retiring:  # stopped while it was starting
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
            status = await child.wait()
            del self.children[index]
            if self.stopping:
                return
            if index in self.retiring:
                log.info("worker process %s (pid %d) stopped (autoscale)", name, child.pid)
                return
            if status == EXIT_OK:
                log.info("worker process %s (pid %d) exited: not replaced", name, child.pid)
                return
            if status in (EXIT_USAGE, EXIT_ALREADY_RUNNING):
                self._give_up(status, f"worker process {name} cannot start (status {status})")
                return
            crashes = crashes + 1 if time.monotonic() - started < STEADY_SECONDS else 1
            if crashes >= CRASH_LOOP:
                self._give_up(
                    EXIT_ERROR,
                    f"worker process {name} {_ended(status)} soon after starting, "
                    f"{crashes} times in a row: giving up",
                )
                return
            delay = min(FIRST_BACKOFF * 2 ** (crashes - 1), MAX_BACKOFF)
            log.error(
                "worker process %s (pid %d) %s: starting another in %.1fs",
                name,
                child.pid,
                _ended(status),
                delay,
            )
            assert self._wake is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()


class Autoscaler:
    """``--autoscale MAX,MIN``: grows the worker processes up to ``maximum`` while messages
    wait in the queues, and stops one (down to ``minimum``) after ``keepalive`` seconds
    with none waiting.

    The only broker connection of the supervisor: it reads whether messages are ready in
    the queues every ``interval`` seconds (:meth:`waiting`). Messages waiting at two
    readings in a row mean every process holds all it may (a process with room claims
    within milliseconds): one more process starts, at most one per reading.
    """

    def __init__(
        self,
        app: App,
        queues: list[str],
        maximum: int,
        minimum: int,
        *,
        keepalive: float = 30.0,
        interval: float = 1.0,
    ) -> None:
        self.app, self.queues = app, queues
        self.maximum, self.minimum = maximum, minimum
        self.keepalive, self.interval = keepalive, interval

    async def run(self, supervisor: Supervisor) -> None:
        """Adjust ``supervisor``'s processes until cancelled."""
        waiting_before, idle_since, failing = False, time.monotonic(), False
        async with self.app:
            while True:
                await asyncio.sleep(self.interval)
                if supervisor.stopping:
                    continue
                try:
                    backlog = await self.waiting()
                except (AqueueError, OSError) as exc:
                    if not failing:
                        log.warning("autoscale: cannot read the queues' sizes: %s", exc)
                    failing = True
                    continue
                failing = False
                now = time.monotonic()
                if backlog:
                    idle_since = now
                    if waiting_before and supervisor.active < self.maximum:
                        log.info(
                            "autoscale: messages waiting: starting worker process %d",
                            supervisor.active + 1,
                        )
                        supervisor.grow()
                elif now - idle_since >= self.keepalive and supervisor.active > self.minimum:
                    log.info(
                        "autoscale: no message waited for %.0fs: one process fewer",
                        now - idle_since,
                    )
                    supervisor.shrink()
                    idle_since = now
                waiting_before = backlog > 0

    async def waiting(self) -> int:
        """How many of the queues have a message ready (a message running or delayed is not
        waiting: a long task must not grow the fleet); on a broker that cannot look at the
        next ready message (RabbitMQ) their sizes, which count delayed messages too."""
        broker = self.app.broker
        if isinstance(broker, PeeksHead):
            return sum([await broker.peek_head(q) is not None for q in self.queues])
        return sum([await broker.size(q) for q in self.queues])


def _ended(status: int) -> str:
    """How a child ended, from its exit status (negative: the signal that killed it)."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


if __name__ == "__main__":
    sys.exit(supervise(json.loads(sys.argv[1])))
