"""Every ``aqueue ...`` command line in the docs' shell blocks parses: the command, its
subcommands and every option it shows exist and take the values shown (click parses the
line as the real command line would; nothing is run). The python blocks run
(test_examples.py); a command line that names an option aqueue does not have fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from aqueue.cli import cli

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```", flags=re.S | re.M)
#: a synopsis (``[--port 5555]``, ``|`` alternatives) or a banner line, not a command
_NOT_A_COMMAND = re.compile(r"\s\[|\|\S|^aqueue \d")


def command_lines() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for page in sorted(DOCS.rglob("*.md")):
        for block in _BLOCK.finditer(page.read_text()):
            if block["lang"] == "python":
                continue
            for line in block["body"].splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("aqueue ") and not _NOT_A_COMMAND.search(line):
                    found.append((str(page.relative_to(DOCS)), line))
    return found


def parse(line: str) -> list[str]:
    """Parse ``line`` as ``aqueue`` would; the names of the commands it reached."""
    args = shlex.split(line, comments=True)[1:]
    # click's objects (typer >= 0.2x carries its own copy of click: duck-typed here)
    command: Any = ROOT
    names = ["aqueue"]
    parent: Any = None
    while True:
        ctx = command.make_context(names[-1], list(args), parent=parent, resilient_parsing=False)
        # a group keeps the subcommand's name apart (click 8.2+ calls the attribute private)
        state = vars(ctx)
        rest = [*state.get("_protected_args", state.get("protected_args", [])), *ctx.args]
        if not hasattr(command, "commands") or not rest:
            return names
        name, *args = rest
        assert name in command.commands, f"no command {name!r} in {names}"
        command, parent = command.commands[name], ctx
        names.append(name)


LINES = command_lines()
ROOT: Any = typer.main.get_command(cli)


def test_the_docs_show_commands() -> None:
    assert len(LINES) >= 50
    with pytest.raises(Exception, match="No such option") as refused:
        parse("aqueue worker proj:app --no-such-option")
    assert getattr(refused.value, "exit_code", None) == 2  # click's UsageError
    with pytest.raises(AssertionError, match="no command 'inspekt'"):
        parse("aqueue inspekt ping")


@pytest.mark.parametrize(("page", "line"), LINES, ids=[f"{p}:{line[:60]}" for p, line in LINES])
def test_a_docs_command_line_parses(page: str, line: str) -> None:
    names = parse(line)
    assert len(names) >= 2, f"{page}: {line!r} names no command"
