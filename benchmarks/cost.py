"""What the cost benchmarks share (``events_cost.py``, ``observability_cost.py``): an app of
one no-op task under a key prefix of its own, a drain of it by one embedded worker, the
prefix's keys deleted after, and the interleaved runs with their medians."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence

import redis

from aqueue import App, Worker

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def noop_app(name: str, prefix: str) -> App:
    """An app on Redis under ``prefix`` with one task, ``<name>.noop``."""
    app = App(name, broker=f"{REDIS_URL}?prefix={prefix}", task_default_queue=name)

    @app.task(name=f"{name}.noop")
    async def noop() -> None:
        return None

    return app


async def enqueue(app: App, tasks: int) -> None:
    """Queue ``tasks`` no-ops (the app is connected), 5 000 a bulk send."""
    noop = app.tasks[f"{app.name}.noop"]
    for start in range(0, tasks, 5000):
        await noop.delay_many([() for _ in range(min(5000, tasks - start))])


async def timed_drain(worker: Worker, tasks: int) -> tuple[float, float]:
    """Seconds ``worker`` (burst) took to run ``tasks``, and this process's CPU seconds
    meanwhile (the worker's: the producer is done)."""
    t0, c0 = time.perf_counter(), time.process_time()
    await worker.run()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert worker.executor.succeeded == tasks, worker.executor.succeeded
    return elapsed, cpu


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


def compare(modes: Sequence[str], run: Callable[[str, int], tuple[float, float, str]]) -> None:
    """``--tasks``, ``--runs``: every mode once per run (interleaved, so drift hits every
    mode alike); ``run(mode, tasks)`` gives seconds, CPU seconds and a note. Prints each
    run, then the medians against the first mode."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    width = max(len(m) for m in modes)
    rates: dict[str, list[float]] = {m: [] for m in modes}
    cpus: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(args.runs):
        for mode in modes:
            seconds, cpu, note = run(mode, args.tasks)
            rates[mode].append(args.tasks / seconds)
            cpus[mode].append(cpu / args.tasks * 1e6)
            print(
                f"run {i + 1} {mode:{width}} {rates[mode][-1]:9,.0f} tasks/s "
                f"{cpus[mode][-1]:6.1f} µs CPU/task {note}",
                flush=True,
            )
    base = statistics.median(rates[modes[0]])
    base_cpu = statistics.median(cpus[modes[0]])
    for mode in modes:
        med, cpu = statistics.median(rates[mode]), statistics.median(cpus[mode])
        runs = ", ".join(f"{r:,.0f}" for r in rates[mode])
        print(
            f"{mode:{width}} median {med:9,.0f} tasks/s ({med / base:.2f}x), "
            f"{cpu:.1f} µs CPU/task ({cpu - base_cpu:+.1f})  runs: {runs}"
        )
