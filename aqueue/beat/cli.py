"""``aqueue beat``: run a scheduler, and list, add, remove, pause and resume entries.

``aqueue beat proj`` (or ``aqueue beat -A proj``, or ``aqueue beat run ...``) runs a
scheduler until SIGTERM / SIGINT; ``aqueue beat list|add|remove|pause|resume|next -A proj``
work on the stored entries every scheduler reads (:class:`~aqueue.beat.admin.BeatSchedule`).

The commands are built by :func:`commands` from a :class:`Runtime`: how the command line
loads an app, configures logging and runs a coroutine. ``aqueue.cli`` hands over its own
(the runner's), so this layer stays below the runner it would otherwise import.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from aqueue.core.errors import AqueueError
from aqueue.core.stopping import stop_on_signals

from .admin import BeatSchedule, EntryInfo
from .service import Beat

if TYPE_CHECKING:
    from aqueue.core.app import App

__all__ = ["Runtime", "commands"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the beat commands need from the command line around them."""

    #: the app a ``-A`` value names (Celery's lookup)
    load_app: Callable[[str], App]
    #: log to stderr at a level name
    configure_logging: Callable[[str], None]
    #: run a coroutine to the end (on uvloop when installed)
    run: Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any]
    #: exceptions that are a user's mistake, reported as one line
    user_errors: tuple[type[BaseException], ...]


