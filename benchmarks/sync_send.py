"""Blocking-caller send rates: aqueue's sync API against Celery and dramatiq (docs/benchmarks.md).

``.bench-venv/bin/python -m benchmarks.sync_send [--quick]`` (``make bench-sync``). What a
Flask view or a script pays to send a task from code outside any event loop, on Redis:

* ``one``: one thread, each send returning (the broker has the message) before the next;
* ``threads-N``: N threads sending at once (a threaded WSGI server), total messages / wall
  time;
* for aqueue also ``asyncio.run`` per send, connecting each time: what the sync API's one
  background loop and connection per process avoids.

Only publishing is measured (no worker runs; every system's producer returns once the
broker holds the message). A focused script rather than a scenario of the harness
(``python -m benchmarks run``): its producers are one process per system with the send
loop inside, while here the point is threads sharing one producer. Keys it creates (all
named ``*bsync*``, in ``BENCH_REDIS_URL``'s DB, default 14) are deleted before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import redis

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
THREADS = (8, 32)


def delete_keys() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match="*bsync*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


# -- the systems: each returns a zero-argument send ------------------------------------------


def aqueue_send() -> tuple[Callable[[], Any], Callable[[], None]]:
    from aqueue import App
    from aqueue.core import blocking

    app = App("bsync", broker=f"{REDIS_URL}?prefix=bsync-aq")

    @app.task(name="bsync.noop")
    async def noop() -> None:
        return None

    send = noop.sync

    def close() -> None:
        app.sync.close()
        blocking.shutdown()

    return (lambda: send.delay()), close


def aqueue_run_per_call() -> tuple[Callable[[], Any], Callable[[], None]]:
    from aqueue import App

    app = App("bsync-run", broker=f"{REDIS_URL}?prefix=bsync-run")

    @app.task(name="bsync.noop")
    async def noop() -> None:
        return None

    async def once() -> None:
        async with app:
            await noop.delay()

    return (lambda: asyncio.run(once())), lambda: None


def aqueue_async_one(n: int) -> float:
    """The async API in its own loop, one await at a time: what the sync API adds to it."""
    from aqueue import App

    app = App("bsync-async", broker=f"{REDIS_URL}?prefix=bsync-async")

    @app.task(name="bsync.noop")
    async def noop() -> None:
        return None

    async def run() -> float:
        async with app:
            for _ in range(200):
                await noop.delay()
            started = time.perf_counter()
            for _ in range(n):
                await noop.delay()
            return n / (time.perf_counter() - started)

    try:
        return asyncio.run(run())
    finally:
        delete_keys()


def celery_send() -> tuple[Callable[[], Any], Callable[[], None]]:
    from celery import Celery

    app = Celery("bsync", broker=REDIS_URL)
    app.conf.update(task_ignore_result=True, task_default_queue="bsync-celery")

    @app.task(name="bsync.noop")
    def noop() -> None:
        return None

    return (lambda: noop.delay()), lambda: app.close()


def dramatiq_send() -> tuple[Callable[[], Any], Callable[[], None]]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=REDIS_URL, namespace="bsync-dramatiq")
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name="bsync", broker=broker)
    def noop() -> None:
        return None

    return (lambda: noop.send()), broker.close


SYSTEMS: dict[str, Callable[[], tuple[Callable[[], Any], Callable[[], None]]]] = {
    "aqueue (sync API)": aqueue_send,
    "celery": celery_send,
    "dramatiq": dramatiq_send,
}


def one_at_a_time(send: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        send()
    return n / (time.perf_counter() - started)


def threaded(send: Callable[[], Any], n: int, threads: int) -> float:
    each = n // threads
    gate = threading.Barrier(threads + 1)

    def run() -> None:
        gate.wait()
        for _ in range(each):
            send()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    gate.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    return each * threads / (time.perf_counter() - started)


def measure(name: str, n: int, repeats: int) -> dict[str, float]:
    send, close = SYSTEMS[name]()
    try:
        for _ in range(200):  # connect, warm up
            send()
        rates: dict[str, list[float]] = {"one": []}
        for t in THREADS:
            rates[f"threads-{t}"] = []
        for _ in range(repeats):
            rates["one"].append(one_at_a_time(send, n))
            for t in THREADS:
                rates[f"threads-{t}"].append(threaded(send, n, t))
            delete_keys()
        return {k: statistics.median(v) for k, v in rates.items()}
    finally:
        close()
        delete_keys()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer messages, one repeat")
    parser.add_argument("--only", action="append", help="a system name (repeatable)")
    args = parser.parse_args()
    n, repeats = (1_000, 1) if args.quick else (5_000, 3)
    delete_keys()
    table: dict[str, dict[str, float]] = {}
    for name in SYSTEMS:
        if args.only and not any(o in name for o in args.only):
            continue
        table[name] = measure(name, n, repeats)
        print(name, {k: round(v) for k, v in table[name].items()}, flush=True)
    async_rate = aqueue_async_one(n)
    print("aqueue async, await delay() one at a time (reference):", round(async_rate), flush=True)
    per_call, _ = aqueue_run_per_call()
    calls = 200
    started = time.perf_counter()
    for _ in range(calls):
        per_call()
    run_rate = calls / (time.perf_counter() - started)
    delete_keys()
    print("aqueue asyncio.run per send (connecting each time):", round(run_rate), flush=True)
    versions = {p: version(p) for p in ("aqueue", "celery", "dramatiq", "redis")}
    print(
        json.dumps(
            {
                "messages": n,
                "repeats": repeats,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "versions": versions,
                "rates": table,
                "aqueue_async_one": async_rate,
                "asyncio_run_per_send": run_rate,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
