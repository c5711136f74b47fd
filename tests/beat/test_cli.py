"""``aqueue beat ...``: manage entries from the command line; one-line errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aqueue.cli import cli

from . import cli_app

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.beat.cli_app:app"
runner = CliRunner()


@pytest.fixture(autouse=True)
def store(tmp_path: Path) -> Iterator[None]:
    url = f"sqlite:///{tmp_path / 'beat.db'}"
    cli_app.app.conf.update(broker_url=url, result_backend=url)
    yield
    cli_app.app.conf.update(broker_url="memory://beatcli", result_backend="memory://beatcli")


def beat(*args: str) -> str:
    result = runner.invoke(cli, ["beat", *args])
    assert result.exit_code == 0, result.output
    return result.output


def beat_error(*args: str) -> str:
    result = runner.invoke(cli, ["beat", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aqueue: error: "), result.output
    return lines[0]


def test_add_list_pause_resume_next_remove() -> None:
    out = beat(
        "add", "-A", APP, "nightly", "tests.beat.cli_app.report",
        "--cron", "30 2 * * *", "--tz", "Europe/Berlin", "--args", '["quick"]',
        "--queue", "reports", "--misfire", "catch_up", "--catch-up", "2", "--overlap", "skip",
    )  # fmt: skip
    assert out.startswith("nightly: cron 30 2 * * * Europe/Berlin, next run ")
    listing = json.loads(beat("list", "-A", APP, "--json"))
    assert listing["leader"] is None
    entries = {e["name"]: e for e in listing["entries"]}
    # the code entry is stored by the first scheduler that starts; only run-time ones yet
    nightly = entries["nightly"]
    assert nightly["source"] == "runtime" and nightly["args"] == ["quick"]
    assert nightly["options"] == {"queue": "reports"}
    assert (nightly["misfire"], nightly["catch_up"], nightly["overlap"]) == ("catch_up", 2, "skip")
    assert nightly["next_run"].endswith("+00:00") and nightly["last_run"] is None
    assert "paused" in beat("pause", "-A", APP, "nightly")
    assert json.loads(beat("list", "-A", APP, "--json"))["entries"][0]["paused"] is True
    assert "[runtime, paused]" in beat("list", "-A", APP)
    beat("resume", "-A", APP, "nightly")
    times = beat("next", "-A", APP, "nightly", "-n", "3").splitlines()
    assert len(times) == 3 and all(t.startswith(tuple("0123456789")) for t in times)
    assert all("T02:30:00+0" in t or "T03:00:00+02:00" in t for t in times)
    beat("remove", "-A", APP, "nightly")
    assert json.loads(beat("list", "-A", APP, "--json"))["entries"] == []


def test_replace_and_errors_are_one_line() -> None:
    beat("add", "-A", APP, "often", "report", "--every", "30")
    assert "exists: pass replace=True (--replace)" in beat_error(
        "add", "-A", APP, "often", "report", "--every", "60"
    )
    replaced = beat("add", "-A", APP, "often", "report", "--every", "60", "--replace")
    assert "every 0:01:00" in replaced
    assert "no beat entry named 'nope'" in beat_error("pause", "-A", APP, "nope")
    assert "no beat entry named 'nope'" in beat_error("remove", "-A", APP, "nope")
    assert "five fields" in beat_error("add", "-A", APP, "x", "report", "--cron", "daily")
    assert "give one of schedule=, cron= or every=" in beat_error("add", "-A", APP, "x", "report")
    assert "--args is not JSON" in beat_error(
        "add", "-A", APP, "x", "report", "--every", "5", "--args", "[1,"
    )
    assert "--kwargs must be a JSON object" in beat_error(
        "add", "-A", APP, "x", "report", "--every", "5", "--kwargs", "[1]"
    )
    assert "misfire must be one of" in beat_error(
        "add", "-A", APP, "x", "report", "--every", "5", "--misfire", "never"
    )
    assert "give the app" in beat_error("list")
    assert "cannot import 'nowhere'" in beat_error("list", "-A", "nowhere:app")


def test_code_entries_are_changed_in_code_only() -> None:
    async def start_and_stop() -> None:
        async with cli_app.app, cli_app.app.beat():  # its first round stores them
            pass

    asyncio.run(start_and_stop())
    listing = json.loads(beat("list", "-A", APP, "--json"))
    [entry] = listing["entries"]
    assert (entry["name"], entry["source"]) == ("auto-sms-rating", "code")
    assert "defined in code" in beat_error("remove", "-A", APP, "auto-sms-rating")
    assert "defined in code" in beat_error(
        "add", "-A", APP, "auto-sms-rating", "report", "--every", "5", "--replace"
    )
    beat("pause", "-A", APP, "auto-sms-rating")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["beat", "tests.beat.cli_app:bad_app"], "beat entry 'broken'"),
        (["beat", "-A", "tests.beat.cli_app:rpc_app"], "cannot hold them"),
        (["worker", "tests.beat.cli_app:rpc_app", "--beat"], "cannot hold them"),
    ],
)
def test_a_scheduler_that_cannot_start_says_why_in_one_line(args: list[str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aqueue.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr and "secret-pw" not in proc.stderr + proc.stdout


def test_beat_without_arguments_prints_help() -> None:
    result = runner.invoke(cli, ["beat"])
    assert "list" in result.output and "add" in result.output
