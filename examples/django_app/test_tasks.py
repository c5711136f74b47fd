"""The celery101 tasks and workflows under aqueue's pytest plugin (docs/testing.md)."""

from __future__ import annotations

import pytest
from workflows.tasks import div, workflow

from aqueue import App
from aqueue.testing import VirtualTime, drain


async def test_tc01_workflow(aqueue_app: App) -> None:
    last = await workflow("ESG-TC01", {"div": [4, 2], "mul": [3], "add": [6], "sub": [2]}).delay()
    await drain(aqueue_app)
    assert await last.wait(timeout=0) == 10
    assert await last.parent.state() == "SUCCESS"  # add, the step before


async def test_a_failing_step_fails_the_test(aqueue_app: App) -> None:
    await workflow("ESG-TC02", {"div": [4, 0], "mul": [3]}).delay()
    with pytest.raises(ZeroDivisionError):
        await drain(aqueue_app)


async def test_countdown(aqueue_app: App, aqueue_clock: VirtualTime) -> None:
    h = await div.apply_async(kwargs={"job_data": {"div": [9, 3]}}, countdown=300)
    assert await drain(aqueue_app) == 0
    await aqueue_clock.advance(300)
    assert await drain(aqueue_app) == 1
    assert await h.wait(timeout=0) == 3
