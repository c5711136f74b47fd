"""`aqueue dashboard`: its usage errors (in process) and loopback detection. Serving is
tested with real processes in test_live.py."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from aqueue.cli import cli
from aqueue.web.server import is_loopback

runner = CliRunner()


def test_without_an_app_it_says_how_to_give_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEUE_APP", raising=False)
    result = runner.invoke(cli, ["dashboard"])
    assert result.exit_code == 2 and "give the app" in result.output


def test_basic_auth_must_be_user_colon_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEUE_DASHBOARD_BASIC_AUTH", raising=False)
    result = runner.invoke(cli, ["dashboard", "tests.web.webapp:app", "--basic-auth", "admin"])
    assert result.exit_code == 2 and "user:password" in result.output


def test_the_options() -> None:
    # read from the command itself: rendering --help fails with the lowest allowed typer
    # and a newer click (TyperArgument.make_metavar), whatever the command
    command = typer.main.get_command(cli).commands["dashboard"]  # type: ignore[attr-defined]
    names = {opt for p in command.params for opt in p.opts}
    assert {"--port", "--address", "--basic-auth", "--token", "--read-only"} <= names
    assert {"--show-arguments", "--max-tasks", "-A"} <= names


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
