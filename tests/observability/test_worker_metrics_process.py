"""``aqueue worker --metrics-port`` as real processes on Redis: each serves its own counts,
the fleet's total is their sum, and a worker that re-executes itself serves again on the
same port, its counters started afresh (docs/observability.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aqueue import App, TaskFailed

from ..conftest import REDIS_HOST, REDIS_PORT, delete_redis_prefix, require_service
from ..worker import cli_tasks

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.worker.cli_tasks:app"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    prefix = f"aqt-{uuid.uuid4().hex[:12]}"
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AQUEUE_")}
    yield {**environ, "AQUEUE_BROKER_URL": url, "PYTHONPATH": str(ROOT)}
    delete_redis_prefix(prefix)


@pytest.fixture
async def app(env: dict[str, str]) -> AsyncIterator[App]:
    cli_tasks.app.conf.update(broker_url=env["AQUEUE_BROKER_URL"])
    async with cli_tasks.app:
        yield cli_tasks.app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def worker(env: dict[str, str], port: int, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aqueue.cli", "worker", APP, "--metrics-port", str(port), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out.decode(errors="replace")


async def scrape(port: int) -> Samples:
    """One scrape of a worker, parsed with prometheus-client's parser (retried while the
    worker is starting or replacing itself: the port is not served for that moment)."""
    async with asyncio.timeout(30), httpx.AsyncClient() as client:
        while True:
            try:
                response = await client.get(f"http://127.0.0.1:{port}/metrics")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def count(samples: Samples, task: str, state: str) -> float:
    return samples.get(("aqueue_tasks_total", (("state", state), ("task", task))), 0.0)


async def until_counted(port: int, task: str, state: str, n: float) -> Samples:
    """Scrape until ``n`` tasks are counted (the count follows the stored result)."""
    async with asyncio.timeout(30):
        while count(samples := await scrape(port), task, state) != n:
            await asyncio.sleep(0.05)
    return samples


async def until_up(port: int) -> Samples:
    """Scrape until the worker is up (it serves from its start, consumes a moment later)."""
    async with asyncio.timeout(30):
        while (samples := await scrape(port)).get(("aqueue_worker_up", ())) != 1:
            await asyncio.sleep(0.05)
    return samples


async def test_each_worker_process_serves_its_own_counts(app: App, env: dict[str, str]) -> None:
    ports = [free_port(), free_port()]
    procs = [worker(env, port, "-c", "2", "-n", f"m{i}@%h") for i, port in enumerate(ports)]
    try:
        for port in ports:  # both consume before any task is sent
            ready = await until_up(port)
            assert ready[("aqueue_worker_concurrency", ())] == 2
        handles = [await cli_tasks.whoami.delay(0.05) for _ in range(10)]
        results = [await h.wait(timeout=30) for h in handles]
        failed = await cli_tasks.boom.delay("not-logged")
        with pytest.raises(TaskFailed):
            await failed.wait(timeout=30)
        by_pid = Counter(r["pid"] for r in results)
        name = cli_tasks.whoami.name
        per_port = []
        for proc, port in zip(procs, ports, strict=True):
            samples = await until_counted(port, name, "SUCCESS", by_pid[proc.pid])
            per_port.append(samples)
            assert samples[("aqueue_worker_up", ())] == 1
            assert samples[("aqueue_worker_tasks_in_flight", ())] == 0
    finally:
        outputs = [stop(p) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    # the fleet's total is the sum of the processes' counts
    assert sum(count(s, name, "SUCCESS") for s in per_port) == 10
    assert sum(count(s, cli_tasks.boom.name, "FAILURE") for s in per_port) == 1
    assert "not-logged" not in "".join(outputs)


async def test_a_recycled_worker_serves_again_on_its_port(app: App, env: dict[str, str]) -> None:
    port = free_port()
    proc = worker(env, port, "-c", "1", "--max-tasks-per-child", "3", "-l", "INFO")
    try:
        await until_up(port)
        first = [await (await cli_tasks.whoami.delay(0)).wait(timeout=30) for _ in range(3)]
        # the fourth runs in the worker's second life: same process, same port, new counts
        second = await (await cli_tasks.whoami.delay(0)).wait(timeout=30)
        samples = await until_counted(port, cli_tasks.whoami.name, "SUCCESS", 1)
        assert proc.poll() is None
    finally:
        out = stop(proc)
    assert {r["pid"] for r in [*first, second]} == {proc.pid}
    assert len({r["boot"] for r in first}) == 1 and second["boot"] != first[0]["boot"]
    assert samples[("aqueue_worker_up", ())] == 1
    assert "(restart 1)" in out


def test_a_port_in_use_is_a_one_line_error(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = worker(env, port)
        out = stop_when_exited(proc)
    assert proc.returncode == 2, out
    assert f"cannot serve metrics on 127.0.0.1:{port}" in out and "Traceback" not in out


def stop_when_exited(proc: subprocess.Popen[bytes]) -> str:
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        return stop(proc)
    return out.decode(errors="replace")
