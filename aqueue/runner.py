"""Running a worker process: what ``aqueue worker`` hands over to once its options are parsed.

The command line is parsed by typer (:mod:`aqueue.cli`). The worker then runs in a fresh
interpreter that the command ``exec``\\ s (same process id, same signals, same standard
streams), which imports aqueue, the app and what its broker needs, and nothing of the
command-line stack: typer validates options with pydantic, and with click and rich that is
about 10 MiB that every worker process would otherwise carry for its whole life.

``AQUEUE_WORKER_IN_PROCESS=1`` keeps the worker in the command's process (and so does any
platform without ``exec``).

A worker that reached ``--max-tasks-per-child`` or ``--max-memory-per-child`` stops (what
it holds has run, or has been handed back) and this process re-executes itself: a
fresh interpreter, every other file descriptor closed, the same pid, so a pid file, a
supervisor and signals keep following it (docs/cli.md, "Recycling").

Under ``aqueue worker --processes N`` (:mod:`aqueue.supervisor`) this runs in each of the
N processes: the options name the process's index and its supervisor, whose death makes
the worker stop (docs/cli.md, "Several processes").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, NotRequired, TypedDict, TypeVar

from .core.app import App
from .core.errors import AqueueError, ConfigurationError
from .core.protocols import BeatService
from .core.stopping import stop_on_signals
from .core.worker import Worker, expand_hostname
from .process import (
    EXIT_ALREADY_RUNNING,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    AlreadyRunning,
    CLIError,
    PidFile,
    banner,
    configure_logging,
    detach,
    interpreter_flags,
    node_format,
    parse_level,
    stream_of,
    use_formats,
)

if TYPE_CHECKING:
    from .contrib.prometheus import WorkerMetrics

T = TypeVar("T")

__all__ = ["CLIError", "WorkerOptions", "exec_worker", "load_app", "run", "run_worker"]

log = logging.getLogger("aqueue.worker")

#: where ``--detach`` logs and writes its pid unless told (celery multi's defaults)
DETACHED_LOGFILE = "%n.log"
DETACHED_PIDFILE = "%n.pid"


class WorkerOptions(TypedDict):
    """The worker command's options, as parsed (``None``: the app's setting)."""

    app: str
    queues: list[str] | None
    exclude_queues: list[str] | None
    concurrency: int | None
    prefetch: int | None
    prefetch_multiplier: int | None
    hostname: str | None
    loglevel: str
    logfile: str | None
    pidfile: str | None
    detach: bool
    burst: bool
    shutdown_timeout: float | None
    time_limit: float | None
    soft_time_limit: float | None
    max_tasks_per_child: int | None
    max_memory_per_child: int | None
    #: times this process has replaced itself (``--max-tasks-per-child``...)
    restarts: int
    #: also run a periodic task scheduler in the worker's loop (``-B/--beat``)
    beat: bool
    #: send monitoring events (``-E/--task-events``: ``worker_send_task_events``)
    task_events: bool
    #: serve this process's Prometheus metrics on this port (``--metrics-port``)
    metrics_port: NotRequired[int | None]
    #: the address they are served on (``--metrics-address``, loopback by default)
    metrics_address: NotRequired[str]
    #: ``django.setup()`` before the app is imported (``--django``)
    django: NotRequired[bool]
    #: run this many worker processes under a supervisor (``--processes``)
    processes: NotRequired[int | None]
    #: or between [MAX, MIN] processes, as the queues' depth asks (``--autoscale``)
    autoscale: NotRequired[list[int] | None]
    #: under a supervisor: this process's index (1..N) among how many, and its pid
    process_index: NotRequired[int]
    process_count: NotRequired[int]
    supervisor: NotRequired[int]


def load_app(spec: str) -> App:
    """The App that ``spec`` names, found as Celery's ``-A`` finds it.

    ``module:attribute`` names it exactly (the attribute may be a factory returning one).
    A bare ``proj`` is looked up in Celery's order: ``proj.app``, ``proj.celery`` (an
    attribute of the module that is an App), then for a package the module
    ``proj.celery`` the same way, then the one App among the module's attributes.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, colon, attr = spec.partition(":")
    if not module_name:
        raise CLIError(f"bad APP {spec!r}: use module:attribute, e.g. proj.tasks:app")
    module = _import(module_name)
    if colon:
        return _attribute(module, module_name, attr, spec)
    found = _find_in(module, module_name)
    if found is None:
        raise CLIError(
            f"no aqueue.App found in {module_name!r}: looked for {module_name}.app, "
            f"{module_name}.celery, the module {module_name}.celery, and an App among its "
            f"attributes; name it: {module_name}:app"
        )
    return found


