"""aqueue and real Celery 5 on one Redis: each runs the other's tasks (issue 21).

Celery lives in a virtualenv of its own (tests/compat/celery_env.py) and runs as
subprocesses: a producer (``delay()`` / a chain, then ``get()``) and ``celery worker``. The
aqueue worker runs in the test's loop. Each test has its own queues; outcomes are awaited
(Celery's ``get()``, aqueue's ``wait()``), never slept for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aqueue import App
from aqueue.contrib.celery import REFUSED_QUEUE, CeleryBridge, CeleryResult, signature
from aqueue.core.errors import ConfigurationError, TaskFailed
from tests.conftest import (
    RABBIT_HOST,
    RABBIT_PORT,
    REDIS_HOST,
    REDIS_PORT,
    delete_redis_prefix,
    make_url,
    prefix_of,
    require_service,
)

from .celery_env import (
    CELERY_AMQP_URL,
    CELERY_URL,
    CeleryProject,
    celery_keys_deleted,
    celery_python,
    make_project,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture(scope="session")
def python() -> Path:
    return celery_python()


@pytest.fixture(
    params=[
        pytest.param("redis", id="redis"),
        pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def kind(request: pytest.FixtureRequest) -> str:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    if request.param == "rabbitmq":
        require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    return str(request.param)


@pytest.fixture
def backend(kind: str) -> str:
    """Celery's result backend: Redis beside either broker (a test may ask for rpc://)."""
    return CELERY_URL


@pytest.fixture
def project(python: Path, tmp_path: Path, kind: str, backend: str) -> Iterator[CeleryProject]:
    broker = CELERY_URL if kind == "redis" else CELERY_AMQP_URL
    made = make_project(python, tmp_path / "celery", broker, backend)
    with celery_keys_deleted(made):
        yield made


@pytest.fixture
async def app(project: CeleryProject, tmp_path: Path) -> AsyncIterator[App]:
    url = make_url("redis", tmp_path)
    the_app = App("mig", broker=url, lease_seconds=5.0)

    @the_app.task(name="mig.aq_mul")
    async def aq_mul(x: int, y: int) -> int:
        return x * y

    try:
        async with the_app:
            yield the_app
    finally:
        delete_redis_prefix(prefix_of(url))


@pytest.fixture
async def bridge(app: App, project: CeleryProject) -> AsyncIterator[CeleryBridge]:
    made = CeleryBridge(
        app,
        project.broker,
        result_backend=project.backend,
        queues=[project.aqueue_queue],
        default_queue=project.celery_queue,
        result_expires=600,
    )
    yield made
    await made.close()


async def test_a_celery_delay_runs_on_aqueue_and_celery_gets_the_result(
    app: App, project: CeleryProject, bridge: CeleryBridge
) -> None:
    async with app.worker(concurrency=4):
        lines = await project.produce("delay")
    assert lines[-1].get("value") == 42, lines
    assert bridge.relayed == 1 and bridge.refused == 0


@pytest.mark.rabbitmq
@pytest.mark.parametrize(("kind", "backend"), [("rabbitmq", "rpc://")])
async def test_a_celery_delay_over_rabbitmq_gets_an_rpc_reply(
    app: App, project: CeleryProject, bridge: CeleryBridge
) -> None:
    async with app.worker(concurrency=4):
        lines = await project.produce("delay")
    assert lines[-1].get("value") == 42, lines
    with pytest.raises(ConfigurationError, match="redis:// result backend"):
        await bridge.AsyncResult(lines[0]["id"]).state()  # rpc:// replies are the caller's


async def test_aqueue_sends_to_a_celery_worker_and_waits_for_its_result(
    app: App, project: CeleryProject, bridge: CeleryBridge
) -> None:
    async with project.worker():
        result = await bridge.send_task("mig.c_add", (2, 3))
        assert await result.wait(timeout=60) == 5
        assert await result.state() == "SUCCESS"


async def test_app_send_task_with_protocol_celery_is_run_by_a_celery_worker(
    app: App, project: CeleryProject, bridge: CeleryBridge
) -> None:
    # the spelling: app.send_task(name, ..., protocol="celery"); the handle is an
    # AsyncResult reading Celery's result, failures included
    async with project.worker():
        result = await app.send_task("mig.c_add", (4, 5), protocol="celery")
        assert isinstance(result, CeleryResult)
        assert await result.wait(timeout=60) == 9
        assert await result.successful()
        failing = await app.send_task("mig.c_add", ("a", 1), protocol="celery", countdown=0.1)
        with pytest.raises(TaskFailed) as failed:
            await failing.wait(timeout=60)
        assert failed.value.exc_type == "TypeError" and failed.value.task_id == failing.id
        assert await failing.state() == "FAILURE"


async def test_a_chain_alternating_celery_and_aqueue_steps_completes_both_ways(
    app: App, project: CeleryProject, bridge: CeleryBridge
) -> None:
    async with project.worker(), app.worker(concurrency=4):
        # started by Celery: c_add (Celery) -> aq_mul (aqueue) -> c_add (Celery)
        lines = await project.produce("chain")
        assert lines[-1].get("value") == 35, lines
        # started by aqueue: the same steps, each sent as a Celery message by the side
        # that ran the step before
        steps = [
            signature("mig.aq_mul", (10,), queue=project.aqueue_queue),
            signature("mig.c_add", (5,)),
        ]
        await bridge.send_task("mig.c_add", (1, 2), chain=steps)
        last = bridge.AsyncResult(steps[-1]["options"]["task_id"])
        assert await last.wait(timeout=60) == 35
    assert bridge.relayed == 2


@pytest.mark.rabbitmq
@pytest.mark.parametrize(("kind", "backend"), [("rabbitmq", "rpc://")])
async def test_a_mixed_chain_over_rabbitmq_answers_its_rpc_caller(
    app: App, project: CeleryProject, bridge: CeleryBridge
) -> None:
    async with project.worker(), app.worker(concurrency=4):
        lines = await project.produce("chain")
    assert lines[-1].get("value") == 35, lines
    assert bridge.relayed == 1


async def test_a_pickled_celery_message_is_dead_lettered_with_a_reason(
    app: App, project: CeleryProject, bridge: CeleryBridge
) -> None:
    async with app.worker(concurrency=4):
        lines = await project.produce("pickle")
    sent_id = lines[0]["id"]
    # the bridge failed its Celery result too, so get() raised instead of waiting forever
    assert lines[-1].get("error") == "Refused", lines
    assert "celery:unsupported-content-type pickle" in lines[-1]["message"]
    letters = await app.control.dead_letters.list(REFUSED_QUEUE)
    assert [(d.id, d.reason) for d in letters] == [
        (sent_id, "celery:unsupported-content-type pickle")
    ]
    assert bridge.refused == 1 and bridge.relayed == 0
