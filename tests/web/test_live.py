"""The dashboard as a person uses it: real ``aqueue worker -E`` and ``aqueue dashboard``
processes on Redis, Flower's API over HTTP with httpx, and the pages in a real headless
Chromium (Debian's ``chromium``, driven by playwright; ``scripts/ensure-browser`` installs
it). Screenshots of every page go to ``tests/web/artifacts/`` (the README's comes from here).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aqueue import App

from ..conftest import (
    RABBIT_HOST,
    RABBIT_PORT,
    REDIS_HOST,
    REDIS_PORT,
    delete_redis_prefix,
    rabbit_url,
    require_service,
)
from .helpers import SEED_FIELDS
from .webapp import make_app

pytestmark = [pytest.mark.slow, pytest.mark.redis]  # RabbitMQ runs keep results in Redis

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SPEC = "tests.web.webapp:app"
WORKER = "wlive@web"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def aqueue(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aqueue.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Stop a process this test started (by its pid); its exit status and stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return proc.returncode, err.decode(errors="replace")


async def until_ok(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until the dashboard process answers (it is starting: there is no event to
    await across processes but its port)."""
    async with asyncio.timeout(timeout), httpx.AsyncClient() as client:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the dashboard exited: {stop(proc)[1]}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


class Live:
    def __init__(self, app: App, url: str, read_only_url: str, worker: subprocess.Popen[bytes]):
        self.app, self.url, self.read_only_url, self.worker = app, url, read_only_url, worker


