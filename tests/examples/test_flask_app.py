"""examples/flask_app with Flask's test client against a live worker (on the blocking
API's loop), on SQLite and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask.testing import FlaskClient

from aqueue import states
from aqueue.core import blocking
from examples.flask_app.app import create_app
from examples.flask_app.tasks import create_queue
from tests.conftest import delete_redis_prefix, make_url, prefix_of

from .test_fastapi_app import ROOT, _free_port


@pytest.fixture(params=["sqlite", "redis"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FlaskClient]:
    url = make_url(request.param, tmp_path)
    queue = create_queue(url)
    try:
        with queue.sync.worker(concurrency=4):
            yield create_app(queue).test_client()
    finally:
        queue.sync.close()
        blocking.shutdown()
        if request.param == "redis":
            delete_redis_prefix(prefix_of(url))


def test_submit_then_fetch_the_report(client: FlaskClient) -> None:
    response = client.post("/reports", json={"customer": "acme", "month": "2026-02"})
    assert response.status_code == 202
    report_id = response.get_json()["id"]
    body = client.get(f"/reports/{report_id}?wait=20").get_json()
    assert body["state"] == states.SUCCESS
    report = body["report"]
    assert report["customer"] == "acme" and report["days"] == 28
    assert 1 <= report["best_day"] <= 28 and report["total"] > 0
    # fetched again later, without waiting: the same report
    assert client.get(f"/reports/{report_id}").get_json()["report"] == report


def test_a_failed_report_and_an_unknown_id(client: FlaskClient) -> None:
    report_id = client.post("/reports", json={"customer": "acme", "month": "Nov"}).get_json()["id"]
    body = client.get(f"/reports/{report_id}?wait=20").get_json()
    assert body["state"] == states.FAILURE
    assert "ValueError" in body["error"]
    assert client.get("/reports/never-submitted").get_json()["state"] == states.PENDING


@pytest.mark.slow
def test_one_command_runs_it(tmp_path: Path) -> None:
    """``python -m examples.flask_app``: Flask and an embedded worker, SQLite, no server."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.flask_app", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "AQUEUE_BROKER_URL": f"sqlite:///{tmp_path / 'aqueue.db'}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while True:  # the server is up when it answers
                try:
                    response = http.post("/reports", json={"customer": "c", "month": "2026-11"})
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.1)
            report_id = response.json()["id"]
            body = http.get(f"/reports/{report_id}", params={"wait": 20}).json()
        assert body["state"] == "SUCCESS" and body["report"]["days"] == 30
    finally:
        proc.terminate()
        proc.wait(timeout=15)
