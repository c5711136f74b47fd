"""The ``aqueue`` command: thin typer wrappers over the core (docs/cli.md).

Configures logging (the library never does), loads the app, and turns mistakes into
one-line errors naming the fix instead of tracebacks. Every command takes the app the
same three ways: ``aqueue worker proj:app``, ``aqueue worker -A proj`` and Celery's
``aqueue -A proj worker`` (and ``AQUEUE_APP``). Commands that print data take ``--json``.

Exit status (``aqueue.process``): 0 done, 1 failed while running (a broker that cannot be
reached), 2 a bad command line, app or setting, 3 ``--pidfile`` held by a running worker.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import metadata
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from . import __version__
from .beat.cli import Runtime, commands
from .core.admission import rate_setting
from .core.app import App
from .core.control import registry_of
from .core.deadletters import REPLAYED_HEADER, describe, task_of
from .core.errors import AqueueError, ConfigurationError, OptionError
from .core.message import decode_result
from .core.protocols import CountsIds
from .core.remote import INSPECT_COMMANDS
from .core.urls import redact
from .monitor import dump
from .process import (
    EXIT_ERROR,
    EXIT_USAGE,
    LEVELS,
    CLIError,
    configure_logging,
    parse_level,
)
from .runner import WorkerOptions, can_exec, exec_worker, load_app, run_worker
from .runner import run as _run
from .supervisor import supervise
from .workflows.engine import DEADLINE_ID_SUFFIX

T = TypeVar("T")

cli = typer.Typer(
    name="aqueue",
    help="aqueue: an asyncio-native task queue. Run `aqueue worker proj.tasks:app` to start.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
list_cli = typer.Typer(
    help="List what the app knows: its queues or its tasks.",
    no_args_is_help=True,
)
cli.add_typer(list_cli, name="list")
dlq_cli = typer.Typer(
    help="Dead letters: list, show, replay, purge (docs/fleet.md).", no_args_is_help=True
)
cli.add_typer(dlq_cli, name="dlq")


# -- the app, given three ways ---------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aqueue {__version__}")
        raise typer.Exit()


@cli.callback()
def root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    app: Annotated[
        str | None,
        typer.Option(
            "-A", "--app", envvar="AQUEUE_APP", help="The app for every command (Celery's -A)."
        ),
    ] = None,
) -> None:
    """aqueue: an asyncio-native distributed task queue."""
    ctx.obj = app


AppArg = Annotated[
    str | None, typer.Argument(help="The app: module:attribute (proj.tasks:app) or a module.")
]
AppOpt = Annotated[
    str | None, typer.Option("-A", "--app", help="The app (Celery's -A), instead of APP.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _app_spec(ctx: typer.Context, *given: str | None) -> str:
    """The app as the command line names it: positional, then -A, then ``aqueue -A``."""
    for spec in (*given, ctx.obj):
        if isinstance(spec, str) and spec:
            return spec
    raise CLIError(
        f"give the app: aqueue {ctx.info_name} proj.tasks:app, aqueue {ctx.info_name} -A proj, "
        f"or aqueue -A proj {ctx.info_name}"
    )


def _split_app(
    ctx: typer.Context, values: list[str], what: str, app_option: str | None
) -> tuple[str, str]:
    """``[APP] THING`` positionals: (app spec, thing)."""
    if len(values) == 2:
        return _app_spec(ctx, values[0], app_option), values[1]
    if len(values) == 1:
        return _app_spec(ctx, app_option), values[0]
    raise CLIError(f"expected [APP] {what}, got {len(values)} arguments: {' '.join(values)}")


@contextmanager
def _errors() -> Iterator[None]:
    """One line on stderr and the exit status for what goes wrong (docs/cli.md)."""
    try:
        yield
    except (CLIError, ConfigurationError, OptionError) as exc:
        _fail(exc, EXIT_USAGE)
    except (AqueueError, OSError, TimeoutError) as exc:
        _fail(exc, EXIT_ERROR)


def _fail(exc: BaseException, status: int) -> NoReturn:
    text = str(exc) or type(exc).__name__
    typer.echo(f"aqueue: error: {text}", err=True)
    raise typer.Exit(status)


def _connected(app: App, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` with the app connected, on one event loop."""

    async def wrapped() -> T:
        async with app:
            return await main()

    return _run(wrapped)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, default=repr, ensure_ascii=False))


def known_queues(app: App) -> list[str]:
    """The queues an app's configuration sends to: its default queue, ``task_queues``, its
    tasks' queues and the queues of static ``task_routes``."""
    return app.router().named(app.tasks.values())


def _queue_list(app: App, queues: str | None, exclude: str | None = None) -> list[str]:
    names = _comma_list(queues) or known_queues(app)
    excluded = set(_comma_list(exclude))
    return [q for q in names if q not in excluded]


def _comma_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


# -- worker ----------------------------------------------------------------------------

_WORKER = "Worker Options"
_POOL = "Pool Options"
_QUEUES = "Queue Options"
_DAEMON = "Daemonization Options"


def _check_level(value: str) -> str:
    try:
        parse_level(value)
    except CLIError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