def setup_django() -> None:
    """``django.setup()`` (``aqueue worker --django``), before the app module is imported:
    its tasks may import models, which needs the app registry ready, as ``manage.py`` has
    it. ``DJANGO_SETTINGS_MODULE`` names the settings, as for ``manage.py``."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise CLIError("--django: set DJANGO_SETTINGS_MODULE (e.g. proj.settings)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        import django
    except ImportError:
        raise CLIError("--django: Django is not installed (pip install 'aqueue[django]')") from None
    django.setup()


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CLIError(
                f"cannot import {module_name!r} (no module {exc.name!r}): run aqueue from the "
                "directory that contains your package, or add it to PYTHONPATH"
            ) from None
        raise


def _attribute(module: ModuleType, module_name: str, attr: str, spec: str) -> App:
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(
                f"module {module_name!r} has no attribute {attr!r}: APP is module:attribute, "
                "where the attribute is your aqueue.App"
            ) from None
    if callable(obj) and not isinstance(obj, App):
        obj = obj()
    if not isinstance(obj, App):
        raise CLIError(f"{spec!r} is a {type(obj).__name__}, not an aqueue.App")
    return obj


def _find_in(module: ModuleType, module_name: str) -> App | None:
    """Celery's order: ``.app``, ``.celery``, the ``.celery`` submodule, the one App."""
    for name in ("app", "celery"):
        candidate = getattr(module, name, None)
        if isinstance(candidate, App):
            return candidate
    if hasattr(module, "__path__"):  # a package: its celery module, as Celery's layout has
        try:
            submodule = importlib.import_module(f"{module_name}.celery")
        except ModuleNotFoundError as exc:
            if exc.name != f"{module_name}.celery":
                raise
        else:
            found = _find_in(submodule, f"{module_name}.celery")
            if found is not None:
                return found
    apps = {id(v): v for v in vars(module).values() if isinstance(v, App)}
    if len(apps) > 1:
        raise CLIError(
            f"module {module_name!r} has {len(apps)} App objects: name one, e.g. {module_name}:app"
        )
    return next(iter(apps.values()), None)


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop when it is installed, plain asyncio otherwise."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def fail(exc: BaseException, status: int = EXIT_USAGE) -> int:
    """Report ``exc`` as one line on stderr; the exit status to use."""
    print(f"aqueue: error: {exc}", file=sys.stderr)
    return status


def run_worker(options: WorkerOptions, *, reexec: bool = False) -> int:
    """Run a worker until it stops (SIGTERM / SIGINT, or drained in burst mode).

    A worker that retires (``max_tasks_per_child``, ``max_memory_per_child``) is replaced:
    with ``reexec`` this process ``exec``\\ s itself again (and this never returns),
    otherwise a new worker starts in this process (an embedding program or a test).

    Returns the exit status (docs/cli.md): 0 after a clean stop, 1 when it failed while
    running (a broker that cannot be reached), 2 after a one-line error about the command
    or the app, 3 when ``--pidfile`` is held by a live process.
    """
    if options["detach"]:  # the defaults are kept for the lives after this one too
        options = {
            **options,
            "logfile": options["logfile"] or DETACHED_LOGFILE,
            "pidfile": options["pidfile"] or DETACHED_PIDFILE,
        }
    while True:
        status, retired = _run_once(options)
        if not retired:
            return status
        options = {**options, "detach": False, "restarts": options["restarts"] + 1}
        if reexec:
            exec_worker(options, close_fds=True)


