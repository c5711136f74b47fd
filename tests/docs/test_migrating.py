"""docs/migrating-from-celery.md names every Celery name it must, and only aqueue names that exist.

``celery_names.json`` lists Celery's settings, commands, options, remote-control commands
and signals, read from Celery's source by ``make_celery_names.py`` (regenerate it with a new
Celery: ``python tests/docs/make_celery_names.py /path/to/celery-X.Y.Z``). Each must appear
in the first column of its table; each aqueue name in a table's aqueue column must exist in
aqueue (its settings, task attributes, call options, signals, CLI commands and options); and
what a Settings row says happens to Celery's name is what ``Settings.update()`` does.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

import aqueue.signals
from aqueue import Task
from aqueue.cli import cli
from aqueue.core.config import (
    CELERY_NOT_NEEDED,
    CELERY_REFUSED,
    CELERY_RENAMED,
    Settings,
)
from aqueue.core.errors import ConfigurationError
from aqueue.core.options import OPTION_NAMES
from aqueue.core.remote import COMMANDS, INSPECT_COMMANDS

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC = DOCS / "migrating-from-celery.md"
CELERY = json.loads((Path(__file__).with_name("celery_names.json")).read_text())
SETTINGS = {f.name for f in dataclasses.fields(Settings)} - {"explicit", "router", "keyring"}
#: how a Settings row may begin: what Settings.update() does with Celery's name
OUTCOMES = ("same", "renamed", "accepted, not needed", "refused", "not supported")


def section(title: str) -> str:
    """The text under the heading ``title`` (any level), up to the next heading as high."""
    text = DOC.read_text()
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.MULTILINE)
    assert match, f"no heading {title!r} in {DOC.name}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def rows(text: str) -> Iterator[list[str]]:
    """The body rows of every table in ``text``, as lists of cells (``\\|`` is no border)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("|") or re.fullmatch(r"[|\-\s]+", line):
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if re.fullmatch(r"\|(-+\|)+", following):
            continue  # a header
        yield [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def spans(cell: str) -> list[str]:
    """The code spans of a cell."""
    return re.findall(r"`([^`]+)`", cell)


def first_column(text: str) -> set[str]:
    return {name for row in rows(text) for name in spans(row[0])}


def aqueue_column(text: str) -> set[str]:
    return {name for row in rows(text) for name in spans(row[1])}


def test_the_names_file_has_every_kind() -> None:
    for key in (
        "settings",
        "commands",
        "global_options",
        "worker_options",
        "beat_options",
        "inspect_commands",
        "control_commands",
        "signals",
    ):
        assert len(CELERY[key]) >= 5, key
    assert "task_routes" in CELERY["settings"]
    assert "--concurrency" in CELERY["worker_options"]


# -- settings ----------------------------------------------------------------------------------


def setting_rows() -> list[list[str]]:
    text = section("Settings").split("### aqueue's own settings", 1)[0]
    return list(rows(text))


def test_every_celery_setting_has_a_row() -> None:
    named = {name for row in setting_rows() for name in spans(row[0])}
    missing = sorted(set(CELERY["settings"]) - named)
    assert not missing, f"Celery settings missing from the Settings tables: {missing}"


def test_every_aqueue_setting_named_exists() -> None:
    unknown = {
        (row[0], name) for row in setting_rows() for name in spans(row[1]) if name not in SETTINGS
    }
    assert not unknown, f"not aqueue settings: {sorted(unknown)}"


@pytest.mark.parametrize("row", setting_rows(), ids=lambda row: spans(row[0])[0])
def test_a_settings_row_says_what_happens(row: list[str]) -> None:
    celery, ours, how = spans(row[0]), spans(row[1]), row[2]
    outcome = next((o for o in OUTCOMES if how.startswith(o)), None)
    assert outcome, f"{celery}: the row must start with one of {OUTCOMES}, not {how[:40]!r}"
    for name in celery:
        if outcome == "same":
            assert name in SETTINGS and name in ours, name
        elif outcome == "renamed":
            assert CELERY_RENAMED.get(name) in ours, name
        elif outcome == "accepted, not needed":
            assert name in CELERY_NOT_NEEDED, name
        elif outcome == "refused":
            assert name in CELERY_REFUSED, name
        if outcome in ("refused", "not supported"):
            with pytest.raises(ConfigurationError):
                Settings().update({name: None})
        else:
            Settings().update({name: getattr(Settings(), CELERY_RENAMED.get(name, name), None)})


def test_aqueue_settings_celery_lacks_are_listed() -> None:
    own = first_column(section("aqueue's own settings"))
    assert own <= SETTINGS, sorted(own - SETTINGS)
    unlisted = SETTINGS - set(CELERY["settings"]) - own
    assert not unlisted, f"aqueue settings neither Celery's nor listed as aqueue's: {unlisted}"


# -- tasks, calls, signals ---------------------------------------------------------------------


def test_task_options_exist() -> None:
    names = aqueue_column(section("Task decorator options"))
    unknown = {n for n in names if n not in ("name", "bind", "base") and not hasattr(Task, n)}
    assert names and not unknown, sorted(unknown)


def test_calling_options_exist() -> None:
    names = aqueue_column(section("Calling options (`apply_async`)"))
    assert names and not names - OPTION_NAMES - {"args", "kwargs"}, sorted(names - OPTION_NAMES)


def test_every_celery_signal_has_a_row_and_ours_exist() -> None:
    text = section("Signals")
    missing = set(CELERY["signals"]) - first_column(text)
    assert not missing, sorted(missing)
    ours = aqueue_column(text)
    assert ours and ours <= set(aqueue.signals.__all__), sorted(ours - set(aqueue.signals.__all__))


# -- the command line --------------------------------------------------------------------------


def command(*path: str) -> Any:
    """The click command at ``path`` below ``aqueue`` (KeyError: there is none)."""
    node = typer.main.get_command(cli)
    for name in path:
        node = node.commands[name]  # type: ignore[attr-defined]
    return node


def options_of(*path: str) -> set[str]:
    return {
        opt
        for param in command(*path).params
        if param.param_type_name == "option"
        for opt in (*param.opts, *param.secondary_opts)
    }


def test_every_celery_command_has_a_row_and_ours_exist() -> None:
    text = section("Commands")
    named = {s.split()[1] for s in first_column(text) if s.startswith("celery ")}
    missing = set(CELERY["commands"]) - named
    assert not missing, sorted(missing)
    for span in aqueue_column(text):
        words = span.split()
        assert words[0] == "aqueue", span
        command(*words[1:])  # a KeyError names a command that does not exist


@pytest.mark.parametrize(
    ("title", "key", "path"),
    [
        ("Global options", "global_options", ()),
        ("`celery worker` options", "worker_options", ("worker",)),
        ("`celery beat` options", "beat_options", ("beat", "run")),
    ],
)
def test_every_celery_option_has_a_row_and_ours_exist(
    title: str, key: str, path: tuple[str, ...]
) -> None:
    text = section(title)
    missing = set(CELERY[key]) - first_column(text)
    assert not missing, f"{title}: missing {sorted(missing)}"
    ours = {s for s in aqueue_column(text) if s.startswith("-")}
    assert ours, title
    unknown = ours - options_of(*path)
    assert not unknown, f"{title}: not options of aqueue {' '.join(path)}: {sorted(unknown)}"


def test_every_remote_command_has_a_row_and_ours_exist() -> None:
    text = section("Remote control: `inspect` and `control`")
    named = first_column(text)
    for kind in ("inspect", "control"):
        missing = {c for c in CELERY[f"{kind}_commands"] if f"celery {kind} {c}" not in named}
        assert not missing, f"celery {kind}: {sorted(missing)}"
    for span in aqueue_column(text):
        _, kind, name = span.split()
        if kind == "inspect":
            assert name in INSPECT_COMMANDS, span
        else:
            assert kind == "control" and name in COMMANDS and name not in INSPECT_COMMANDS, span


def test_relative_links_resolve() -> None:
    targets = re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", DOC.read_text())
    assert targets
    missing = sorted({t for t in targets if not (DOCS / t).is_file()})
    assert not missing, missing
