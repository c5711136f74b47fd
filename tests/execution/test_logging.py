"""What the worker logs per task (docs/cli.md, "The log"): a line per task received and
succeeded at INFO, the traceback of an unexpected failure at ERROR, retries at WARNING,
never arguments or results; the task-aware formatter."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator

import pytest

from aqueue import App, TaskFailed
from aqueue.core.config import Settings
from aqueue.core.logs import TaskFormatter

SECRET_ARG = "argument-5e3f"


@pytest.fixture
def app() -> App:
    return App("logs", broker=f"memory://logs{uuid.uuid4().hex[:8]}", lease_seconds=5.0)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The worker CLI's handler and formats, on the root logger, at INFO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    conf = Settings()
    handler.setFormatter(TaskFormatter(conf.worker_log_format, conf.worker_task_log_format))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_received_succeeded_and_failed_lines(app: App, captured: io.StringIO) -> None:
    user_log = logging.getLogger("proj.tasks")

    @app.task(name="proj.add")
    async def add(x: str) -> str:
        user_log.info("working on it")
        return x + "-result-9d1"

    @app.task(name="proj.fail")
    def fail(x: str) -> None:
        {}[x]

    async with app, app.worker():
        ok = await add.delay(SECRET_ARG)
        bad = await fail.delay(SECRET_ARG)
        await ok.wait(timeout=10)
        with pytest.raises(TaskFailed):
            await bad.wait(timeout=10)
    out = captured.getvalue()
    assert f"INFO/MainProcess] aqueue.worker: Task proj.add[{ok.id}] received\n" in out
    assert f"aqueue.worker: Task proj.add[{ok.id}] succeeded in " in out
    # inside the task, any logger's line names the task (worker_task_log_format)
    assert f"INFO/MainProcess] proj.add[{ok.id}]: working on it\n" in out
    assert (
        f"ERROR/MainProcess] aqueue.worker: Task proj.fail[{bad.id}] raised unexpected: "
        f"KeyError('{SECRET_ARG}')\nTraceback (most recent call last):\n"
    ) in out
    assert "    {}[x]\n" in out and f"KeyError: '{SECRET_ARG}'" in out
    # the argument shows only in the exception the task raised, never as an argument
    assert out.count(SECRET_ARG) == 2 and "-result-9d1" not in out


async def test_expected_errors_and_retries(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "aqueue")

    @app.task(name="proj.expected", throws=(ValueError,))
    async def expected() -> None:
        raise ValueError("bad input")

    @app.task(name="proj.flaky", autoretry_for=(OSError,), max_retries=1, default_retry_delay=0)
    async def flaky() -> None:
        raise OSError("down")

    async with app, app.worker():
        e = await expected.delay()
        f = await flaky.delay()
        for h in (e, f):
            with pytest.raises(TaskFailed):
                await h.wait(timeout=10)
    records = {(r.levelname, r.getMessage().split("\n")[0]) for r in caplog.records}
    assert ("INFO", f"Task proj.expected[{e.id}] raised expected: ValueError('bad input')") in (
        records
    )
    assert ("WARNING", f"Task proj.flaky[{f.id}] retry 1 in 0.0s: OSError('down')") in records
    assert (
        "ERROR",
        f"Task proj.flaky[{f.id}] raised unexpected: OSError('down') (attempt 2)",
    ) in records
    expected_line = next(r for r in caplog.records if "raised expected" in r.getMessage())
    assert "Traceback" not in expected_line.getMessage()


async def test_nothing_per_task_below_info(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "aqueue")

    @app.task(name="proj.quiet")
    async def quiet() -> int:
        return 1

    async with app, app.worker():
        await (await quiet.delay()).wait(timeout=10)
    assert not [r for r in caplog.records if "proj.quiet" in r.getMessage()]


def test_task_formatter_outside_a_task_uses_the_plain_format() -> None:
    formatter = TaskFormatter("plain %(name)s: %(message)s", "task %(task_name)s: %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert formatter.format(record) == "plain x: hello"
