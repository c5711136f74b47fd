"""What monitoring events cost a worker: the drain with events off, on with nobody
listening, and on with a listener (``aqueue events --json`` in another process).

    PYTHONPATH=. python -m benchmarks.events_cost [--tasks 20000] [--runs 3]

A smaller harness than ``python -m benchmarks`` (no peers, no .bench-venv): each run queues
``--tasks`` no-op tasks (untimed, ``delay_many``), then times one embedded worker
(concurrency 100, burst mode, results stored as in the drain scenario, uvloop when
installed) from its start until it has drained the queue. Redis DB 14 by default
(``BENCH_REDIS_URL``), under a prefix of its own that is deleted afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from aqueue import App
from aqueue.runner import run as run_on_loop

from .cost import REDIS_URL, compare, delete_prefix, enqueue, noop_app, timed_drain

ROOT = Path(__file__).resolve().parents[1]
MODES = ("off", "on", "on+listener")


async def drain(app: App, tasks: int, events: bool) -> tuple[float, float, int]:
    """Seconds and worker CPU seconds to drain ``tasks``, and the events published."""
    async with app:
        await enqueue(app, tasks)
        worker = app.worker(concurrency=100, burst=True, task_events=events)
        elapsed, cpu = await timed_drain(worker, tasks)
        return elapsed, cpu, worker.events.published


def listener(prefix: str) -> subprocess.Popen[bytes]:
    """``aqueue events --json`` reading the stream in its own process, once subscribed."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AQUEUE_BROKER_URL": f"{REDIS_URL}?prefix={prefix}",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aqueue.cli",
            "events",
            "-A",
            "benchmarks.events_cost:listened",
            "--json",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if b"watching" not in line:
        proc.kill()
        raise RuntimeError(f"the listener did not start: {line!r}")
    return proc


#: the listener's app: only its broker matters (from AQUEUE_BROKER_URL)
listened = App("evbench-listener")


def run(mode: str, tasks: int) -> tuple[float, float, str]:
    prefix = f"evb-{uuid.uuid4().hex[:10]}"
    proc = listener(prefix) if mode == "on+listener" else None
    try:
        seconds, cpu, published = run_on_loop(
            lambda: drain(noop_app("evbench", prefix), tasks, mode != "off")
        )
        return seconds, cpu, f"{published:7,} events"
    finally:
        if proc is not None:
            proc.terminate()  # the one we started, by its pid
            proc.wait(timeout=30)
        delete_prefix(prefix)


if __name__ == "__main__":
    compare(MODES, run)