def _run_once(options: WorkerOptions) -> tuple[int, bool]:
    """One worker's life: (exit status, whether it retired to be replaced)."""
    first = options["restarts"] == 0
    index = options.get("process_index", 0)
    supervisor = options.get("supervisor")
    if supervisor is not None and not follow_supervisor(supervisor, index):
        return EXIT_OK, False  # it died before this process could watch it
    pidfile: PidFile | None = None
    try:
        level = parse_level(options["loglevel"])
        nodename = expand_hostname(options["hostname"] or "aqueue@%h")
        logfile = node_format(options["logfile"], nodename, index) if options["logfile"] else None
        handler = configure_logging(level, logfile)
        # an error inside the user's modules shows its traceback (exit status 1); aqueue's
        # own complaints about the app, its settings or the options are one line
        if options.get("django"):
            setup_django()
        the_app = load_app(options["app"])
        _apply_options(the_app, options)
        use_formats(handler, the_app.conf)
        the_app.import_includes()
        w = _worker(the_app, options)
        _metrics(the_app, options)
        scheduler = _scheduler(the_app, options)
        if options["pidfile"]:
            pidfile = PidFile(node_format(options["pidfile"], nodename))
            pidfile.check()
    except AlreadyRunning as exc:
        return fail(exc, EXIT_ALREADY_RUNNING), False
    except (CLIError, ConfigurationError) as exc:
        return fail(exc, EXIT_USAGE), False
    except AqueueError as exc:
        return fail(exc, EXIT_ERROR), False
    if options["detach"]:
        detach()
    try:
        if pidfile is not None:
            pidfile.acquire()
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return fail(exc, EXIT_ALREADY_RUNNING), False
    except CLIError as exc:
        log.error("%s", exc)
        return fail(exc, EXIT_ERROR), False
    retired = False
    try:
        if first:
            stream = stream_of(handler)
            if index <= 1:  # one banner for the processes of a supervisor
                count = options.get("process_count")
                text = banner(
                    w, app_spec=options["app"], level=level, logfile=logfile, processes=count
                )
                stream.write(text)
                stream.flush()
            if the_app.conf.broker_url is None:  # not chosen: say where the default store is
                log.warning(
                    "no broker given: using the embedded SQLite store %s (set broker= for a "
                    "server)",
                    os.path.abspath(the_app.broker_url.split(":///", 1)[-1]),
                )
        else:
            log.info("worker %s replaced itself (restart %d)", w.hostname, options["restarts"])
        status = _serve(the_app, w, scheduler, supervisor)
        retired = replaced(status, w)
        return status, retired
    finally:
        if pidfile is not None and not retired:
            pidfile.release()


def replaced(status: int, w: Worker) -> bool:
    """Whether a worker that ended with ``status`` is to be replaced by a new life: it
    retired (a limit) and nothing asked it to stop for good meanwhile (a SIGTERM that came
    while it was retiring must not be swallowed by the next life)."""
    return status == EXIT_OK and w.retired is not None and not w.stop_requested


