"""A producer process: ``python -m benchmarks.producer SYSTEM ACTION N KIND [WARMUP]``.

Actions: ``enqueue-one``, ``enqueue-concurrent``, ``enqueue-bulk`` (timed), ``fill`` (the
fastest way the system has, untimed: it queues work for a drain) and ``rtt`` (WARMUP
untimed round trips, then N timed ones). Async systems run on uvloop. The result is one
JSON object on the last line of stdout: the measurements, ``{"na": reason}`` or
``{"error": message}``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from .systems import get
from .systems.base import NotApplicable, System

ENQUEUE_WARMUP = 5
FILL_CHUNK = 50


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    out = fn(*args, **kwargs)
    if inspect.isawaitable(out):
        return await out
    return out


def _pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


async def run(system: System, action: str, n: int, kind: str, warmup: int) -> dict[str, Any]:
    results = action == "rtt"
    await _call(system.connect, results=results)
    try:
        if action.startswith("enqueue-"):
            method: Callable[[int, str], Awaitable[None] | None] = {
                "enqueue-one": system.enqueue_one,
                "enqueue-concurrent": system.enqueue_concurrent,
                "enqueue-bulk": system.enqueue_bulk,
            }[action]
            # open connections and warm caches first, with the same call path
            await _call(method, ENQUEUE_WARMUP, kind)
            t0 = time.perf_counter()
            await _call(method, n, kind)
            seconds = time.perf_counter() - t0
            return {"seconds": seconds, "rate": n / seconds}
        if action == "fill":
            return await _fill(system, n, kind)
        if action == "rtt":
            for _ in range(warmup):
                await _call(system.round_trip)
            samples: list[float] = []
            for _ in range(n):
                t0 = time.perf_counter()
                await _call(system.round_trip)
                samples.append((time.perf_counter() - t0) * 1000)
            samples.sort()
            return {
                "p50_ms": statistics.median(samples),
                "p99_ms": _pct(samples, 0.99),
                "mean_ms": statistics.fmean(samples),
                "min_ms": samples[0],
                "max_ms": samples[-1],
            }
        raise SystemExit(f"unknown action {action!r}")
    finally:
        await _call(system.close)


async def _fill(system: System, n: int, kind: str) -> dict[str, Any]:
    """Queue n tasks as fast as the system allows: bulk, else gathers of FILL_CHUNK, else
    one at a time (a gather of all n exhausts some libraries' connection pools)."""
    t0 = time.perf_counter()
    try:
        if not system.native_bulk:
            raise NotApplicable("bulk is a gather")
        await _call(system.enqueue_bulk, n, kind)
        method = "bulk"
    except NotApplicable:
        try:
            for start in range(0, n, FILL_CHUNK):
                await _call(system.enqueue_concurrent, min(FILL_CHUNK, n - start), kind)
            method = f"gather of {FILL_CHUNK}"
        except NotApplicable:
            await _call(system.enqueue_one, n, kind)
            method = "one at a time"
    return {"seconds": time.perf_counter() - t0, "method": method}


def main(argv: list[str]) -> None:
    if len(argv) not in (4, 5):
        raise SystemExit("usage: python -m benchmarks.producer SYSTEM ACTION N KIND [WARMUP]")
    name, action, n, kind = argv[0], argv[1], int(argv[2]), argv[3]
    warmup = int(argv[4]) if len(argv) == 5 else 0
    system = get(name)
    try:
        if system.is_async:
            import uvloop

            out = uvloop.run(run(system, action, n, kind, warmup))
        else:
            out = asyncio.run(run(system, action, n, kind, warmup))
    except NotApplicable as exc:
        out = {"na": str(exc)}
    except BaseException as exc:  # reported to the orchestrator, which records it
        traceback.print_exc()
        out = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    sys.stdout.flush()
    print("\n" + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
