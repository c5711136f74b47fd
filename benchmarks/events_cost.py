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

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from aqueue import App

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
ROOT = Path(__file__).resolve().parents[1]
MODES = ("off", "on", "on+listener")


def make_app(prefix: str) -> App:
    app = App("evbench", broker=f"{REDIS_URL}?prefix={prefix}", task_default_queue="evbench")

    @app.task(name="evbench.noop")
    async def noop() -> None:
        return None

    return app


async def drain(app: App, tasks: int, events: bool) -> tuple[float, float, int]:
    """Seconds the worker took to drain ``tasks``, the CPU seconds this process spent
    meanwhile (the worker's: the producer is done), and the events it published."""
    noop = app.tasks["evbench.noop"]
    async with app:
        for start in range(0, tasks, 5000):
            await noop.delay_many([() for _ in range(min(5000, tasks - start))])
        worker = app.worker(concurrency=100, burst=True, task_events=events)
        t0, c0 = time.perf_counter(), time.process_time()
        await worker.run()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert worker.executor.succeeded == tasks, worker.executor.succeeded
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


def run(mode: str, tasks: int) -> tuple[float, float, int]:
    prefix = f"evb-{uuid.uuid4().hex[:10]}"
    proc = listener(prefix) if mode == "on+listener" else None
    try:
        loop_factory = None
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(drain(make_app(prefix), tasks, mode != "off"))
    finally:
        if proc is not None:
            proc.terminate()  # the one we started, by its pid
            proc.wait(timeout=30)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpus: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(args.runs):
        for mode in MODES:  # interleaved, so drift hits every mode alike
            seconds, cpu, published = run(mode, args.tasks)
            rates[mode].append(args.tasks / seconds)
            cpus[mode].append(cpu / args.tasks * 1e6)
            print(
                f"run {i + 1} {mode:12} {rates[mode][-1]:9,.0f} tasks/s "
                f"{cpus[mode][-1]:6.1f} µs CPU/task {published:7,} events",
                flush=True,
            )
    base = statistics.median(rates["off"])
    base_cpu = statistics.median(cpus["off"])
    for mode in MODES:
        med, cpu = statistics.median(rates[mode]), statistics.median(cpus[mode])
        runs = ", ".join(f"{r:,.0f}" for r in rates[mode])
        print(
            f"{mode:12} median {med:9,.0f} tasks/s ({med / base:.2f}x), "
            f"{cpu:.1f} µs CPU/task ({cpu - base_cpu:+.1f})  runs: {runs}"
        )


if __name__ == "__main__":
    main()
