"""The production topology of a blocking web app: this process only sends (``.sync``), an
``aqueue worker`` process runs the tasks; on Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aqueue import App, TaskFailed
from aqueue.core import blocking
from tests.conftest import delete_redis_prefix, make_url, prefix_of

from .tasks import register

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0


@pytest.fixture
def producer(tmp_path: Path) -> Iterator[App]:
    url = make_url("redis", tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "-m", "aqueue.cli", "worker", "-A", "tests.sync.worker_app:app"],
        env={**os.environ, "AQUEUE_BROKER_URL": url, "AQUEUE_WORKER_IN_PROCESS": "1"},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    app = App("synctests", broker=url)
    register(app)
    try:
        yield app
    finally:
        app.sync.close()
        blocking.shutdown()
        worker.terminate()
        worker.wait(timeout=30)
        delete_redis_prefix(prefix_of(url))


@pytest.mark.slow
def test_a_sync_producer_and_a_worker_process(producer: App) -> None:
    t = producer.tasks
    # the first wait also covers the worker's start-up: the message waits in its queue
    assert t["sync.add"].sync.delay(2, 2).get(timeout=TIMEOUT) == 4
    chained = (t["sync.div"].s(4, 2) | t["sync.mul"].s(3) | t["sync.add"].s(6)).sync.delay()
    assert chained.get(timeout=TIMEOUT) == 12
    with pytest.raises(TaskFailed, match="ValueError"):
        t["sync.boom"].sync.delay("x").get(timeout=TIMEOUT)
