"""Running a worker process: what ``aqueue worker`` hands over to once its options are parsed.

The command line is parsed by typer (:mod:`aqueue.cli`). The worker then runs in a fresh
interpreter that the command ``exec``\\ s (same process id, same signals, same standard
streams), which imports aqueue, the app and what its broker needs, and nothing of the
command-line stack: typer validates options with pydantic, and with click and rich that is
about 10 MiB that every worker process would otherwise carry for its whole life.

``AQUEUE_WORKER_IN_PROCESS=1`` keeps the worker in the command's process (and so does any
platform without ``exec``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any, NoReturn, TypedDict, TypeVar

from .core.app import App
from .core.errors import AqueueError

T = TypeVar("T")

__all__ = ["CLIError", "WorkerOptions", "exec_worker", "load_app", "run", "run_worker"]


class CLIError(Exception):
    """A user mistake reported as one line, exit status 2."""


class WorkerOptions(TypedDict):
    """The worker command's options, as parsed (``None``: the app's setting)."""

    app: str
    queues: list[str] | None
    concurrency: int | None
    prefetch: int | None
    hostname: str | None
    loglevel: str
    burst: bool
    shutdown_timeout: float | None
    #: also run a periodic task scheduler in the worker's loop (``-B/--beat``)
    beat: bool


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


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (the library itself never configures logging)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise CLIError(f"bad log level {level!r}: use debug, info, warning, error or critical")
    logging.basicConfig(
        level=numeric,
        format="[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop when it is installed, plain asyncio otherwise."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def fail(exc: BaseException) -> int:
    """Report ``exc`` as one line on stderr; the exit status to use."""
    print(f"aqueue: error: {exc}", file=sys.stderr)
    return 2


def run_worker(options: WorkerOptions) -> int:
    """Run a worker until it stops (SIGTERM / SIGINT, or drained in burst mode).

    Returns the exit status: 0, or 2 after a one-line error (a bad app, a broker that
    cannot be reached).
    """
    try:
        configure_logging(options["loglevel"])
        the_app = load_app(options["app"])
        w = the_app.worker(
            queues=options["queues"],
            concurrency=options["concurrency"],
            prefetch=options["prefetch"],
            hostname=options["hostname"],
            burst=options["burst"],
            shutdown_timeout=options["shutdown_timeout"],
        )
        scheduler = the_app.beat() if options.get("beat") else None
    except (CLIError, AqueueError, ValueError) as exc:
        return fail(exc)
    log = logging.getLogger("aqueue.worker")
    if the_app.conf.broker_url is None:  # not chosen: say where the default store is
        log.warning(
            "no broker given: using the embedded SQLite store %s (set broker= for a server)",
            os.path.abspath(the_app.broker_url.split(":///", 1)[-1]),
        )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.request_stop)
        try:
            if scheduler is None:
                await w.run()
            else:
                async with scheduler:
                    await w.run()
        finally:
            await the_app.close()

    tune_gc()
    try:
        run(main)
    except (AqueueError, OSError) as exc:
        return fail(exc)
    return 0


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


def exec_worker(options: WorkerOptions) -> NoReturn:
    """Replace this process with a fresh interpreter running :func:`run_worker`.

    The interpreter's own flags (``-X``, ``-W``, ``-O``...) are passed on; stdio, the
    environment, the working directory and the process id stay the same.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *_interpreter_flags(), "-m", "aqueue.runner", json.dumps(options)]
    os.execv(sys.executable, argv)  # noqa: S606 (argv is ours, no shell involved)


def _interpreter_flags() -> list[str]:
    # the flags multiprocessing passes to its children: the same -X/-W/-O/... options
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return flags


if __name__ == "__main__":
    sys.exit(run_worker(json.loads(sys.argv[1])))
