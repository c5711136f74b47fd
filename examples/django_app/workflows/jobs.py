"""Django tasks (``django.tasks`` / the ``django_tasks`` backport), run by aqueue workers
through ``aqueue.django.AqueueBackend``."""

from __future__ import annotations

try:  # Django >= 6.0
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from django_tasks import task

from .models import Run
from .tasks import workflow


@task()
async def start_workflow(run_id: int) -> list[str]:
    """Start the run's workflow and record its step ids (celery101 day 6: the last step's
    result, walked up through its parents).

    It reads the Run row, so the view enqueues it on commit: a worker never looks for a row
    that is not committed yet (or never will be).
    """
    run = await Run.objects.aget(pk=run_id)
    last = await workflow(run.testcase, run.job_data).delay()
    ids = []
    node = last
    while node is not None:
        ids.append(node.id)
        node = node.parent
    run.task_ids = ids[::-1]
    await run.asave(update_fields=["task_ids"])
    return run.task_ids


@task()
def check_numbers(job_data: dict[str, list[object]]) -> int:
    """A plain (sync) Django task: counts job_data's numbers, refusing anything else. It runs
    in a worker thread, with the ORM usable as in a request."""
    count = 0
    for values in job_data.values():
        for value in values:
            if not isinstance(value, int | float):
                raise ValueError(f"not a number: {value!r}")
            count += 1
    return count
