"""Constants shared by the orchestrator, the producers and the worker processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
BENCH_VENV = Path(os.environ.get("BENCH_VENV", REPO_ROOT / ".bench-venv"))

#: the benchmark owns Redis DB 15 and nothing else: it is flushed before and after each run
REDIS_DB = 15
REDIS_URL = os.environ.get("BENCH_REDIS_URL", f"redis://127.0.0.1:6379/{REDIS_DB}")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

# keys of the completion counter and the start gate (see counter.py); all in DB 15
K_DONE = "bench:done"
K_LAST = "bench:last:"  # + pid: unix time of the process's last completion
K_ARRIVED = "bench:arrived"
K_GO = "bench:go"


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does."""

    enqueue: int
    drain: int
    rtt: int
    rtt_warmup: int
    io: int
    scale_workers: tuple[int, ...]
    timeout: float  # seconds one scenario run may take (worker start-up included)


FULL = Sizes(
    enqueue=20_000,
    drain=20_000,
    rtt=1_000,
    rtt_warmup=50,
    io=5_000,
    scale_workers=(1, 2, 4),
    timeout=240.0,
)
QUICK = Sizes(
    enqueue=1_000,
    drain=1_000,
    rtt=50,
    rtt_warmup=5,
    io=1_000,
    scale_workers=(1, 2),
    timeout=60.0,
)

DRAIN_CONCURRENCY = 100
IO_CONCURRENCY = 500
IO_SLEEP = 0.01
