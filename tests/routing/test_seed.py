"""The routing seed (shared/seeds, "CELERY Doc 1"), with only ``await`` added.

Its configuration, exactly: ``Celery('tasks', broker='pyamqp://guest@localhost//')`` with
``backend='rpc://'``, ``add.apply_async(queue='priority.high')`` and a worker started as
``celery -A proj worker -l INFO -Q celery,priority.high``. The one addition is
``broker_options``' queue prefix (and expiry), so that the test's queues are its own on the
shared RabbitMQ.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from aqueue import App

from ..conftest import RABBIT_HOST, RABBIT_PORT, require_service

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.rabbitmq


def _isolation() -> dict[str, object]:
    return {"prefix": f"aqt-seed-{uuid.uuid4().hex[:10]}", "queue_expires": 60}


async def test_the_seed_with_an_embedded_worker(caplog: pytest.LogCaptureFixture) -> None:
    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    app = App(
        "tasks",
        broker="pyamqp://guest@localhost//",
        backend="rpc://",
        broker_options=_isolation(),
    )

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    caplog.set_level(logging.WARNING, "aqueue.worker")
    async with app, app.worker(queues=["celery", "priority.high"]):  # -Q celery,priority.high
        result = await add.apply_async((2, 2), queue="priority.high")
        assert await result.get(timeout=10) == 4
        result = await add.delay(4, 4)  # the default queue: celery, as Celery's
        assert await result.get(timeout=10) == 8
        await app.broker.delete_queues(["celery", "priority.high"])  # type: ignore[attr-defined]
    # priority.high is reached by call options only: the worker says so, once
    [warning] = [r.getMessage() for r in caplog.records if "no task, route" in r.getMessage()]
    assert "consumes queue(s) priority.high that no task" in warning


SEED_MODULE = """
from aqueue import App

app = App('tasks', broker='pyamqp://guest@localhost//', backend='rpc://',
          broker_options={options!r})

@app.task
def add(x, y):
    return x + y
"""


@pytest.mark.slow
async def test_the_seed_with_its_worker_command(tmp_path: Path) -> None:
    """``aqueue worker -A tasks -l INFO -Q celery,priority.high``, as the seed starts it."""
    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    options = _isolation()
    (tmp_path / "tasks.py").write_text(textwrap.dedent(SEED_MODULE.format(options=options)))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    env = {k: v for k, v in env.items() if not k.startswith("AQUEUE_")}
    command = ["worker", "-A", "tasks", "-l", "INFO", "-Q", "celery,priority.high"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "aqueue.cli", *command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import tasks  # type: ignore[import-not-found]

        async with tasks.app:
            try:
                result = await tasks.add.apply_async((2, 2), queue="priority.high")
                assert await result.get(timeout=30) == 4
                assert await (await tasks.add.delay(4, 4)).get(timeout=30) == 8
            finally:
                worker.terminate()
                out, _ = worker.communicate(timeout=30)
                await tasks.app.broker.delete_queues(["celery", "priority.high"])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tasks", None)
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=30)
    assert worker.returncode == 0, out.decode(errors="replace")
