"""``python -m benchmarks.fleet [redis|sqlite|amqp ...]``: with three worker processes (two
on SQLite), the round trip of ``inspect ping`` (every worker answered), and on Redis (shared
rate limits) how long a ``control rate_limit`` from 200/s to 20/s takes to hold for the
whole fleet. Prints one line per figure."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from aqueue import App

ROOT = Path(__file__).resolve().parents[2]
LOG_URL = "redis://127.0.0.1:6379/14"


def start(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aqueue.cli",
            "worker",
            "benchmarks.fleet.fleet_app:app",
            "-n",
            name,
            "-c",
            "20",
            "-l",
            "warning",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def live(app: App, n: int) -> None:
    async with asyncio.timeout(60):
        while len([w for w in await app.control.workers() if not w.missing]) < n:
            await asyncio.sleep(0.05)


async def ping_figures(app: App, n: int) -> str:
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        replies = await app.control.inspect(timeout=5).ping()
        times.append((time.perf_counter() - t0) * 1000)
        assert len(replies) == n, replies
    times.sort()
    return f"ping {n} workers: p50 {statistics.median(times):.1f} ms, p90 {times[26]:.1f} ms"


async def rate_change(app: App, log: redis.Redis) -> str:
    from benchmarks.fleet import fleet_app

    run = uuid.uuid4().hex[:8]
    key = f"fleetbench:{run}"
    async with asyncio.timeout(120):
        for _ in range(3000):
            await fleet_app.tick.delay(run)
        await asyncio.sleep(3)  # steady state at 200/s
        sent = time.time()
        replies = await app.control.rate_limit("fleetbench.tick", "20/s", timeout=5)
        acked = time.time()
        await asyncio.sleep(6)
    times = sorted(float(x) for x in log.lrange(key, 0, -1))
    log.delete(key)
    if os.environ.get("FLEET_TIMELINE"):
        for k in range(-4, 12):
            lo = sent + k * 0.5
            print(f"  {k * 0.5:+.1f}s {sum(1 for t in times if lo <= t < lo + 0.5)}")
    before = [t for t in times if sent - 2 <= t < sent]
    # when the new rate held: the first moment after which no 0.5 s window has more than
    # 20/s (+ one burst of 20, GCRA's allowance)
    after = [t for t in times if t >= sent]
    held = sent
    for i, t in enumerate(after):
        window = [u for u in after[i:] if u < t + 0.5]
        if len(window) > 10 + 20:
            held = t + 0.5
    late = [t for t in after if t >= held + 1]
    rate_after = len(late) / max(1e-9, (late[-1] - late[0])) if len(late) > 1 else 0.0
    return (
        f"rate_limit 200/s -> 20/s on {len(replies)} workers: replies in "
        f"{(acked - sent) * 1000:.0f} ms; rate before {len(before) / 2:.0f}/s; the new rate held "
        f"{held - sent:.2f} s after the command; then {rate_after:.1f}/s"
    )


async def main(kinds: list[str]) -> None:
    log = redis.Redis.from_url(LOG_URL)
    for kind in kinds:
        tmp = Path(tempfile.mkdtemp())
        prefix = f"fleetbench-{uuid.uuid4().hex[:8]}"
        url = {
            "redis": f"redis://127.0.0.1:6379/14?prefix={prefix}",
            "sqlite": f"sqlite:///{tmp / 'fleet.db'}",
            "amqp": f"amqp://guest:guest@127.0.0.1:5672//?prefix={prefix}",
        }[kind]
        env = {**os.environ, "AQUEUE_BROKER_URL": url, "PYTHONPATH": str(ROOT)}
        backend = None
        if kind == "amqp":
            backend = f"sqlite:///{tmp / 'results.db'}"
            env["AQUEUE_RESULT_BACKEND"] = backend
        n = 2 if kind == "sqlite" else 3
        procs = [start(env, f"b{i}@%h") for i in range(n)]
        app = App("fleetbench-client", broker=url, backend=backend)
        try:
            async with app:
                await live(app, n)
                print(f"{kind}: {await ping_figures(app, n)}", flush=True)
                if kind == "redis":
                    from benchmarks.fleet import fleet_app

                    fleet_app.app.conf.update(broker_url=url)
                    async with fleet_app.app:
                        print(f"{kind}: {await rate_change(app, log)}", flush=True)
                await app.control.shutdown(timeout=10)
        finally:
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            if kind == "redis":
                for k in log.scan_iter(f"{prefix}*"):
                    log.delete(k)
            if kind == "amqp":
                from tests.conftest import _delete_rabbit_prefixes

                _delete_rabbit_prefixes([prefix])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["redis", "sqlite", "amqp"]))
