"""`aqueue dashboard`: its usage errors (in process) and loopback detection. Serving is
tested with real processes in test_live.py."""

from __future__ import annotations

import pytest
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


def test_help_lists_the_options() -> None:
    result = runner.invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0
    for option in (
        "--port",
        "--address",
        "--basic-auth",
        "--token",
        "--read-only",
        "--show-arguments",
    ):
        assert option in result.output


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
