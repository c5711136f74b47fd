"""A worker process on RabbitMQ killed (SIGKILL) mid-drain, with batched acks in flight.

The worker acks in batches (``basic.ack(multiple=True)`` over the settled run of delivery
tags, see aqueue/brokers/rabbitmq/acks.py). Tasks of mixed lengths finish out of order, so
when the kill comes some acks are queued but not written, some tags are acked one by one
above a task still running, and the prefetch buffer holds messages that never started. A
second worker must then finish every task: lost 0, only extra executions (tasks that
finished before the kill but whose ack was not written yet, or that were running).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aqueue import App

from ..conftest import make_url
from ..worker import proc_tasks

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
N = 240


@pytest.fixture
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    url = make_url("rabbitmq", tmp_path)
    request.getfixturevalue("_rabbit_prefixes").append(url.rsplit("prefix=", 1)[1])
    environ = {k: v for k, v in os.environ.items() if k != "AQUEUE_RESULT_BACKEND"}
    yield {
        **environ,
        "AQUEUE_BROKER_URL": url,
        # results are not what this test watches: a store the subprocesses can share
        "AQUEUE_RESULT_BACKEND": f"sqlite:///{tmp_path / 'results.db'}",
        "AQUEUE_TEST_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
async def app(env: dict[str, str]) -> AsyncIterator[App]:
    proc_tasks.app.conf.update(
        broker_url=env["AQUEUE_BROKER_URL"], result_backend=env["AQUEUE_RESULT_BACKEND"]
    )
    async with proc_tasks.app:
        yield proc_tasks.app


def start_worker(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aqueue.cli",
            "worker",
            "tests.worker.proc_tasks:app",
            "-c",
            "30",
            "-n",
            f"{name}@%h",
            "-l",
            "warning",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    return out.decode(errors="replace")


def done_keys(tmp_path: Path) -> set[str]:
    return {p.name.removeprefix("done-") for p in tmp_path.glob("done-*")}


async def until_done(tmp_path: Path, count: int, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            while len(done_keys(tmp_path)) < count:
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"only {len(done_keys(tmp_path))}/{count} tasks finished in {timeout}s")


async def test_sigkill_mid_drain_with_batched_acks_loses_nothing(
    app: App, env: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(11)
    keys = [f"t{i}" for i in range(N)]
    for key in keys:
        # mostly short, some long: completions out of delivery order, and a few tasks
        # still running at the bottom of the channel while later ones are acked
        seconds = 0.8 if rng.random() < 0.05 else rng.uniform(0.0, 0.06)
        await proc_tasks.slow.delay(key, seconds)
    first = start_worker(env, "first")
    try:
        await until_done(tmp_path, N // 3, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        out = stop(first)
    finished_before = len(done_keys(tmp_path))
    assert finished_before < N, "the kill came too late to test anything"
    killed_at = time.monotonic()
    second = start_worker(env, "second")
    try:
        await until_done(tmp_path, N, timeout=90)
        recovery = time.monotonic() - killed_at
        async with asyncio.timeout(10):  # every message settled: nothing left anywhere
            while await app.broker.size("celery") > 0:
                await asyncio.sleep(0.05)
    finally:
        out += stop(second)
    assert done_keys(tmp_path) == set(keys), out[-2000:]
    starts = {k: len((tmp_path / f"started-{k}").read_text().split()) for k in keys}
    extra = sum(n - 1 for n in starts.values())
    print(
        f"\nsigkill mid-drain, batched acks: lost 0/{N}, {finished_before} finished before "
        f"the kill, extra executions {extra}/{N}, all done {recovery:.2f}s after the kill"
    )
