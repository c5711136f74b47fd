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

import uuid
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from aqueue import App
from aqueue.contrib.otel import TracingMiddleware
from aqueue.contrib.prometheus import WorkerMetrics
from aqueue.runner import run as run_on_loop

from .cost import compare, delete_prefix, enqueue, noop_app, timed_drain

MODES = ("off", "metrics", "tracing")


class Dropping(SpanExporter):
    """Takes batches of spans and drops them: the cost measured is the worker's."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def drain(app: App, tasks: int, mode: str) -> tuple[float, float]:
    """Seconds the worker took to drain ``tasks`` and the CPU seconds this process spent."""
    metrics = provider = exporter = None
    async with app:
        await enqueue(app, tasks)
        if mode == "metrics":
            metrics = WorkerMetrics(app).install()
        elif mode == "tracing":
            exporter = Dropping()
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=tasks))
            app.add_middleware(TracingMiddleware(provider))
        elapsed, cpu = await timed_drain(app.worker(concurrency=100, burst=True), tasks)
    if metrics is not None:
        metrics.uninstall()
    if provider is not None and exporter is not None:
        provider.shutdown()
        assert exporter.spans == tasks, exporter.spans
    return elapsed, cpu


def run(mode: str, tasks: int) -> tuple[float, float, str]:
    prefix = f"obsb-{uuid.uuid4().hex[:10]}"
    try:
        seconds, cpu = run_on_loop(lambda: drain(noop_app("obsbench", prefix), tasks, mode))
        return seconds, cpu, ""
    finally:
        delete_prefix(prefix)


if __name__ == "__main__":
    compare(MODES, run)