@pytest.fixture(params=["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    prefix = f"aqt-{uuid.uuid4().hex[:12]}"
    redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AQUEUE_")}
    urls = {"AQT_WEB_BROKER": redis_url}
    if request.param == "rabbitmq":
        require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
        # results (and so the worker registry) in Redis: a chain needs a shared store
        urls = {"AQT_WEB_BROKER": rabbit_url(prefix), "AQT_WEB_BACKEND": redis_url}
        request.getfixturevalue("_rabbit_prefixes").append(prefix)  # deleted at the end
    yield {**environ, **urls, "PYTHONPATH": str(ROOT)}
    delete_redis_prefix(prefix)


@pytest.fixture
async def live(env: dict[str, str]) -> AsyncIterator[Live]:
    port, ro_port = free_port(), free_port()
    worker = aqueue(env, "worker", SPEC, "-E", "-c", "4", "-n", WORKER)
    board = aqueue(env, "dashboard", SPEC, "--port", str(port), "--show-arguments")
    read_only = aqueue(env, "dashboard", SPEC, "--port", str(ro_port), "--read-only")
    procs = [worker, board, read_only]
    try:
        url, ro_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ro_port}"
        await until_ok(f"{url}/api/task/types", board)
        await until_ok(f"{ro_url}/api/task/types", read_only)
        async with httpx.AsyncClient(base_url=url) as client, asyncio.timeout(30):
            # the worker is up once it answers inspect (it registers before it listens)
            while WORKER not in (await client.get("/api/workers?refresh=1")).json():
                assert worker.poll() is None, stop(worker)[1]
        app = make_app(env["AQT_WEB_BROKER"], env.get("AQT_WEB_BACKEND"))
        async with app:
            yield Live(app, url, ro_url, worker)
    finally:
        # every process is stopped before any is judged: none is left running
        stopped = [(proc, *stop(proc)) for proc in procs]
        for proc, status, err in stopped:
            # uvicorn stops gracefully, then ends by the signal it got (as a shell expects)
            assert status in (0, -signal.SIGTERM), err
            assert proc is worker or "Traceback" not in err, err


async def seed_chain(app: App) -> list[str]:
    t = app.tasks
    chain = t["div"].s(4, 2) | t["mul"].s(3) | t["add"].s(6) | t["diff-of-two-numbers"].s(2)
    handle = await chain.apply_async()
    assert await handle.get(timeout=20) == 10
    ids = [handle.id]
    node = handle.parent
    while node is not None:
        ids.insert(0, node.id)
        node = node.parent
    return ids


async def test_seed_curl_task_info_and_shutdown_over_http(live: Live) -> None:
    ids = await seed_chain(live.app)
    async with httpx.AsyncClient(base_url=live.url) as client:
        # the seed: curl -X GET http://localhost:5555/api/task/info/TASK_ID
        async with asyncio.timeout(15):
            while True:
                info = (await client.get(f"/api/task/info/{ids[-1]}")).json()
                if info["state"] == "SUCCESS" and info["succeeded"] is not None:
                    break
                await asyncio.sleep(0.1)  # the dashboard is another process
        assert set(info) == set(SEED_FIELDS)
        assert info["uuid"] == ids[-1] and info["name"] == "diff-of-two-numbers"
        assert info["worker"] == WORKER and info["result"] == "10.0" and info["args"] == "(12.0, 2)"
        assert isinstance(info["received"], float) and isinstance(info["runtime"], float)
        assert info["root_id"] == info["root"] == ids[0] and info["parent_id"] == ids[2]
        tasks = (await client.get("/api/tasks", params={"taskname": "div"})).json()
        assert list(tasks) == [ids[0]] and tasks[ids[0]]["children"] == [ids[1]]
        # the dashboard's /metrics (aqueue[prometheus] is installed here): the fleet's counts
        from prometheus_client.parser import text_string_to_metric_families

        async with asyncio.timeout(15):  # counted from the dashboard's start, before the chain
            while True:
                scraped = await client.get("/metrics")
                assert scraped.status_code == 200
                families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
                done = [
                    s.value
                    for s in families["aqueue_fleet_tasks"].samples
                    if s.labels.get("state") == "SUCCESS" and s.name.endswith("_total")
                ]
                if sum(done) >= len(ids):
                    break
                await asyncio.sleep(0.2)
        up = [s for s in families["aqueue_fleet_worker_up"].samples if s.value == 1]
        assert [s.labels["worker"] for s in up] == [WORKER]
        # curl -X POST http://localhost:5555/api/worker/shutdown/celery@worker2
        down = await client.post(f"/api/worker/shutdown/{WORKER}")
        assert down.json() == {"message": f"Shutting down '{WORKER}' worker"}
    assert await asyncio.to_thread(live.worker.wait, 30) == 0


# -- the browser ----------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("no chromium: run scripts/ensure-browser (apt-get install -y chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("env", ["redis"], indirect=True)
async def test_pages_live_chain_revoke_and_read_only_in_a_browser(live: Live, browser: Any) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))

    # a running chain appears and completes on the tasks page, which is never reloaded
    await page.goto(f"{live.url}/tasks")
    await page.wait_for_selector("body[data-live='on']")
    await page.evaluate("window.__notReloaded = true")
    ids = await seed_chain(live.app)
    for task_id in ids:
        await page.wait_for_selector(f"tr[data-task='{task_id}'][data-state='SUCCESS']")
    assert await page.evaluate("window.__notReloaded") is True
    await shot(page, "tasks")

    # one task: its fields, its workflow tree with links, its timeline
    await page.goto(f"{live.url}/task/{ids[1]}")
    tree = page.locator("#workflow-tree")
    for task_id in ids:
        assert await tree.locator(f"li[data-tree-task='{task_id}']").count() == 1
    assert await page.locator("#timeline tr").count() == 5  # sent, received, started, succeeded
    assert "(2.0, 3)" in await page.inner_text("#task-detail")
    await shot(page, "task")

    # revoke (terminate) a running task from its page, confirming; the page follows
    sleeping = await live.app.tasks["sleepy"].delay(60)
    await page.goto(f"{live.url}/task/{sleeping.id}")
    await page.wait_for_selector("#task-state[data-state='STARTED']")
    await page.evaluate("window.__notReloaded = true")
    await page.click("#task-actions button:text('Terminate')")
    await page.wait_for_selector("#flash:text('terminated')")
    await page.wait_for_selector("#task-state[data-state='REVOKED']")
    await shot(page, "task-revoked")

    # every page loads; the overview last, for the README
    failed = await live.app.tasks["fail"].delay("missing")
    await page.goto(f"{live.url}/tasks?state=FAILURE")
    await page.wait_for_selector(f"tr[data-task='{failed.id}']")
    for name, path in [
        ("workers", "/workers"),
        ("queues", "/queues"),
        ("dead-letters", "/dead-letters"),
        ("schedules", "/schedules"),
        ("overview", "/"),
    ]:
        response = await page.goto(f"{live.url}{path}")
        assert response is not None and response.status == 200, path
        await page.wait_for_selector("body[data-live='on']")
        await shot(page, name)
    assert WORKER in await page.inner_text("#overview-workers")
    shutil.copy(ARTIFACTS / "overview.png", ARTIFACTS / "dashboard.png")

    # read-only: the same pages without a single action
    await page.goto(f"{live.read_only_url}/task/{ids[0]}")
    assert await page.locator("#read-only").is_visible()
    assert await page.locator("form.action").count() == 0
    assert "(4, 2)" not in await page.inner_text("#task-detail")  # arguments hidden by default
    await page.goto(f"{live.read_only_url}/workers")
    await page.wait_for_selector(f"article[id='{WORKER}']")
    assert await page.locator("form.action").count() == 0
    await shot(page, "read-only-workers")
    assert errors == []
