"""The ``aqueue`` command: thin typer wrappers over the core.

Configures logging (the library never does), loads the app from ``module:attr``, and turns
configuration mistakes into one-line errors naming the fix instead of tracebacks.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import __version__
from .beat.cli import Runtime, commands
from .core.app import App
from .core.errors import AqueueError
from .core.message import decode_result
from .core.urls import redact
from .runner import (
    CLIError,
    WorkerOptions,
    can_exec,
    configure_logging,
    exec_worker,
    load_app,
    run_worker,
)
from .runner import run as _run

cli = typer.Typer(
    name="aqueue",
    help="aqueue: an asyncio-native task queue. Run `aqueue worker proj.tasks:app` to start.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _resolve_app(app: str | None, app_option: str | None) -> App:
    spec = app or app_option
    if not spec:
        raise CLIError("give the app: aqueue worker proj.tasks:app (or -A proj.tasks)")
    return load_app(spec)


def _fail(exc: BaseException) -> None:
    typer.echo(f"aqueue: error: {exc}", err=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aqueue {__version__}")
        raise typer.Exit()


@cli.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """aqueue: an asyncio-native distributed task queue."""


AppArg = Annotated[
    str | None, typer.Argument(help="The app as module:attribute, e.g. proj.tasks:app.")
]
AppOpt = Annotated[str | None, typer.Option("-A", "--app", help="The app (Celery's -A).")]


@cli.command()
def worker(
    app: AppArg = None,
    app_option: AppOpt = None,
    concurrency: Annotated[
        int | None,
        typer.Option("-c", "--concurrency", min=1, help="Tasks running at once (default 100)."),
    ] = None,
    queues: Annotated[
        str | None, typer.Option("-Q", "--queues", help="Comma-separated queues, first ones first.")
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            "-n", "--hostname", help="Node name; %h, %n, %d expand to host, name, domain."
        ),
    ] = None,
    loglevel: Annotated[str, typer.Option("-l", "--loglevel", help="Log level.")] = "warning",
    prefetch: Annotated[
        int | None,
        typer.Option("--prefetch", min=1, help="Messages held at once, running or waiting."),
    ] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queues are empty.")] = False,
    shutdown_timeout: Annotated[
        float | None,
        typer.Option("--shutdown-timeout", min=0, help="Seconds running tasks get on SIGTERM."),
    ] = None,
    beat: Annotated[
        bool,
        typer.Option("-B", "--beat", help="Also run a periodic task scheduler (any number may)."),
    ] = False,
) -> None:
    """Start a worker."""
    spec = app or app_option
    if not spec:
        _fail(CLIError("give the app: aqueue worker proj.tasks:app (or -A proj.tasks)"))
        return
    options = WorkerOptions(
        app=spec,
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        concurrency=concurrency,
        prefetch=prefetch,
        hostname=hostname,
        loglevel=loglevel,
        burst=burst,
        shutdown_timeout=shutdown_timeout,
        beat=beat,
    )
    if _handover and can_exec():
        exec_worker(options)  # a fresh interpreter without the CLI stack (aqueue.runner)
    status = run_worker(options)
    if status:
        raise typer.Exit(status)


@cli.command()
def result(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    app: Annotated[str | None, typer.Option("-A", "--app", help="The app.")] = None,
) -> None:
    """Print a task's state and result."""
    try:
        the_app = _resolve_app(None, app)
    except (CLIError, AqueueError) as exc:
        _fail(exc)
        return

    async def main() -> str:
        async with the_app:
            backend = await the_app.result_backend()
            raw = await backend.get(task_id)
            if raw is None:
                return f"{task_id} PENDING (no record)"
            record = decode_result(raw)
            handle = the_app.AsyncResult(task_id)
            await handle.state()
            shown = handle.result
            return f"{task_id} {record.state} attempt={record.attempt} {shown!r}"

    try:
        typer.echo(_run(main))
    except AqueueError as exc:
        _fail(exc)


@cli.command()
def purge(
    app: AppArg = None,
    app_option: AppOpt = None,
    queues: Annotated[str | None, typer.Option("-Q", "--queues", help="Queues to purge.")] = None,
    force: Annotated[bool, typer.Option("-f", "--force", help="Do not ask.")] = False,
) -> None:
    """Delete waiting messages (not those being processed)."""
    try:
        the_app = _resolve_app(app, app_option)
    except (CLIError, AqueueError) as exc:
        _fail(exc)
        return
    names = [q for q in (queues or the_app.conf.task_default_queue).split(",") if q]
    if not force and not typer.confirm(
        f"Purge {', '.join(names)} on {redact(the_app.broker_url)}?"
    ):
        raise typer.Exit(1)

    async def main() -> int:
        async with the_app:
            return sum([await the_app.broker.purge(q) for q in names])

    typer.echo(f"purged {_run(main)} message(s)")


@cli.command()
def status(
    app: AppArg = None,
    app_option: AppOpt = None,
    queues: Annotated[str | None, typer.Option("-Q", "--queues")] = None,
) -> None:
    """Print queue sizes and recent dead letters."""
    try:
        the_app = _resolve_app(app, app_option)
    except (CLIError, AqueueError) as exc:
        _fail(exc)
        return
    names = [q for q in (queues or the_app.conf.task_default_queue).split(",") if q]

    async def main() -> list[str]:
        async with the_app:
            lines = [f"broker {redact(the_app.broker_url)}"]
            for q in names:
                lines.append(f"queue {q}: {await the_app.broker.size(q)} message(s)")
            for d in await the_app.broker.dead_letters(limit=10):
                lines.append(f"dead letter {d.id} queue={d.queue} reason={d.reason}")
            return lines

    try:
        typer.echo("\n".join(_run(main)))
    except AqueueError as exc:
        _fail(exc)


# `aqueue beat ...`: the scheduler and its entries (aqueue/beat/cli.py)
cli.add_typer(commands(Runtime(load_app, configure_logging, _run, (CLIError,))))

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
