"""Retries: explicit ``self.retry()``, ``autoretry_for`` with backoff, limits, RETRY state."""

from __future__ import annotations

import random
from typing import Any

import pytest

from aqueue import App, Task, TaskFailed, states
from aqueue.core.context import Request
from aqueue.core.errors import MaxRetriesExceededError
from aqueue.core.retry import backoff_delay


class Flaky(Exception):
    pass


async def test_explicit_retry_is_a_new_attempt_of_the_same_id(app: App) -> None:
    seen: list[tuple[int, int]] = []

    @app.task(bind=True, name="r.flaky")
    async def flaky(self: Task[[int], str], fail_times: int) -> str:
        seen.append((self.request.attempt, self.request.retries))
        if self.request.retries < fail_times:
            raise self.retry(exc=Flaky("not yet"), countdown=0.05)
        return "ok"

    async with app.worker():
        h = await flaky.delay(2)
        changes = [c async for c in h.events()]
    assert seen == [(1, 0), (2, 1), (3, 2)]
    assert changes[-1].state == states.SUCCESS and changes[-1].info == "ok"
    assert changes[-1].attempt == 3
    assert await app.broker.size("celery") == 0


async def test_retry_state_is_visible(app: App) -> None:
    @app.task(bind=True, name="r.slow_retry")
    async def slow_retry(self: Task[[], str]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=Flaky("later"), countdown=0.3)
        return "done"

    async with app.worker():
        h = await slow_retry.delay()
        states_seen = [c.state async for c in h.events()]
    assert states.RETRY in states_seen and states_seen[-1] == states.SUCCESS


async def test_max_retries_reraises_the_error(app: App) -> None:
    calls: list[int] = []

    @app.task(bind=True, name="r.always", max_retries=2)
    async def always(self: Task[[], None]) -> None:
        calls.append(self.request.retries)
        raise self.retry(exc=Flaky("always"), countdown=0)

    async with app.worker():
        with pytest.raises(TaskFailed) as info:
            await (await always.delay()).wait(timeout=10)
    assert calls == [0, 1, 2]
    assert info.value.exc_type == "Flaky"
    assert await app.broker.size("celery") == 0  # gone from the queue


async def test_max_retries_without_exc(app: App) -> None:
    @app.task(bind=True, name="r.noexc", max_retries=0)
    async def noexc(self: Task[[], None]) -> None:
        raise self.retry(countdown=0)

    async with app.worker():
        with pytest.raises(TaskFailed, match="MaxRetriesExceededError"):
            await (await noexc.delay()).wait(timeout=10)


async def test_per_call_max_retries(app: App) -> None:
    calls: list[int] = []

    @app.task(bind=True, name="r.percall")
    async def percall(self: Task[[], None]) -> None:
        calls.append(self.request.retries)
        raise self.retry(exc=Flaky("x"), countdown=0, max_retries=1)

    async with app.worker():
        with pytest.raises(TaskFailed):
            await (await percall.delay()).wait(timeout=10)
    assert calls == [0, 1]


async def test_autoretry_for_with_backoff(app: App) -> None:
    calls: list[int] = []

    @app.task(bind=True, name="r.auto", autoretry_for=(Flaky,), retry_backoff=0.01, max_retries=3)
    def auto(self: Task[[], int]) -> int:  # a sync task: retried the same way
        calls.append(self.request.retries)
        if len(calls) < 3:
            raise Flaky("transient")
        return len(calls)

    async with app.worker():
        assert await (await auto.delay()).wait(timeout=10) == 3
    assert calls == [0, 1, 2]


async def test_non_retryable_error_fails_at_once(app: App) -> None:
    calls: list[int] = []

    @app.task(name="r.strict", autoretry_for=(Flaky,), dont_autoretry_for=(ValueError,))
    async def strict() -> None:
        calls.append(1)
        raise ValueError("not retryable")

    @app.task(name="r.strict_sub", autoretry_for=(Exception,), dont_autoretry_for=(KeyError,))
    async def strict_sub() -> None:
        calls.append(2)
        raise KeyError("excluded")

    async with app.worker():
        with pytest.raises(TaskFailed, match="ValueError"):
            await (await strict.delay()).wait(timeout=10)
        with pytest.raises(TaskFailed, match="KeyError"):
            await (await strict_sub.delay()).wait(timeout=10)
    assert calls == [1, 2]


async def test_on_retry_hook(app: App) -> None:
    hooked: list[str] = []

    class Hooked(Task[Any, Any]):
        def on_retry(
            self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
        ) -> None:
            hooked.append(type(exc).__name__)

    @app.task(bind=True, base=Hooked, name="r.hooked")
    async def hooked_task(self: Task[[], str]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=Flaky("once"), countdown=0)
        return "ok"

    async with app.worker():
        assert await (await hooked_task.delay()).wait(timeout=10) == "ok"
    assert hooked == ["Flaky"]


def test_retry_outside_a_worker_is_an_error() -> None:
    app = App("x", broker="memory://retry-outside")

    @app.task(bind=True)
    async def t(self: Task[[], None]) -> None:
        self.retry()

    with pytest.raises(RuntimeError):
        t.retry()
    with pytest.raises(MaxRetriesExceededError):
        raise MaxRetriesExceededError()


def _request(retries: int) -> Request:
    return Request(
        id="i",
        task="t",
        args=(),
        kwargs={},
        queue="q",
        attempt=retries + 1,
        retries=retries,
        headers={},
    )


def test_backoff_delays() -> None:
    app = App("x", broker="memory://backoff")

    @app.task(retry_backoff=True, retry_backoff_max=10, retry_jitter=False)
    async def exp() -> None: ...

    @app.task(retry_backoff=2, retry_jitter=True)
    async def jittered() -> None: ...

    @app.task(default_retry_delay=7)
    async def fixed() -> None: ...

    assert [backoff_delay(exp, n) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    rng = random.Random(1)
    delays = [backoff_delay(jittered, 3, rng) for _ in range(200)]
    assert all(0 <= d <= 16 for d in delays) and max(delays) > 8  # full jitter over [0, 16]
    assert backoff_delay(fixed, 5) == 7
    assert _request(2).retries == 2
