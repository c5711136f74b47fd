"""``make chaos`` end to end, small: SQLite, two workers, 200 tasks, two ``kill -9``.

The tool (``benchmarks/chaos.py``) runs as users run it, in a subprocess; its exit status is
1 if a task the broker acknowledged never completed, and its table says what it did.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.faults, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_chaos_on_sqlite_loses_nothing() -> None:
    args = ["--broker", "sqlite", "--workers", "2", "--tasks", "200", "--seconds", "3"]
    args += ["--faults", "2", "--kinds", "kill", "--seed", "19", "--settle", "0", "--gap", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.chaos", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = [line for line in done.stdout.splitlines() if line.startswith("sqlite ")]
    _, tasks, kills, lost = re.split(r"\s{2,}", row)[:4]
    acked, sent = map(int, tasks.split("/"))
    assert acked == sent >= 200  # more if the kills ran past the 3 s of sending
    assert (kills, lost) == ("2 kill", "0")
