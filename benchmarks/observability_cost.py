"""What metrics and tracing cost a worker: the drain with neither, with ``WorkerMetrics``
installed (``--metrics-port``), and with ``TracingMiddleware`` (the OpenTelemetry SDK,
spans batched to an exporter that drops them).

    PYTHONPATH=. python -m benchmarks.observability_cost [--tasks 20000] [--runs 3]

The harness of ``events_cost.py``: each run queues ``--tasks`` no-op tasks (untimed,
``delay_many``), then times one embedded worker (concurrency 100, burst mode, results
stored, uvloop when installed) from its start until it has drained the queue. Redis DB 14
by default (``BENCH_REDIS_URL``), under a prefix of its own that is deleted afterwards.
With neither installed the worker runs the code it runs without this feature: nothing is
connected, no middleware is added (``off`` is the baseline, not a separate build).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Sequence

import redis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from aqueue import App
from aqueue.contrib.otel import TracingMiddleware
from aqueue.contrib.prometheus import WorkerMetrics

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
MODES = ("off", "metrics", "tracing")


class Dropping(SpanExporter):
    """Takes batches of spans and drops them: the cost measured is the worker's."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def make_app(prefix: str) -> App:
    app = App("obsbench", broker=f"{REDIS_URL}?prefix={prefix}", task_default_queue="obsbench")

    @app.task(name="obsbench.noop")
    async def noop() -> None:
        return None

    return app


async def drain(app: App, tasks: int, mode: str) -> tuple[float, float]:
    """Seconds the worker took to drain ``tasks`` and the CPU seconds this process spent."""
    noop = app.tasks["obsbench.noop"]
    metrics = provider = exporter = None
    async with app:
        for start in range(0, tasks, 5000):
            await noop.delay_many([() for _ in range(min(5000, tasks - start))])
        if mode == "metrics":
            metrics = WorkerMetrics(app).install()
        elif mode == "tracing":
            exporter = Dropping()
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=tasks))
            app.add_middleware(TracingMiddleware(provider))
        worker = app.worker(concurrency=100, burst=True)
        t0, c0 = time.perf_counter(), time.process_time()
        await worker.run()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert worker.executor.succeeded == tasks, worker.executor.succeeded
    if metrics is not None:
        metrics.uninstall()
    if provider is not None and exporter is not None:
        provider.shutdown()
        assert exporter.spans == tasks, exporter.spans
    return elapsed, cpu


def run(mode: str, tasks: int) -> tuple[float, float]:
    prefix = f"obsb-{uuid.uuid4().hex[:10]}"
    try:
        loop_factory = None
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(drain(make_app(prefix), tasks, mode))
    finally:
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
            seconds, cpu = run(mode, args.tasks)
            rates[mode].append(args.tasks / seconds)
            cpus[mode].append(cpu / args.tasks * 1e6)
            print(
                f"run {i + 1} {mode:8} {rates[mode][-1]:9,.0f} tasks/s "
                f"{cpus[mode][-1]:6.1f} µs CPU/task",
                flush=True,
            )
    base = statistics.median(rates["off"])
    base_cpu = statistics.median(cpus["off"])
    for mode in MODES:
        med, cpu = statistics.median(rates[mode]), statistics.median(cpus[mode])
        runs = ", ".join(f"{r:,.0f}" for r in rates[mode])
        print(
            f"{mode:8} median {med:9,.0f} tasks/s ({med / base:.2f}x), "
            f"{cpu:.1f} µs CPU/task ({cpu - base_cpu:+.1f})  runs: {runs}"
        )


if __name__ == "__main__":
    main()
