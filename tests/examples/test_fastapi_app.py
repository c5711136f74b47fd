"""examples/fastapi_app over HTTP (httpx) against its live embedded worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aqueue import App, states
from aqueue.contrib.asgi import lifespan
from examples.fastapi_app.main import create_api
from examples.fastapi_app.tasks import create_queue
from tests.conftest import delete_redis_prefix, make_url, prefix_of

ROOT = Path(__file__).resolve().parents[2]


class Client(httpx.AsyncClient):
    queue: App


@pytest.fixture(params=["sqlite", "redis"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Client]:
    url = make_url(request.param, tmp_path)
    queue = create_queue(url)
    api = create_api(queue, worker=True)
    try:
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with Client(transport=transport, base_url="http://test") as c:
                c.queue = queue
                yield c
    finally:
        if request.param == "redis":
            delete_redis_prefix(prefix_of(url))


async def finished(client: Client, workflow_id: str, step: int) -> dict[str, Any]:
    """The status once step ``step`` has ended (waited for on the result backend)."""
    body = (await client.get(f"/workflows/{workflow_id}")).json()
    await client.queue.AsyncResult(body["steps"][step]["id"]).wait(timeout=20, propagate=False)
    response = await client.get(f"/workflows/{workflow_id}")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def test_post_starts_the_workflow_and_get_walks_it(client: Client) -> None:
    response = await client.post(
        "/workflows", json={"div": [8, 2], "mul": [3], "add": [6], "sub": [2]}
    )
    assert response.status_code == 202
    workflow_id = response.json()["id"]
    body = await finished(client, workflow_id, step=3)
    assert body["state"] == states.SUCCESS
    assert body["result"] == 16  # 8 / 2 * 3 + 6 - 2
    assert [s["step"] for s in body["steps"]] == ["div", "mul", "add", "sub"]
    assert [s["state"] for s in body["steps"]] == [states.SUCCESS] * 4
    assert body["steps"][0]["id"] == workflow_id


async def test_the_seed_default_and_a_failing_step(client: Client) -> None:
    default = (await client.post("/workflows", json={})).json()["id"]
    assert (await finished(client, default, step=3))["result"] == 10  # 4 / 2 * 3 + 6 - 2
    broken = (await client.post("/workflows", json={"div": [1, 0]})).json()["id"]
    # the later steps are failed after the first one is: wait for the last
    body = await finished(client, broken, step=3)
    assert body["state"] == states.FAILURE
    assert "ZeroDivisionError" in body["error"]
    # the later steps never run: they end FAILURE with the first one (as in Celery)
    assert [s["state"] for s in body["steps"]] == [states.FAILURE] * 4
    assert body["result"] is None


async def test_unknown_workflow_is_404(client: Client) -> None:
    assert (await client.get("/workflows/no-such-id")).status_code == 404


async def test_lifespan_composes_with_the_apps_own(tmp_path: Path) -> None:
    queue = App("lifespan", broker=f"sqlite:///{tmp_path / 'a.db'}")
    seen: list[str] = []

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def own(web_app: object) -> AsyncIterator[dict[str, str]]:
        seen.append(f"start connected={queue.is_connected}")
        yield {"db": "ready"}
        seen.append("stop")

    async with lifespan(queue, then=own)(object()) as state:
        assert state == {"db": "ready"}
        assert queue.is_connected
    assert seen == ["start connected=True", "stop"]
    assert not queue.is_connected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_one_command_runs_it(tmp_path: Path) -> None:
    """``python -m examples.fastapi_app``: web app and embedded worker, SQLite, no server."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.fastapi_app", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "AQUEUE_BROKER_URL": f"sqlite:///{tmp_path / 'aqueue.db'}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=base, timeout=5) as http:
            while True:  # the server is up when it answers
                try:
                    workflow_id = http.post("/workflows", json={}).json()["id"]
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.1)
            while (body := http.get(f"/workflows/{workflow_id}").json())["state"] != "SUCCESS":
                assert time.monotonic() < deadline, body
                time.sleep(0.1)
        assert body["result"] == 10
    finally:
        proc.terminate()
        proc.wait(timeout=15)
