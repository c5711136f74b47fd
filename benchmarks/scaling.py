"""Scaling: the drain with 1, 2 and 4 worker processes (``aqueue worker --processes N``) on a
private Redis, and on private Redis Clusters of 1 and 3 masters, with where the CPU went.

    python -m benchmarks.scaling                  # every setup, 20 000 tasks, 1 repeat
    python -m benchmarks.scaling --tasks 50000 --repeat 3 --setups redis,cluster-3

Each setup runs on servers this script starts on free loopback ports and stops by pid
(``tests/faults``' helpers), so Redis's CPU is read from its own processes (every node of a
cluster) and nothing else shares them; the start gate and the completion counter
(:mod:`benchmarks.counter`) live in DB 15 of the Redis on 6379, off the measured servers.
Tasks are queued first (bulk), then ``aqueue worker --processes N -c 100`` starts; the
clock starts once every process holds its first batch. On a cluster of 3 masters the
queue is sharded over 6 slots (``?shards=``), so every master carries part of it.

Per row: tasks/s; worker CPU per task (the supervisor and its children); Redis CPU per task
(summed over nodes); the busiest Redis node's and the whole machine's busy share over the
drain window (100 % = one core for Redis, both cores for the machine): where the limit is.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from .config import K_ARRIVED, K_DONE, K_GO, K_LAST, REDIS_URL, REPO_ROOT
from .runner import busy

QUEUE = "bench-scale"
SETUPS = ("redis", "cluster-1", "cluster-3")
PROCESSES = {"redis": (1, 2, 4), "cluster-1": (1, 2), "cluster-3": (1, 2, 4)}


@dataclass
class Row:
    setup: str
    processes: int
    rate: float
    worker_cpu_us: float
    redis_cpu_us: float
    redis_busiest_pct: float
    machine_pct: float


def _cpu(procs: list[psutil.Process]) -> list[float]:
    out = []
    for p in procs:
        try:
            t = p.cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(0.0)
    return out


def _tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


@contextlib.contextmanager
def servers(setup: str, directory: Path) -> Iterator[tuple[str, list[int]]]:
    """(broker URL, Redis server pids) of a fresh private setup."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.faults.redis_server import running_server

    if setup == "redis":
        with running_server(directory) as server:
            assert server.proc is not None
            yield server.url(prefix="scale"), [server.proc.pid]
        return
    from tests.faults.redis_cluster import running_cluster

    masters = int(setup.removeprefix("cluster-"))
    with running_cluster(directory, masters=masters) as cluster:
        query = {"prefix": "scale"}
        if masters > 1:
            query["shards"] = f"{QUEUE}:{2 * masters}"
        pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        yield cluster.url(**query), pids


async def fill(url: str, n: int) -> None:
    os.environ["BENCH_SCALING_BROKER"] = url
    from .scaling_tasks import app, noop

    app.conf.update(broker_url=url)
    async with app:
        for start in range(0, n, 5000):
            await noop.delay_many([() for _ in range(min(5000, n - start))])


def one(setup: str, processes: int, n: int) -> Row:
    counter = redis.Redis.from_url(REDIS_URL)
    with (
        tempfile.TemporaryDirectory(prefix="aqueue-scale-") as tmp,
        servers(setup, Path(tmp)) as (url, redis_pids),
    ):
        counter.delete(K_DONE, K_ARRIVED, K_GO, *counter.keys(f"{K_LAST}*"))
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import asyncio, benchmarks.scaling as s; asyncio.run(s.fill({url!r}, {n}))",
            ],
            cwd=REPO_ROOT,
            check=True,
        )
        env = {**os.environ, "BENCH_SCALING_BROKER": url, "PYTHONPATH": str(REPO_ROOT)}
        log = Path(tmp) / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aqueue.cli",
                    "worker",
                    "benchmarks.scaling_tasks:app",
                    "--processes",
                    str(processes),
                    "-c",
                    "100",
                    "-l",
                    "warning",
                    "-Q",
                    QUEUE,
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 120
            while int(counter.get(K_ARRIVED) or 0) < processes:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
                time.sleep(0.01)
            workers = _tree(worker.pid)
            reds = [psutil.Process(pid) for pid in redis_pids]
            w0, r0, b0, t0 = sum(_cpu(workers)), _cpu(reds), busy(), time.time()
            counter.set(K_GO, "1")
            while float(counter.get(K_DONE) or 0) < n:
                if time.monotonic() > deadline + 600:
                    raise RuntimeError(f"timed out: {log.read_text()[-2000:]}")
                time.sleep(0.01)
            w1, r1, b1, t1 = sum(_cpu(workers)), _cpu(reds), busy(), time.time()
            lasts = [float(v) for v in counter.mget(counter.keys(f"{K_LAST}*")) if v]
            elapsed = max(lasts) - t0
            window = t1 - t0
            per_node = [b - a for a, b in zip(r0, r1, strict=True)]
            return Row(
                setup,
                processes,
                n / elapsed,
                (w1 - w0) / n * 1e6,
                sum(per_node) / n * 1e6,
                100 * max(per_node) / window,
                100 * (b1[0] - b0[0]) / max(1, b1[1] - b0[1]),
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, 9)
            worker.wait(10)
            counter.delete(K_DONE, K_ARRIVED, K_GO, *counter.keys(f"{K_LAST}*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("benchmarks.scaling needs redis-server (and redis-cli) on PATH")
    print(
        "| setup | processes | tasks/s | worker CPU µs/task | Redis CPU µs/task "
        "| busiest Redis node | machine busy |"
    )
    print("|---|---|---|---|---|---|---|")
    for setup in args.setups.split(","):
        for processes in PROCESSES[setup]:
            rows = [one(setup, processes, args.tasks) for _ in range(args.repeat)]

            def med(field: str, rows: list[Row] = rows) -> float:
                return statistics.median(getattr(r, field) for r in rows)

            print(
                f"| {setup} | {processes} | {med('rate'):,.0f} | {med('worker_cpu_us'):.1f} | "
                f"{med('redis_cpu_us'):.1f} | {med('redis_busiest_pct'):.0f} % | "
                f"{med('machine_pct'):.0f} % |",
                flush=True,
            )


if __name__ == "__main__":
    main()