@cli.command()
def worker(
    ctx: typer.Context,
    app: AppArg = None,
    app_option: AppOpt = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            "-n",
            "--hostname",
            help="Node name, e.g. w1@%h; %h, %n, %d expand to host, name, domain.",
            rich_help_panel=_WORKER,
        ),
    ] = None,
    loglevel: Annotated[
        str,
        typer.Option(
            "-l",
            "--loglevel",
            callback=_check_level,
            help=f"Log level: {', '.join(LEVELS)} (any case).",
            rich_help_panel=_WORKER,
        ),
    ] = "WARNING",
    prefetch_multiplier: Annotated[
        int | None,
        typer.Option(
            "--prefetch-multiplier",
            min=1,
            help="Messages held per concurrency slot (default 1).",
            rich_help_panel=_WORKER,
        ),
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            "--prefetch",
            min=1,
            help="Messages held at once, running or waiting (instead of the multiplier).",
            rich_help_panel=_WORKER,
        ),
    ] = None,
    burst: Annotated[
        bool,
        typer.Option("--burst", help="Exit once the queues are empty.", rich_help_panel=_WORKER),
    ] = False,
    task_events: Annotated[
        bool,
        typer.Option(
            "-E",
            "--task-events",
            help="Send monitoring events (`aqueue events` shows them).",
            rich_help_panel=_WORKER,
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve this worker's Prometheus metrics on this port (aqueue[prometheus]).",
            rich_help_panel=_WORKER,
        ),
    ] = None,
    metrics_address: Annotated[
        str,
        typer.Option(
            "--metrics-address",
            help="The address --metrics-port listens on.",
            rich_help_panel=_WORKER,
        ),
    ] = "127.0.0.1",
    shutdown_timeout: Annotated[
        float | None,
        typer.Option(
            "--shutdown-timeout",
            min=0,
            help="Seconds running tasks get on SIGTERM (default 30).",
            rich_help_panel=_WORKER,
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "-c",
            "--concurrency",
            min=1,
            help="Tasks running at once (default 100).",
            rich_help_panel=_POOL,
        ),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            "--time-limit",
            min=0,
            help="Hard time limit of every task, seconds (a task's own limit wins).",
            rich_help_panel=_POOL,
        ),
    ] = None,
    soft_time_limit: Annotated[
        float | None,
        typer.Option(
            "--soft-time-limit",
            min=0,
            help="Soft time limit of every task, seconds (a task's own limit wins).",
            rich_help_panel=_POOL,
        ),
    ] = None,
    max_tasks_per_child: Annotated[
        int | None,
        typer.Option(
            "--max-tasks-per-child",
            min=1,
            help="Replace the worker process after this many tasks (and offload processes).",
            rich_help_panel=_POOL,
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            min=1,
            help="Run this many worker processes (each with -c), restarted if they die.",
            rich_help_panel=_POOL,
        ),
    ] = None,
    autoscale: Annotated[
        str | None,
        typer.Option(
            "--autoscale",
            help="MAX,MIN: between MIN and MAX worker processes, as the queues' depth asks.",
            rich_help_panel=_POOL,
        ),
    ] = None,
    max_memory_per_child: Annotated[
        int | None,
        typer.Option(
            "--max-memory-per-child",
            min=1,
            help="Replace the worker process once its resident memory passes this many KiB.",
            rich_help_panel=_POOL,
        ),
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option(
            "-Q",
            "--queues",
            help="Comma-separated queues to consume, first ones first.",
            rich_help_panel=_QUEUES,
        ),
    ] = None,
    exclude_queues: Annotated[
        str | None,
        typer.Option(
            "-X",
            "--exclude-queues",
            help="Comma-separated queues not to consume.",
            rich_help_panel=_QUEUES,
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "-D",
            "--detach",
            help="Run in the background (logs to %n.log, pid in %n.pid unless given).",
            rich_help_panel=_DAEMON,
        ),
    ] = False,
    logfile: Annotated[
        str | None,
        typer.Option(
            "-f",
            "--logfile",
            help="Append the log to this file (%n, %h, %d expand) instead of stderr.",
            rich_help_panel=_DAEMON,
        ),
    ] = None,
    pidfile: Annotated[
        str | None,
        typer.Option(
            "--pidfile",
            help="Write the pid here; refuse to start if a running process holds it.",
            rich_help_panel=_DAEMON,
        ),
    ] = None,
    beat: Annotated[
        bool,
        typer.Option(
            "-B",
            "--beat",
            help="Also run a periodic task scheduler (any number may).",
            rich_help_panel="Embedded Beat Options",
        ),
    ] = False,
    django: Annotated[
        bool,
        typer.Option(
            "--django",
            help="Set up Django (DJANGO_SETTINGS_MODULE) before importing the app.",
        ),
    ] = False,
) -> None:
    """Start a worker.

    \b
    aqueue worker proj.tasks:app -l INFO
    aqueue worker -A proj -c 50 -Q celery,priority.high -n w1@%h
    aqueue -A proj worker --max-tasks-per-child 1000 -D --logfile w1.log --pidfile w1.pid
    aqueue worker -A proj --processes 4 -c 50 -n w1@%h
    DJANGO_SETTINGS_MODULE=proj.settings aqueue worker proj.aqueue:app --django
    """
    if prefetch is not None and prefetch_multiplier is not None:
        _fail(
            CLIError("give --prefetch (a count) or --prefetch-multiplier (per slot), not both"),
            EXIT_USAGE,
        )
    with _errors():
        spec = _app_spec(ctx, app, app_option)
        bounds = _autoscale_bounds(autoscale, processes)
    options = WorkerOptions(
        app=spec,
        queues=_comma_list(queues) or None,
        exclude_queues=_comma_list(exclude_queues) or None,
        concurrency=concurrency,
        prefetch=prefetch,
        prefetch_multiplier=prefetch_multiplier,
        hostname=hostname,
        loglevel=loglevel,
        logfile=logfile,
        pidfile=pidfile,
        detach=detach,
        burst=burst,
        shutdown_timeout=shutdown_timeout,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        restarts=0,
        beat=beat,
        task_events=task_events,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        django=django,
        processes=processes,
        autoscale=bounds,
    )
    if _handover and can_exec():
        exec_worker(options)  # a fresh interpreter without the CLI stack (aqueue.runner)
    status = supervise(options) if processes or bounds else run_worker(options)
    if status:
        raise typer.Exit(status)


