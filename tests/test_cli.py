"""The CLI: one-line errors naming the fix, and the version."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aqueue import App, __version__
from aqueue.cli import cli
from aqueue.core.stopping import stop_on_signals

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"aqueue {__version__}"


@pytest.mark.parametrize(
    ("args", "needle", "status"),
    [
        (["worker", "no_such_module:app"], "cannot import 'no_such_module'", 2),
        (["worker", "aqueue:nope"], "has no attribute 'nope'", 2),
        (["worker", "aqueue.core.states:PENDING"], "not an aqueue.App", 2),
        (["worker"], "give the app", 2),
        (["worker", "-A", "aqueue:nope"], "has no attribute 'nope'", 2),
        (["worker", "tests.test_cli:bad_url_app"], "unsupported URL 'foo://", 2),
        # several processes: a child that cannot start stops the supervisor with its status;
        # --autoscale's supervisor loads the app itself
        (["worker", "aqueue:nope", "--processes", "2"], "has no attribute 'nope'", 2),
        (["worker", "aqueue:nope", "--autoscale", "2"], "has no attribute 'nope'", 2),
        (["worker", "aqueue:nope", "--autoscale", "2,3"], "need 1 <= MIN <= MAX", 2),
        (["worker", "aqueue:nope", "--autoscale", "many"], "bad --autoscale 'many'", 2),
        (["worker", "aqueue:nope", "--autoscale", "4", "--processes", "2"], "not both", 2),
        # a broker that cannot be reached fails while running: status 1 (docs/cli.md)
        (["worker", "tests.test_cli:secret_app"], "***", 1),
    ],
)
def test_worker_errors_are_one_line(args: list[str], needle: str, status: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aqueue.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == status, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


# apps the CLI tests load by module:attribute
bad_url_app = App("bad", broker="foo://user:hunter2@localhost/")
secret_app = App("secret", broker="redis://user:hunter2@127.0.0.1:1/0")


def test_a_worker_run_in_process_gives_the_stop_signals_back(tmp_path: Path) -> None:
    # an embedding program (here: the test process) must still answer Ctrl-C afterwards;
    # uvloop left SIGINT and SIGTERM pointing at the worker's closed loop
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    env = {"AQT_CLI_BROKER": f"sqlite:///{tmp_path / 'q.db'}"}
    result = runner.invoke(cli, ["worker", "tests.cli_project:make_app", "--burst"], env=env)
    assert result.exit_code == 0, result.output
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


async def test_stop_on_signals_restores_a_handler_of_the_program() -> None:
    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not called here")

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        stopped: list[bool] = []
        with stop_on_signals(lambda: stopped.append(True)):
            assert signal.getsignal(signal.SIGTERM) is not mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
