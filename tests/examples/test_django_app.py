"""examples/django_app: Django's test runner against a live worker (``manage.py test``), and
the example's pytest tests that use aqueue's plugin, each in its own process (Django is set
up once per process, with the example's settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_app"

pytestmark = pytest.mark.slow


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        AQUEUE_BROKER_URL=f"sqlite:///{tmp_path / 'aqueue.db'}",
        CELERY101_DB=str(tmp_path / "db.sqlite3"),
        CELERY101_TEST_DB=str(tmp_path / "test-db.sqlite3"),
    )
    return subprocess.run(
        [sys.executable, *args], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120
    )


def test_django_test_runner_with_a_live_worker(tmp_path: Path) -> None:
    done = _run(["manage.py", "test", "workflows", "--noinput"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Ran 6 tests" in done.stderr
    assert "OK" in done.stderr


def test_the_examples_pytest_tests_use_the_plugin(tmp_path: Path) -> None:
    done = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tasks.py"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_worker_django_needs_the_settings_module(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    aqueue = Path(sys.executable).with_name("aqueue")
    done = subprocess.run(
        [str(aqueue), "worker", "celery101.aqueue:app", "--django", "--burst"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--django: set DJANGO_SETTINGS_MODULE" in done.stderr