# -- sending and results ---------------------------------------------------------------


def _autoscale_bounds(text: str | None, processes: int | None) -> list[int] | None:
    """``--autoscale MAX,MIN`` as ``[MAX, MIN]`` (Celery's order; MIN 1 when left out)."""
    if text is None:
        return None
    if processes is not None:
        raise CLIError("give --processes (a fixed number) or --autoscale MAX,MIN, not both")
    maximum, _, minimum = text.partition(",")
    try:
        bounds = [int(maximum), int(minimum or 1)]
    except ValueError:
        raise CLIError(f"bad --autoscale {text!r}: use MAX,MIN, e.g. 8,2") from None
    if not 1 <= bounds[1] <= bounds[0]:
        raise CLIError(f"bad --autoscale {text!r}: need 1 <= MIN <= MAX")
    return bounds


def _json_arg(text: str | None, kind: type, option: str) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{option} is not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, kind):
        expected = "a JSON list, e.g. '[2, 2]'" if kind is list else "a JSON object"
        raise CLIError(f"{option} must be {expected}, not {type(value).__name__}")
    return value


def _eta(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CLIError(
            f"--eta {text!r} is not an ISO 8601 time, e.g. 2030-01-01T12:00:00+00:00"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()  # naive: local time


@cli.command()
def call(
    ctx: typer.Context,
    values: Annotated[list[str], typer.Argument(metavar="[APP] NAME", help="The task's name.")],
    app_option: AppOpt = None,
    args: Annotated[
        str | None, typer.Option("-a", "--args", help="Positional arguments, a JSON list.")
    ] = None,
    kwargs: Annotated[
        str | None, typer.Option("-k", "--kwargs", help="Keyword arguments, a JSON object.")
    ] = None,
    countdown: Annotated[
        float | None, typer.Option("--countdown", help="Run it this many seconds from now.")
    ] = None,
    eta: Annotated[
        str | None, typer.Option("--eta", help="Run it at this ISO 8601 time (naive: local).")
    ] = None,
    expires: Annotated[
        float | None, typer.Option("--expires", help="Seconds after which it is not run.")
    ] = None,
    queue: Annotated[str | None, typer.Option("-Q", "--queue", help="The queue.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a task by name and print its id (Celery's `celery call`).

    \b
    aqueue call proj:app proj.add --args '[2, 2]'
    aqueue -A proj call proj.add --kwargs '{"x": 2, "y": 2}' --countdown 10
    """
    with _errors():
        spec, name = _split_app(ctx, values, "NAME", app_option)
        positional = _json_arg(args, list, "--args")
        keywords = _json_arg(kwargs, dict, "--kwargs")
        options: dict[str, Any] = {}
        if countdown is not None:
            options["countdown"] = countdown
        when = _eta(eta)
        if when is not None:
            options["eta"] = when
        if expires is not None:
            options["expires"] = expires
        if queue is not None:
            options["queue"] = queue
        the_app = load_app(spec)

        async def send() -> str:
            handle = await the_app.send_task(name, args=positional, kwargs=keywords, **options)
            return handle.id

        task_id = _connected(the_app, send)
    if as_json:
        _print_json({"id": task_id, "task": name})
    else:
        typer.echo(task_id)


@cli.command()
def result(
    ctx: typer.Context,
    values: Annotated[list[str], typer.Argument(metavar="[APP] TASK_ID", help="The task's id.")],
    app_option: AppOpt = None,
    traceback: Annotated[
        bool, typer.Option("-t", "--traceback", help="Print a failure's traceback.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print a task's state and result.

    \b
    aqueue result proj:app 5c0b...
    aqueue -A proj result 5c0b... --traceback
    """
    with _errors():
        spec, task_id = _split_app(ctx, values, "TASK_ID", app_option)
        the_app = load_app(spec)

        async def read() -> dict[str, Any]:
            backend = await the_app.result_backend()
            raw = await backend.get(task_id)
            if raw is None:
                return {"id": task_id, "state": "PENDING", "stored": False}
            record = decode_result(raw)
            handle = the_app.AsyncResult(task_id)
            await handle.state()
            error = record.error
            return {
                "id": task_id,
                "state": record.state,
                "stored": True,
                "task": record.task,
                "attempt": record.attempt,
                "retries": record.retries,
                "worker": record.worker,
                "date_done": record.date_done,
                "result": None if isinstance(handle.result, BaseException) else handle.result,
                "error": None
                if error is None
                else {"type": error.type, "message": error.message, "traceback": error.traceback},
            }

        found = _connected(the_app, read)
    if as_json:
        _print_json(found)
        return
    if not found["stored"]:
        typer.echo(f"{task_id} PENDING (no record: unknown, not started, or expired)")
        return
    line = f"{task_id} {found['state']} {found['task']} attempt={found['attempt']}"
    error = found["error"]
    if error is not None:
        typer.echo(f"{line} {error['type']}: {error['message']}")
        if traceback and error["traceback"]:
            typer.echo(error["traceback"].rstrip())
    else:
        typer.echo(f"{line} {found['result']!r}")


# -- queues -----------------------------------------------------------------------------


@cli.command()
def purge(
    ctx: typer.Context,
    app: AppArg = None,
    app_option: AppOpt = None,
    queues: Annotated[
        str | None,
        typer.Option("-Q", "--queues", help="Queues to purge (default: every queue it knows)."),
    ] = None,
    exclude_queues: Annotated[
        str | None, typer.Option("-X", "--exclude-queues", help="Queues to leave alone.")
    ] = None,
    force: Annotated[bool, typer.Option("-f", "--force", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete waiting messages (ready and delayed; not those being processed)."""
    with _errors():
        the_app = load_app(_app_spec(ctx, app, app_option))
        the_app.import_includes()
        names = _queue_list(the_app, queues, exclude_queues)
        if not names:
            raise CLIError("no queue left to purge (-Q / -X)")
    if not force and not typer.confirm(
        f"Purge {', '.join(names)} on {redact(the_app.broker_url)}?"
    ):
        typer.echo("aborted: nothing purged", err=True)
        raise typer.Exit(EXIT_ERROR)

    async def main() -> dict[str, int]:
        return {q: await the_app.broker.purge(q) for q in names}

    with _errors():
        counts = _connected(the_app, main)
    if as_json:
        _print_json({"purged": counts, "total": sum(counts.values())})
    else:
        for q, n in counts.items():
            typer.echo(f"purged {n} message(s) from {q}")


@cli.command()
def status(
    ctx: typer.Context,
    app: AppArg = None,
    app_option: AppOpt = None,
    queues: Annotated[
        str | None,
        typer.Option("-Q", "--queues", help="Queues to show (default: every queue it knows)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the workers, queue sizes (users' messages; internal timers apart) and recent
    dead letters. A worker whose heartbeat lapsed is marked MISSING."""
    with _errors():
        the_app = load_app(_app_spec(ctx, app, app_option))
        the_app.import_includes()
        names = _queue_list(the_app, queues)

        async def main() -> dict[str, Any]:
            broker = the_app.broker
            counts: dict[str, dict[str, int | None]] = {}
            for q in names:
                size = await broker.size(q)
                timers = (
                    await broker.count_ids(q, DEADLINE_ID_SUFFIX)
                    if isinstance(broker, CountsIds)
                    else None
                )
                counts[q] = {
                    "messages": size - timers if timers is not None else size,
                    "timers": timers,
                }
            letters = await broker.dead_letters(limit=10)
            workers = (
                [w.to_dict() for w in await the_app.control.workers()]
                if await registry_of(the_app) is not None
                else None
            )
            return {
                "broker": redact(the_app.broker_url),
                "workers": workers,
                "queues": counts,
                "dead_letters": [
                    {"id": d.id, "queue": d.queue, "reason": d.reason, "at": d.at} for d in letters
                ],
            }

        found = _connected(the_app, main)
    if as_json:
        _print_json(found)
        return
    typer.echo(f"broker {found['broker']}")
    if found["workers"] is None:
        typer.echo("workers: not tracked on this broker")
    else:
        now = time.time()
        for w in found["workers"]:
            mark = "MISSING " if w["missing"] else ""
            typer.echo(
                f"worker {mark}{w['hostname']} id={w['id']} host={w['host']} pid={w['pid']} "
                f"queues={','.join(w['queues'])} concurrency={w['concurrency']} "
                f"holding={w['held']} seen {now - w['last_seen']:.1f}s ago "
                f"up {now - w['started']:.0f}s"
            )
    for q, c in found["queues"].items():
        if c["timers"] is None:
            timers = "; chord deadline timers included (this broker cannot tell them apart)"
        elif c["timers"]:
            timers = f" (+ {c['timers']} chord deadline timer(s))"
        else:
            timers = ""
        typer.echo(f"queue {q}: {c['messages']} message(s){timers}")
    for d in found["dead_letters"]:
        typer.echo(f"dead letter {d['id']} queue={d['queue']} reason={d['reason']}")


# -- monitoring events (aqueue/monitor.py) -----------------------------------------------


@cli.command()
def events(
    ctx: typer.Context,
    app: AppArg = None,
    app_option: AppOpt = None,
    since: Annotated[
        float | None,
        typer.Option("--since", min=0, help="First the events kept from this many seconds ago."),
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "-t", "--type", help="Only these event types (globs, e.g. 'task-*'; repeatable)."
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Exit after this many events.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Exit after this many seconds.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the monitoring events live, one per line (workers send them with -E).

    \b
    aqueue events -A proj
    aqueue events -A proj --json --since 300 --type 'task-*'
    aqueue events -A proj --count 10 --timeout 30
    """
    with _errors():
        the_app = load_app(_app_spec(ctx, app, app_option))
        patterns = [p for value in types or () for p in _comma_list(value)]

        async def main() -> int:
            return await dump(
                the_app,
                typer.echo,
                json_lines=as_json,
                since=since,
                types=patterns,
                count=count,
                timeout=timeout,
                on_ready=lambda: typer.echo(
                    f"aqueue events: watching {redact(the_app.broker_url)} (Ctrl-C to stop)",
                    err=True,
                ),
            )

        try:
            _connected(the_app, main)
        except KeyboardInterrupt:  # Ctrl-C: the usual way to stop watching
            return


# -- the dashboard (aqueue/web) -----------------------------------------------------------


@cli.command()
def dashboard(
    ctx: typer.Context,
    app: AppArg = None,
    app_option: AppOpt = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 5555,
    address: Annotated[
        str,
        typer.Option("--address", help="Address to bind (another than loopback: say so here)."),
    ] = "127.0.0.1",
    basic_auth: Annotated[
        str | None,
        typer.Option(
            "--basic-auth",
            envvar="AQUEUE_DASHBOARD_BASIC_AUTH",
            help="Require HTTP basic auth, user:password.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="AQUEUE_DASHBOARD_TOKEN", help="Accept this bearer token."),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Show, never act (no revoke, shutdown, ...).")
    ] = False,
    show_arguments: Annotated[
        bool,
        typer.Option("--show-arguments", help="Show tasks' args, kwargs and results."),
    ] = False,
    max_tasks: Annotated[
        int, typer.Option("--max-tasks", min=1, help="Tasks kept in memory.")
    ] = 10_000,
) -> None:
    """Serve the dashboard and Flower's REST API (needs aqueue[web]; workers run with -E).

    \b
    aqueue dashboard -A proj                      # http://127.0.0.1:5555
    aqueue dashboard -A proj --read-only --basic-auth admin:secret --address 0.0.0.0
    """
    with _errors():
        if basic_auth is not None and ":" not in basic_auth:
            raise CLIError("--basic-auth takes user:password")
        the_app = load_app(_app_spec(ctx, app, app_option))
        the_app.import_includes()
        try:
            from aqueue.web.server import serve
        except ImportError as exc:
            raise CLIError(
                f"the dashboard needs the web extra: pip install 'aqueue[web]' ({exc})"
            ) from None
        typer.echo(
            f"aqueue dashboard: http://{address}:{port} for {redact(the_app.broker_url)}"
            f"{' (read-only)' if read_only else ''}",
            err=True,
        )
        serve(
            the_app,
            address=address,
            port=port,
            read_only=read_only,
            show_arguments=show_arguments,
            basic_auth=basic_auth,
            token=token,
            max_tasks=max_tasks,
        )


# -- dead letters ------------------------------------------------------------------------

DlqQueueOpt = Annotated[
    str | None, typer.Option("-Q", "--queue", help="Only this queue's dead letters.")
]


def _dlq_app(ctx: typer.Context, app: str | None, app_option: str | None) -> App:
    the_app = load_app(_app_spec(ctx, app, app_option))
    the_app.import_includes()
    return the_app


@dlq_cli.command("list")
def dlq_list(
    ctx: typer.Context,
    app: AppArg = None,
    app_option: AppOpt = None,
    queue: DlqQueueOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The most recent dead letters, newest first."""
    with _errors():
        the_app = _dlq_app(ctx, app, app_option)

        async def main() -> list[dict[str, Any]]:
            letters = await the_app.control.dead_letters.list(queue, limit)
            out = []
            for letter in letters:
                task, headers = task_of(letter, the_app.conf.max_message_bytes)
                out.append(
                    {
                        "id": letter.id,
                        "queue": letter.queue,
                        "reason": letter.reason,
                        "at": letter.at,
                        "size": letter.size,
                        "task": task,
                        "replayed": int(headers.get(REPLAYED_HEADER, "0") or 0),
                    }
                )
            return out

        rows = _connected(the_app, main)
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        when = datetime.fromtimestamp(r["at"]).isoformat(timespec="seconds")
        replayed = f" replayed={r['replayed']}" if r["replayed"] else ""
        typer.echo(
            f"{r['id']} queue={r['queue']} reason={r['reason']} task={r['task'] or '?'} "
            f"at={when} size={r['size']}{replayed}"
        )
    if not rows:
        typer.echo("no dead letters")


@dlq_cli.command("show")
def dlq_show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task id.")],
    app: AppArg = None,
    app_option: AppOpt = None,
    queue: DlqQueueOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One dead letter (the newest of that id), with its body."""
    with _errors():
        the_app = _dlq_app(ctx, app, app_option)

        async def main() -> dict[str, Any]:
            letter = await the_app.control.dead_letters.get(task_id, queue)
            task, headers = task_of(letter, the_app.conf.max_message_bytes)
            return {**describe(letter), "task": task, "headers": headers}

        found = _connected(the_app, main)
    if as_json:
        _print_json(found)
        return
    for key in ("id", "queue", "reason", "task", "at", "size", "kept", "headers"):
        typer.echo(f"{key}: {found[key]}")
    typer.echo(f"body ({found['body_encoding']}): {found['body']}")


@dlq_cli.command("replay")
def dlq_replay(
    ctx: typer.Context,
    task_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="The task id (or --all).")
    ] = None,
    app: AppArg = None,
    app_option: AppOpt = None,
    queue: DlqQueueOpt = None,
    every: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put dead letters back in their queue as new messages (fresh delivery count)."""
    with _errors():
        if (task_id is None) == (not every):
            raise CLIError("give a dead letter's ID or --all (not both)")
        the_app = _dlq_app(ctx, app, app_option)

        async def main() -> dict[str, Any]:
            letters = the_app.control.dead_letters
            if task_id is not None:
                await letters.replay(task_id, queue)
                return {"replayed": 1, "errors": []}
            replayed, errors = await letters.replay_all(queue)
            return {"replayed": replayed, "errors": errors}

        done = _connected(the_app, main)
    if as_json:
        _print_json(done)
    else:
        typer.echo(f"replayed {done['replayed']} dead letter(s)")
        for error in done["errors"]:
            typer.echo(f"not replayed: {error}", err=True)
    if done["errors"]:
        raise typer.Exit(EXIT_ERROR)


@dlq_cli.command("purge")
def dlq_purge(
    ctx: typer.Context,
    app: AppArg = None,
    app_option: AppOpt = None,
    queue: DlqQueueOpt = None,
    force: Annotated[bool, typer.Option("-f", "--force", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters (of every queue, or of -Q)."""
    with _errors():
        the_app = _dlq_app(ctx, app, app_option)
    which = f"the dead letters of {queue}" if queue else "every dead letter"
    if not force and not typer.confirm(f"Delete {which} on {redact(the_app.broker_url)}?"):
        typer.echo("aborted: nothing deleted", err=True)
        raise typer.Exit(EXIT_ERROR)

    async def main() -> int:
        return await the_app.control.dead_letters.purge(queue)

    with _errors():
        count = _connected(the_app, main)
    if as_json:
        _print_json({"purged": count})
    else:
        typer.echo(f"deleted {count} dead letter(s)")


# -- what the app knows ------------------------------------------------------------------


@list_cli.command("queues")
def list_queues(
    ctx: typer.Context, app: AppArg = None, app_option: AppOpt = None, as_json: JsonOpt = False
) -> None:
    """The queues the app's configuration names: the default queue, its tasks' queues."""
    with _errors():
        the_app = load_app(_app_spec(ctx, app, app_option))
        the_app.import_includes()
    default = the_app.conf.task_default_queue
    rows = [
        {
            "queue": q,
            "default": q == default,
            "tasks": sorted(
                n
                for n, t in the_app.tasks.items()
                if (t.queue or default) == q and not n.startswith("aqueue.")
            ),
        }
        for q in known_queues(the_app)
    ]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        mark = " (default)" if row["default"] else ""
        tasks = row["tasks"]
        assert isinstance(tasks, list)
        typer.echo(f"{row['queue']}{mark}: {len(tasks)} task(s)")


@list_cli.command("tasks")
def list_tasks(
    ctx: typer.Context,
    app: AppArg = None,
    app_option: AppOpt = None,
    builtins: Annotated[
        bool, typer.Option("--all", help="Also aqueue's built-in tasks (aqueue.*).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The registered tasks, with the options a worker applies to them."""
    with _errors():
        the_app = load_app(_app_spec(ctx, app, app_option))
        the_app.import_includes()
    default = the_app.conf.task_default_queue
    rows = []
    for name in sorted(the_app.tasks):
        if name.startswith("aqueue.") and not builtins:
            continue
        t = the_app.tasks[name]
        rows.append(
            {
                "name": name,
                "queue": t.queue or default,
                "kind": "async" if t.is_async else f"def ({t.offload})",
                "max_retries": t.max_retries,
                "time_limit": t.time_limit,
                "soft_time_limit": t.soft_time_limit,
                "rate_limit": t.rate_limit,
                "concurrency_limit": t.concurrency_limit,
            }
        )
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        extras = [
            f"{key}={row[key]}"
            for key in ("time_limit", "soft_time_limit", "rate_limit", "concurrency_limit")
            if row[key] is not None
        ]
        typer.echo(f"{row['name']}  [{row['kind']}, queue {row['queue']}] {' '.join(extras)}")


# -- report ------------------------------------------------------------------------------

#: distributions whose versions `aqueue report` prints (when installed)
REPORTED = ("msgspec", "redis", "hiredis", "aio-pika", "aiormq", "uvloop", "typer", "click")


@cli.command()
def report(
    ctx: typer.Context, app: AppArg = None, app_option: AppOpt = None, as_json: JsonOpt = False
) -> None:
    """Versions, platform, and the app's settings (passwords and secrets redacted): what
    a bug report needs."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "aqueue": __version__}
    for dist in REPORTED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    data: dict[str, Any] = {
        "versions": versions,
        "platform": platform.platform(),
        "python": sys.executable,
    }
    spec = app or app_option or ctx.obj
    if spec:
        with _errors():
            the_app = load_app(spec)
            the_app.import_includes()
        backend = the_app.backend_url
        data["app"] = {
            "name": the_app.name,
            "spec": spec,
            "broker": redact(the_app.broker_url),
            "backend": redact(backend) if backend else None,
            "tasks": sorted(the_app.tasks),
            "settings": the_app.conf.as_dict(),
        }
    if as_json:
        _print_json(data)
        return
    lines = [f"{name}: {v or 'not installed'}" for name, v in versions.items()]
    lines += [f"platform: {data['platform']}", f"interpreter: {data['python']}"]
    if "app" in data:
        info = data["app"]
        lines += [
            "",
            f"app: {info['name']} ({info['spec']})",
            f"broker: {info['broker']}",
            f"backend: {info['backend'] or 'none'}",
            f"tasks: {', '.join(info['tasks']) or '(none)'}",
            "settings:",
        ]
        lines += [f"  {k} = {v!r}" for k, v in info["settings"].items()]
    typer.echo("\n".join(lines))


# -- inspect and control: commands to running workers (docs/fleet.md) ------------------

DestinationOpt = Annotated[
    str | None,
    typer.Option(
        "-d", "--destination", help="Only these workers: node names or worker ids, comma-separated."
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "-t",
        "--timeout",
        min=0.01,
        help="Seconds to wait for replies (ends early once every live worker answered).",
    ),
]


def _fleet_app(ctx: typer.Context, app_option: str | None) -> App:
    the_app = load_app(_app_spec(ctx, app_option))
    the_app.import_includes()
    return the_app


def _print_replies(replies: dict[str, Any], as_json: bool) -> None:
    """Celery's layout: ``-> node: OK`` then the value, indented; an error as ``ERROR``."""
    if as_json:
        _print_json(replies)
    else:
        for node, value in replies.items():
            failed = isinstance(value, dict) and set(value) == {"error"}
            typer.echo(f"->  {node}: {'ERROR' if failed else 'OK'}")
            if failed:
                typer.echo(f"    {value['error']}")
            elif isinstance(value, dict) and set(value) <= {"ok", "stopped", "revoked"}:
                typer.echo(f"    {value.get('ok', '')}")
            elif isinstance(value, list):
                if not value:
                    typer.echo("    - empty -")
                for item in value:
                    typer.echo(f"    * {json.dumps(item, default=repr)}")
            else:
                typer.echo(
                    f"    {json.dumps(value, default=repr, indent=2)}".replace("\n", "\n    ")
                )
        n = len(replies)
        typer.echo(f"\n{n} node{'' if n == 1 else 's'} online.")
    if not replies:
        if not as_json:
            typer.echo("aqueue: error: no worker replied in time", err=True)
        raise typer.Exit(EXIT_ERROR)


@cli.command()
def inspect(
    ctx: typer.Context,
    command: Annotated[str, typer.Argument(help=f"One of: {', '.join(INSPECT_COMMANDS)}.")],
    items: Annotated[
        list[str] | None,
        typer.Argument(help="registered: task attributes to show (e.g. rate_limit)."),
    ] = None,
    app_option: AppOpt = None,
    destination: DestinationOpt = None,
    timeout: TimeoutOpt = 1.0,
    include_defaults: Annotated[
        bool, typer.Option("--include-defaults", help="conf: every setting, not only those set.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask running workers (Celery's inspect): ping, active, reserved, scheduled,
    registered, stats, active_queues, conf, revoked. Exit status 1 when none replied."""
    with _errors():
        if command not in INSPECT_COMMANDS:
            raise CLIError(
                f"unknown inspect command {command!r}; one of: {', '.join(INSPECT_COMMANDS)}"
            )
        the_app = _fleet_app(ctx, app_option)
        dest = _comma_list(destination) or None

        async def main() -> dict[str, Any]:
            inspector = the_app.control.inspect(dest, timeout=timeout)
            if command == "registered":
                return await inspector.registered(*(items or ()))
            if command == "conf":
                return await inspector.conf(with_defaults=include_defaults)
            reader: Callable[[], Coroutine[Any, Any, dict[str, Any]]] = getattr(inspector, command)
            return await reader()

        replies = _connected(the_app, main)
    _print_replies(replies, as_json)


#: ``aqueue control`` commands: (positional argument names, required count, help)
_CONTROL_COMMANDS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "revoke": (("task_id...",), 1, "revoke TASK_ID... [--terminate]"),
    "revoke_by_name": (("pattern",), 1, "revoke_by_name PATTERN [--terminate] (a glob)"),
    "rate_limit": (("task_name", "rate_limit"), 2, "rate_limit TASK RATE (10/m; 0: none)"),
    "time_limit": (("task_name", "soft", "hard"), 2, "time_limit TASK SOFT [HARD] (seconds)"),
    "add_consumer": (("queue",), 1, "add_consumer QUEUE"),
    "cancel_consumer": (("queue",), 1, "cancel_consumer QUEUE"),
    "shutdown": ((), 0, "shutdown"),
    "pool_grow": (("n",), 0, "pool_grow [N]"),
    "pool_shrink": (("n",), 0, "pool_shrink [N]"),
    "enable_events": ((), 0, "enable_events"),
    "disable_events": ((), 0, "disable_events"),
}


def _seconds_or_none(text: str, what: str) -> float | None:
    if text.lower() in ("none", "0", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise CLIError(f"{what} must be seconds (or none), got {text!r}") from None
    if not 0 < value < float("inf"):
        raise CLIError(f"{what} must be positive seconds, got {text!r}")
    return value


def _control_arguments(command: str, args: list[str]) -> dict[str, Any]:
    """A control command's positional arguments as the worker's handler takes them."""
    names, required, usage = _CONTROL_COMMANDS[command]
    variadic = bool(names) and names[0].endswith("...")
    if len(args) < required or (not variadic and len(args) > len(names)):
        raise CLIError(f"usage: aqueue control {usage}")
    if command == "revoke":
        return {"task_id": args}
    if command == "time_limit":
        soft = _seconds_or_none(args[1], "soft")
        hard = _seconds_or_none(args[2], "hard") if len(args) > 2 else None
        return {"task_name": args[0], "soft": soft, "hard": hard}
    if command in ("pool_grow", "pool_shrink"):
        try:
            n = int(args[0]) if args else 1
        except ValueError:
            raise CLIError(f"usage: aqueue control {usage} (N a whole number)") from None
        if n < 1:
            raise CLIError(f"N must be at least 1, got {n}")
        return {"n": n}
    return dict(zip(names, args, strict=False))


@cli.command()
def control(
    ctx: typer.Context,
    command: Annotated[str, typer.Argument(help=f"One of: {', '.join(_CONTROL_COMMANDS)}.")],
    args: Annotated[list[str] | None, typer.Argument(help="The command's arguments.")] = None,
    app_option: AppOpt = None,
    destination: DestinationOpt = None,
    timeout: TimeoutOpt = 1.0,
    terminate: Annotated[
        bool, typer.Option("--terminate", help="revoke: also stop running tasks.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Steer running workers (Celery's control): revoke, revoke_by_name, rate_limit,
    time_limit, add_consumer, cancel_consumer, shutdown, pool_grow, pool_shrink,
    enable_events, disable_events. Exit status 1 when no worker replied."""
    with _errors():
        if command not in _CONTROL_COMMANDS:
            raise CLIError(
                f"unknown control command {command!r}; one of: {', '.join(_CONTROL_COMMANDS)}"
            )
        arguments = _control_arguments(command, list(args or ()))
        if command in ("revoke", "revoke_by_name"):
            arguments["terminate"] = terminate
        elif terminate:
            raise CLIError("--terminate goes with revoke and revoke_by_name")
        the_app = _fleet_app(ctx, app_option)
        dest = _comma_list(destination) or None

        async def main() -> list[dict[str, Any]]:
            control = the_app.control
            if command == "revoke":  # stored first: it holds for tasks still queued
                await control.store_revocations(arguments["task_id"], terminate=terminate)
            elif command == "rate_limit":  # a bad rate is refused here, not by each worker
                arguments["rate_limit"] = rate_setting(arguments["rate_limit"])
            return await control.broadcast(
                command, arguments, destination=dest, reply=True, timeout=timeout
            )

        replies = _connected(the_app, main)
    merged: dict[str, Any] = {}
    for one in replies:
        merged.update(one)
    _print_replies(merged, as_json)


# `aqueue beat ...`: the scheduler and its entries (aqueue/beat/cli.py)
def _log_at(level: str) -> None:
    """Log to stderr at a level name (Celery's, any case)."""
    configure_logging(parse_level(level))


cli.add_typer(commands(Runtime(load_app, _log_at, _run, (CLIError,))))

#: set by main(): the worker command may replace this process (not when typer's test
#: runner, or a program embedding the CLI, calls `cli` in its own process)
_handover = False


def main() -> None:
    """Entry point of the ``aqueue`` script."""
    global _handover
    _handover = True
    cli()


if __name__ == "__main__":
    main()
