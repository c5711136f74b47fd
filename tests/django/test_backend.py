"""aqueue.django.AqueueBackend with the django-tasks backport on Django 5.2: enqueue onto a
real worker (SQLite broker), results read back, the field mappings, sending on commit."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from aqueue import App
from aqueue.core.message import decode_message
from aqueue.django import RUN_TASK, AqueueBackend, run_in_loop
from aqueue.django.backend import aqueue_priority
from aqueue.django.compat import TaskResultDoesNotExist, TaskResultStatus

from . import jobs
from .jobs import (
    app,
    attempt,
    enqueue_blocking_on_the_loop,
    explode,
    fan_out_async,
    fan_out_sync,
    greet,
    held,
    multiply,
    worker_app,
)


async def _size(queue: str) -> int:
    await app.connect()
    return await app.broker.size(queue)


async def _purge(queue: str) -> int:
    await app.connect()
    return await app.broker.purge(queue)


@pytest.fixture
def held_queue() -> Any:
    run_in_loop(_purge("held"))
    yield lambda: run_in_loop(_size("held"))
    run_in_loop(_purge("held"))


async def _finish(result_id: str) -> None:
    """Run the worker until the task ended (in the test's loop, on the same SQLite file)."""
    async with worker_app.worker(concurrency=4, hostname="djangotest@test"):
        await worker_app.AsyncResult(result_id).wait(timeout=30, propagate=False)


async def test_sync_and_async_tasks_run_on_a_worker() -> None:
    product = multiply.enqueue(6, 7)
    greeting = await greet.aenqueue("django")
    assert product.status == TaskResultStatus.READY
    await _finish(product.id)
    await _finish(greeting.id)
    await product.arefresh()
    assert (product.status, product.return_value) == (TaskResultStatus.SUCCESSFUL, 42)
    assert product.finished_at is not None
    again = await greet.aget_result(greeting.id)
    assert again.return_value == "hello django"
    assert again.args == ["django"]


async def test_a_failure_reads_failed_with_the_remote_error() -> None:
    result = explode.enqueue("no such key")
    await _finish(result.id)
    await result.arefresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is KeyError
    assert "no such key" in result.errors[0].traceback
    with pytest.raises(ValueError):
        _ = result.return_value


async def test_takes_context_counts_the_attempt() -> None:
    result = attempt.enqueue()
    await _finish(result.id)
    await result.arefresh()
    assert result.return_value == 1


def test_an_unknown_or_unreceived_id_does_not_exist(held_queue: Any) -> None:
    with pytest.raises(TaskResultDoesNotExist):
        multiply.get_result("no-such-id")
    queued = held.enqueue(1)  # no worker consumes "held"
    with pytest.raises(TaskResultDoesNotExist):
        held.get_result(queued.id)


def test_queue_priority_and_run_after_reach_the_message(held_queue: Any) -> None:
    later = timezone.now() + timedelta(hours=1)
    result = held.using(priority=100, run_after=later).enqueue(5)

    async def scheduled() -> list[tuple[float, bytes]]:
        await app.connect()
        return await app.broker.scheduled("held", 10)

    (eta, body), *_ = run_in_loop(scheduled())
    assert abs(eta - later.timestamp()) < 1
    message = decode_message(body, 1 << 20)
    assert (message.id, message.task, message.priority) == (result.id, RUN_TASK, 9)
    assert message.eta is not None and abs(message.eta - later.timestamp()) < 1
    assert [aqueue_priority(p) for p in (-100, -1, 0, 1, 50, 100)] == [0, 4, 4, 4, 6, 9]


def test_enqueue_on_commit_option(held_queue: Any) -> None:
    on_commit = held.using(backend="oncommit")
    with pytest.raises(RuntimeError), transaction.atomic():
        on_commit.enqueue(1)
        raise RuntimeError("rolled back")
    assert held_queue() == 0
    with transaction.atomic():
        on_commit.enqueue(2)
        assert held_queue() == 0
    assert held_queue() == 1
    on_commit.enqueue(3)  # no transaction: at once
    assert held_queue() == 2


def test_a_backend_from_a_broker_url(tmp_path: Any) -> None:
    backend = AqueueBackend("fromurl", {"OPTIONS": {"BROKER_URL": f"sqlite:///{tmp_path}/x.db"}})
    assert isinstance(backend.app, App)
    assert backend.app.conf.result_extended
    assert backend.app.broker_url.endswith("/x.db")


def test_an_app_option_that_is_no_app() -> None:
    backend = AqueueBackend("bad", {"OPTIONS": {"APP": "tests.django.jobs:STORE"}})
    with pytest.raises(TypeError, match="no aqueue App"):
        _ = backend.app


def test_run_in_loop_runs_on_the_loop_thread() -> None:
    assert run_in_loop(asyncio.sleep(0, result=jobs.STORE)) == jobs.STORE


async def test_django_tasks_enqueue_django_tasks_on_the_worker() -> None:
    async with worker_app.worker(concurrency=4, hostname="fanout@test"):
        for parent, value in ((fan_out_sync, 10), (fan_out_async, 15)):
            started = await parent.aenqueue(5)  # on this loop: the worker app's own
            child_id = await worker_app.AsyncResult(started.id).wait(timeout=30)
            assert await worker_app.AsyncResult(child_id).wait(timeout=30) == value
        refused = await enqueue_blocking_on_the_loop.aenqueue()
        handle = worker_app.AsyncResult(refused.id)
        await handle.wait(timeout=30, propagate=False)
    assert handle.status == "FAILURE"
    assert "await the coroutine" in str(handle.result)


def test_the_system_check_wants_result_extended(tmp_path: Any) -> None:
    plain = App("plain", broker=f"sqlite:///{tmp_path}/p.db")
    warned = AqueueBackend("plain", {"OPTIONS": {"APP": plain}}).check()
    assert [m.id for m in warned] == ["aqueue.W001"]
    assert AqueueBackend("default", {"OPTIONS": {"APP": app}}).check() == []