def _worker(the_app: App, options: WorkerOptions) -> Worker:
    """The worker the options describe (a ``ValueError`` is a bad option: ``CLIError``)."""
    try:
        return the_app.worker(
            queues=options["queues"],
            exclude_queues=options["exclude_queues"],
            concurrency=options["concurrency"],
            prefetch=options["prefetch"],
            hostname=options["hostname"],
            burst=options["burst"],
            shutdown_timeout=options["shutdown_timeout"],
            max_tasks_per_child=the_app.conf.worker_max_tasks_per_child or None,
            max_memory_per_child=the_app.conf.worker_max_memory_per_child or None,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None


#: this process's worker metrics (``--metrics-port``), kept across the lives of a worker
#: replaced in this process (a re-executed one starts afresh, on the same port)
_served_metrics: list[WorkerMetrics] = []


def _metrics(app: App, options: WorkerOptions) -> None:
    """Count and serve this process's metrics if ``--metrics-port`` asks for them."""
    port = options.get("metrics_port")
    if port is None:
        return
    from .contrib.prometheus import WorkerMetrics  # only now: the extra may be missing

    if _served_metrics:  # a new life in this process: the same registry, server and port
        metrics = _served_metrics[0]
        if metrics.app is not app:
            metrics.uninstall()
            metrics.app = app
        metrics.install()
        return
    address = options.get("metrics_address") or "127.0.0.1"
    metrics = WorkerMetrics(app).install()
    try:
        metrics.serve(port, address)
    except OSError as exc:
        metrics.uninstall()
        raise CLIError(f"cannot serve metrics on {address}:{port}: {exc.strerror}") from None
    _served_metrics.append(metrics)
    log.info("metrics on http://%s:%d/metrics", address, port)


def _apply_options(app: App, options: WorkerOptions) -> None:
    """The command's worker-wide options, over the app's settings (Celery's precedence)."""
    overrides: dict[str, Any] = {}
    for option, setting in (
        ("time_limit", "task_time_limit"),
        ("soft_time_limit", "task_soft_time_limit"),
        ("max_tasks_per_child", "worker_max_tasks_per_child"),
        ("max_memory_per_child", "worker_max_memory_per_child"),
        ("prefetch_multiplier", "worker_prefetch_multiplier"),
    ):
        value = options[option]  # type: ignore[literal-required]
        if value is not None:
            overrides[setting] = value
    if options.get("task_events"):  # -E; without it, the app's setting holds
        overrides["worker_send_task_events"] = True
    if overrides:
        app.conf.update(overrides)


def _scheduler(the_app: App, options: WorkerOptions) -> BeatService | None:
    """The periodic task scheduler ``-B/--beat`` runs in the worker's loop, or ``None``."""
    if not options["beat"]:
        return None
    try:
        return the_app.beat()
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _serve(
    the_app: App, w: Worker, scheduler: BeatService | None, supervisor: int | None = None
) -> int:
    """Run ``w`` (and ``scheduler``) on a fresh event loop until it stops; the exit status.

    ``supervisor``: the pid of the ``--processes`` supervisor; the worker stops if it dies.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        watch = None if supervisor is None else loop.create_task(_orphaned(supervisor, w))
        try:
            with stop_on_signals(w.request_stop):
                if scheduler is None:
                    await w.run()
                else:
                    async with scheduler:
                        await w.run()
        finally:
            if watch is not None:
                watch.cancel()
            await the_app.close()

    tune_gc()
    try:
        run(main)
    except ConfigurationError as exc:  # e.g. a missing extra, found when connecting
        log.error("%s", exc)
        return fail(exc, EXIT_USAGE)
    except (AqueueError, OSError) as exc:
        log.error("%s", exc)
        return fail(exc, EXIT_ERROR)
    return EXIT_OK


#: Linux's prctl(2) option: the signal this process gets when its parent dies
_PR_SET_PDEATHSIG = 1


def follow_supervisor(pid: int, index: int) -> bool:
    """Make this worker process stop with its ``--processes`` supervisor ``pid``: on Linux
    the kernel sends it SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``, kept across
    a recycling ``exec``); elsewhere :func:`_orphaned` notices within a second. Names the
    process ``Worker-<index>`` in the log (Celery's ``ForkPoolWorker-<index>``).

    Returns ``False`` if the supervisor is already gone (the process should exit).
    """
    import multiprocessing  # the log's processName comes from it

    multiprocessing.current_process().name = f"Worker-{index}"
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == pid


async def _orphaned(supervisor: int, w: Worker) -> None:
    """Stop ``w`` gracefully once its supervisor is gone (this process was re-parented)."""
    while os.getppid() == supervisor:  # noqa: ASYNC110 (nothing signals a re-parenting)
        await asyncio.sleep(1.0)
    log.warning("worker %s: its supervisor (pid %d) is gone: stopping", w.hostname, supervisor)
    w.request_stop()


def tune_gc() -> None:
    """Make the cyclic garbage collector cheaper for a long-running worker process.

    Everything imported and built so far (the app, its tasks, the libraries) is moved out of
    the collector's sight (``gc.freeze``): it lives as long as the process. And a collection
    runs after 10 000 net allocations instead of 700: each task allocates a few dozen
    objects, nearly all freed by reference counting, so the default threshold ran a
    collection every ~20 tasks (about a tenth of a no-op task's CPU time). Only the CLI
    worker does this; an embedded worker leaves the host program's settings alone.
    """
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(10_000, gen1, gen2)


def can_exec() -> bool:
    """Whether ``aqueue worker`` hands the worker over to a fresh interpreter."""
    return os.name == "posix" and os.environ.get("AQUEUE_WORKER_IN_PROCESS", "") in ("", "0")


def exec_worker(options: WorkerOptions, *, close_fds: bool = False) -> NoReturn:
    """Replace this process with a fresh interpreter running :func:`run_worker` (or, for
    ``--processes``, the supervisor: :func:`aqueue.supervisor.supervise`).

    The interpreter's own flags (``-X``, ``-W``, ``-O``...) are passed on; stdio, the
    environment, the working directory and the process id stay the same. ``close_fds``
    closes every other descriptor first (a recycled worker leaves nothing behind, even a
    descriptor some library opened without close-on-exec).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    supervised = options.get("processes") or options.get("autoscale")
    module = "aqueue.supervisor" if supervised else "aqueue.runner"
    argv = [sys.executable, *interpreter_flags(), "-m", module, json.dumps(options)]
    if close_fds:
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
    os.execv(sys.executable, argv)  # noqa: S606 (argv is ours, no shell involved)


if __name__ == "__main__":
    sys.exit(run_worker(json.loads(sys.argv[1]), reexec=True))
