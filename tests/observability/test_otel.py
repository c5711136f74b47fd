"""OpenTelemetry: a FastAPI request that sends a workflow is one trace with every task in it,
checked with the SDK's in-memory exporter (the request's server span from OpenTelemetry's
FastAPI instrumentation, a ``send`` span per message, a ``process`` span per task)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aqueue import App, TaskFailed, chain, chord
from aqueue.contrib.otel import TracingMiddleware

from ..conftest import app_with_shared_results

KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq+redis", marks=[pytest.mark.rabbitmq, pytest.mark.redis]),
]


@pytest.fixture(params=KINDS)
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    # on RabbitMQ a chord needs a shared result store: Redis
    async with app_with_shared_results(request, request.param, tmp_path, "traced") as the_app:
        yield the_app


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p


def web(app: App, provider: TracerProvider) -> FastAPI:
    """A FastAPI app whose endpoints send workflows, instrumented by OpenTelemetry's own."""
    app.add_middleware(TracingMiddleware(provider))

    @app.task(name="traced.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="traced.total")
    async def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="traced.boom")
    async def boom() -> None:
        raise ValueError("traced failure")

    api = FastAPI()

    @api.post("/chain")
    async def send_chain() -> dict[str, str]:
        handle = await chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
        return {"id": handle.id}

    @api.post("/chord")
    async def send_chord() -> dict[str, str]:
        handle = await chord([add.s(i, i) for i in range(3)], total.s()).apply_async()
        return {"id": handle.id}

    @api.post("/boom")
    async def send_boom() -> dict[str, str]:
        return {"id": (await boom.delay()).id}

    FastAPIInstrumentor.instrument_app(api, tracer_provider=provider)
    return api


async def post(api: FastAPI, path: str) -> str:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
        response = await client.post(path)
    assert response.status_code == 200, response.text
    task_id = response.json()["id"]
    assert isinstance(task_id, str)
    return task_id


def by_kind(spans: list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == kind]


def message_id(span: ReadableSpan) -> str:
    assert span.attributes is not None
    value = span.attributes["messaging.message.id"]
    assert isinstance(value, str)
    return value


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, span.name
    [parent] = [s for s in spans if s.context.span_id == span.parent.span_id]
    return parent


async def test_a_request_sending_a_chain_is_one_trace_with_every_task(
    app: App, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    api = web(app, provider)
    async with app.worker():
        last = await post(api, "/chain")
        assert await app.AsyncResult(last).get(timeout=15) == 10
    spans = list(exporter.get_finished_spans())
    [server] = by_kind(spans, SpanKind.SERVER)
    sends, processes = by_kind(spans, SpanKind.PRODUCER), by_kind(spans, SpanKind.CONSUMER)
    assert len(sends) == 3 and len(processes) == 3
    # one trace: the request, every send and every task
    assert {s.context.trace_id for s in spans} == {server.context.trace_id}
    # the links: request -> send 1 -> process 1 -> send 2 -> process 2 -> send 3 -> process 3
    send = {message_id(s): s for s in sends}
    process = {message_id(s): s for s in processes}
    assert send.keys() == process.keys()
    first = [i for i, s in send.items() if parent_of(s, spans) is server]
    assert len(first) == 1
    step, order = first[0], []
    while True:
        order.append(step)
        assert parent_of(process[step], spans) is send[step]
        following = [i for i, s in send.items() if parent_of(s, spans) is process[step]]
        if not following:
            break
        [step] = following
    assert len(order) == 3 and order[-1] == last
    # the messaging semantic conventions
    for s in sends:
        assert s.name == "send celery"
        assert s.attributes is not None
        assert s.attributes["messaging.system"] == "aqueue"
        assert s.attributes["messaging.operation.type"] == "send"
        assert s.attributes["messaging.destination.name"] == "celery"
        assert s.attributes["messaging.message.conversation_id"] == order[0]
        assert s.attributes["aqueue.task.name"] == "traced.add"
    for s in processes:
        assert s.name == "process celery" and s.status.status_code == StatusCode.UNSET
        assert s.attributes is not None
        assert s.attributes["messaging.operation.type"] == "process"
        assert s.attributes["aqueue.task.attempt"] == 1


async def test_a_chord_is_one_trace_its_body_a_child_of_the_last_member(
    app: App, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    api = web(app, provider)
    async with app.worker():
        body = await post(api, "/chord")
        assert await app.AsyncResult(body).get(timeout=15) == 6
    spans = list(exporter.get_finished_spans())
    [server] = by_kind(spans, SpanKind.SERVER)
    processes = {message_id(s): s for s in by_kind(spans, SpanKind.CONSUMER)}
    sends = {message_id(s): s for s in by_kind(spans, SpanKind.PRODUCER)}
    assert len(processes) == 4  # three members and the body
    assert {s.context.trace_id for s in spans} == {server.context.trace_id}
    members = [i for i in processes if i != body]
    for member in members:  # sent by the request
        assert parent_of(sends[member], spans) is server
        assert parent_of(processes[member], spans) is sends[member]
    # the body is sent by the worker, inside the member that finished last
    assert parent_of(processes[body], spans) is sends[body]
    assert parent_of(sends[body], spans) in [processes[m] for m in members]


async def test_a_failing_task_marks_its_span_as_an_error(
    app: App, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    api = web(app, provider)
    async with app.worker():
        task_id = await post(api, "/boom")
        with pytest.raises(TaskFailed):
            await app.AsyncResult(task_id).get(timeout=15)
    [process] = by_kind(list(exporter.get_finished_spans()), SpanKind.CONSUMER)
    assert process.status.status_code == StatusCode.ERROR
    assert process.attributes is not None and process.attributes["error.type"] == "ValueError"
    assert [e.name for e in process.events] == ["exception"]


async def test_a_task_sent_without_a_current_span_starts_a_trace(
    app: App, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app.add_middleware(TracingMiddleware(provider))

    @app.task(name="traced.one")
    async def one() -> str:
        return "one"

    async with app.worker():
        assert await (await one.delay()).get(timeout=15) == "one"
    spans = list(exporter.get_finished_spans())
    [send] = by_kind(spans, SpanKind.PRODUCER)
    [process] = by_kind(spans, SpanKind.CONSUMER)
    assert send.parent is None  # the root
    assert parent_of(process, spans) is send


def test_importing_aqueue_imports_neither_opentelemetry_nor_prometheus() -> None:
    code = (
        "import sys, aqueue, aqueue.signals, aqueue.cli; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('opentelemetry', 'prometheus_client') "
        "or m.startswith('aqueue.contrib.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