class _DefaultRun(TyperGroup):
    """``aqueue beat proj`` means ``aqueue beat run proj``: anything that is not a
    subcommand name starts the scheduler."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # a click Context
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


AppOption = Annotated[
    str | None, typer.Option("-A", "--app", help="The app (module:attribute, or Celery's -A).")
]


def commands(runtime: Runtime) -> typer.Typer:
    """The ``aqueue beat`` command group."""
    beat = typer.Typer(
        cls=_DefaultRun,
        name="beat",
        help=(
            "Periodic tasks: `aqueue beat proj` runs a scheduler (any number may run: one "
            "leads); list, add, remove, pause, resume and next manage the entries."
        ),
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    def fail(exc: BaseException) -> typer.Exit:
        typer.echo(f"aqueue: error: {exc}", err=True)
        return typer.Exit(2)

    mistakes: tuple[type[BaseException], ...] = (*runtime.user_errors, AqueueError)

    def app_of(spec: str | None) -> App:
        if not spec:
            raise fail(ValueError("give the app: -A proj (or -A proj.tasks:app)"))
        try:
            return runtime.load_app(spec)
        except mistakes as exc:
            raise fail(exc) from None

    def run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        try:
            result: T = runtime.run(work)
        except mistakes as exc:  # UnknownEntry is an AqueueError too
            raise fail(exc) from None
        return result

    @beat.command("run")
    def run_beat(
        app: Annotated[
            str | None, typer.Argument(help="The app as module:attribute, e.g. proj.tasks:app.")
        ] = None,
        app_option: AppOption = None,
        loglevel: Annotated[str, typer.Option("-l", "--loglevel", help="Log level.")] = "info",
        lease: Annotated[
            float | None,
            typer.Option("--lease", min=0.1, help="Leader lease, seconds (beat_lease_seconds)."),
        ] = None,
        max_interval: Annotated[
            float | None,
            typer.Option(
                "--max-interval",
                min=0.1,
                help="Most seconds between looks at the stored entries (beat_max_loop_interval).",
            ),
        ] = None,
    ) -> None:
        """Run a scheduler until SIGTERM or SIGINT."""
        try:
            runtime.configure_logging(loglevel)
        except runtime.user_errors as exc:
            raise fail(exc) from None
        the_app = app_of(app or app_option)
        try:
            scheduler = Beat(the_app, lease_seconds=lease, max_interval=max_interval)
        except AqueueError as exc:
            raise fail(exc) from None

        async def main() -> None:
            try:
                with stop_on_signals(scheduler.request_stop):
                    await scheduler.run()
            finally:
                await the_app.close()

        run(main)

    @beat.command("list")
    def list_entries(
        app_option: AppOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """List the entries: schedule, next run, last run and its result."""
        the_app = app_of(app_option)

        async def main() -> tuple[str | None, list[EntryInfo]]:
            async with the_app, BeatSchedule(the_app) as schedule:
                return await schedule.leader(), await schedule.entries()

        leader, entries = run(main)
        if as_json:
            payload = {"leader": leader, "entries": [e.as_dict() for e in entries]}
            typer.echo(json.dumps(payload, indent=2, default=repr))
            return
        typer.echo(f"leader: {leader or 'none'}")
        for e in entries:
            flags = [e.source, *(["paused"] if e.paused else []), *([] if e.enabled else ["off"])]
            typer.echo(
                f"{e.name}  {e.task}  {e.schedule}  [{', '.join(flags)}]\n"
                f"    next {_when(e.next_run)}  last {_when(e.last_run)}"
                f"{f' {e.last_state}' if e.last_state else ''}"
                f"{f' -> {e.last_result}' if e.last_result else ''}"
                f"  runs {e.runs}  skipped {e.skipped}" + (f"\n    {e.note}" if e.note else "")
            )

    @beat.command("add")
    def add(
        name: Annotated[str, typer.Argument(help="The entry's name.")],
        task: Annotated[str, typer.Argument(help="The task's name, e.g. proj.tasks.report.")],
        app_option: AppOption = None,
        cron: Annotated[
            str | None, typer.Option("--cron", help="A cron string, e.g. '0 7 * * mon'.")
        ] = None,
        every: Annotated[
            float | None, typer.Option("--every", help="An interval, seconds (at least 1).")
        ] = None,
        tz: Annotated[str | None, typer.Option("--tz", help="Zone, e.g. Europe/Berlin.")] = None,
        args: Annotated[str | None, typer.Option("--args", help="JSON list.")] = None,
        kwargs: Annotated[str | None, typer.Option("--kwargs", help="JSON object.")] = None,
        queue: Annotated[str | None, typer.Option("--queue", "-Q")] = None,
        priority: Annotated[int | None, typer.Option("--priority")] = None,
        expires: Annotated[
            float | None, typer.Option("--expires", help="Seconds after sending.")
        ] = None,
        misfire: Annotated[
            str | None, typer.Option("--misfire", help="once, skip or catch_up.")
        ] = None,
        catch_up: Annotated[int | None, typer.Option("--catch-up", min=1)] = None,
        misfire_grace: Annotated[float | None, typer.Option("--misfire-grace", min=0)] = None,
        overlap: Annotated[str | None, typer.Option("--overlap", help="allow or skip.")] = None,
        jitter: Annotated[float | None, typer.Option("--jitter", min=0)] = None,
        start: Annotated[str | None, typer.Option("--start", help="ISO 8601 time.")] = None,
        end: Annotated[str | None, typer.Option("--end", help="ISO 8601 time.")] = None,
        disabled: Annotated[bool, typer.Option("--disabled", help="Store, do not run.")] = False,
        replace: Annotated[bool, typer.Option("--replace", help="Change an entry.")] = False,
    ) -> None:
        """Add an entry (every scheduler sees it within beat_max_loop_interval)."""
        the_app = app_of(app_option)
        keys: dict[str, Any] = {}
        try:
            if args is not None:
                keys["args"] = _json(args, "--args", list)
            if kwargs is not None:
                keys["kwargs"] = _json(kwargs, "--kwargs", dict)
            for key, moment in (("start", start), ("end", end)):
                if moment is not None:
                    keys[key] = _iso(moment, f"--{key}")
        except ValueError as exc:
            raise fail(exc) from None
        given = (("queue", queue), ("priority", priority), ("expires", expires))
        options = {key: value for key, value in given if value is not None}
        if options:
            keys["options"] = options
        for key, value in (
            ("tz", tz),
            ("misfire", misfire),
            ("catch_up", catch_up),
            ("misfire_grace", misfire_grace),
            ("overlap", overlap),
            ("jitter", jitter),
        ):
            if value is not None:
                keys[key] = value
        if disabled:
            keys["enabled"] = False

        async def main() -> EntryInfo:
            async with BeatSchedule(the_app) as schedule:
                return await schedule.add(
                    name, task, cron=cron, every=every, replace=replace, **keys
                )

        info = run(main)
        typer.echo(f"{info.name}: {info.schedule}, next run {_when(info.next_run)}")

    def change_entry(
        app_option: str | None,
        name: str,
        change: Callable[[BeatSchedule, str], Coroutine[Any, Any, None]],
        done: str,
    ) -> None:
        """Apply ``change`` to entry ``name`` in the app's schedule and say so."""
        the_app = app_of(app_option)

        async def main() -> None:
            async with BeatSchedule(the_app) as schedule:
                await change(schedule, name)

        run(main)
        typer.echo(f"{done} {name}")

    @beat.command("remove")
    def remove(
        name: Annotated[str, typer.Argument(help="The entry's name.")], app_option: AppOption = None
    ) -> None:
        """Remove an entry added at run time (code entries: pause them)."""
        change_entry(app_option, name, BeatSchedule.remove, "removed")

    @beat.command("pause")
    def pause(
        name: Annotated[str, typer.Argument(help="The entry's name.")], app_option: AppOption = None
    ) -> None:
        """Stop firing an entry until resumed."""
        change_entry(app_option, name, BeatSchedule.pause, "paused")

    @beat.command("resume")
    def resume(
        name: Annotated[str, typer.Argument(help="The entry's name.")], app_option: AppOption = None
    ) -> None:
        """Fire a paused entry again (slots missed meanwhile follow its misfire policy)."""
        change_entry(app_option, name, BeatSchedule.resume, "resumed")

    @beat.command("next")
    def next_runs(
        name: Annotated[str, typer.Argument(help="The entry's name.")],
        app_option: AppOption = None,
        count: Annotated[int, typer.Option("-n", "--count", min=1, help="How many.")] = 5,
    ) -> None:
        """Print an entry's next run times (its zone's wall clock, and UTC)."""
        the_app = app_of(app_option)

        async def main() -> list[dt.datetime]:
            async with BeatSchedule(the_app) as schedule:
                return await schedule.upcoming(name, count)

        for moment in run(main):
            typer.echo(f"{moment.isoformat()}  ({moment.astimezone(dt.UTC).isoformat()})")

    return beat


def _when(moment: dt.datetime | None) -> str:
    return moment.isoformat() if moment is not None else "-"


def _json(text: str, option: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} is not JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{option} must be a JSON {'list' if kind is list else 'object'}")
    return value


def _iso(text: str, option: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option} must be an ISO 8601 time, e.g. 2025-01-31T07:00") from None
