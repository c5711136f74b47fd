"""celery101's tasks (day 7: each step reads its operands from ``job_data``) and its three
test-case workflows, as aqueue tasks; ``start_workflow`` is a Django task (django.tasks)
that builds and starts one."""

from __future__ import annotations

from typing import Any

from celery101.aqueue import app

from aqueue import chain

JobData = dict[str, list[float]]


def _operands(step: str, previous: float | None, job_data: JobData) -> tuple[float, float]:
    """A step's two numbers: the previous step's result and ``job_data[step][0]``, or, for
    the first step of a workflow, both from ``job_data[step]``."""
    given = job_data[step]
    return (given[0], given[1]) if previous is None else (previous, given[0])


@app.task(name="division-of-two-numbers")
def div(previous: float | None = None, *, job_data: JobData) -> float:
    x, y = _operands("div", previous, job_data)
    return x / y


@app.task(name="product-of-two-numbers")
def mul(previous: float | None = None, *, job_data: JobData) -> float:
    x, y = _operands("mul", previous, job_data)
    return x * y


@app.task(name="sum-of-two-numbers")
def add(previous: float | None = None, *, job_data: JobData) -> float:
    x, y = _operands("add", previous, job_data)
    return x + y


@app.task(name="diff-of-two-numbers")
def sub(previous: float | None = None, *, job_data: JobData) -> float:
    x, y = _operands("sub", previous, job_data)
    return x - y


#: celery101's test cases
WORKFLOWS: dict[str, list[Any]] = {
    "ESG-TC01": [div, mul, add, sub],
    "ESG-TC02": [div, mul],
    "ESG-TC03": [add, sub],
}


def workflow(testcase: str, job_data: JobData) -> Any:
    """The chain of a test case, each step given ``job_data`` (celery101 day 7)."""
    return chain(*(step.s(job_data=job_data) for step in WORKFLOWS[testcase]))
