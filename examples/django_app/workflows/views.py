"""celery101's API as plain Django views.

``POST /`` (form fields ``testcase`` and ``job_data``, as the seed's curl sends them)
records a Run and enqueues ``start_workflow`` on commit; the answer is the run's id.
``GET /runs/<id>`` walks the workflow: each step's state, then the result.
"""

from __future__ import annotations

import json
from typing import Any

from celery101.aqueue import app
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from aqueue import states
from aqueue.django import enqueue_on_commit, run_in_loop
from aqueue.django.compat import TaskResultDoesNotExist

from .jobs import start_workflow
from .models import Run
from .tasks import WORKFLOWS


@csrf_exempt
@require_POST
def runs(request: HttpRequest) -> HttpResponse:
    testcase = request.POST.get("testcase", "")
    if testcase not in WORKFLOWS:
        return JsonResponse({"error": f"testcase is one of {sorted(WORKFLOWS)}"}, status=400)
    try:
        job_data = json.loads(request.POST.get("job_data", ""))
    except ValueError:
        return JsonResponse({"error": "job_data is not JSON"}, status=400)
    with transaction.atomic():
        run = Run.objects.create(testcase=testcase, job_data=job_data)
        started = enqueue_on_commit(start_workflow, run.pk)  # sent when the row is committed
        run.start_id = started.id
        run.save(update_fields=["start_id"])
    return JsonResponse({"run": run.pk, "start": started.id}, status=201)


@require_GET
def run_status(request: HttpRequest, pk: int) -> HttpResponse:
    run = Run.objects.filter(pk=pk).first()
    if run is None:
        return JsonResponse({"error": "no such run"}, status=404)
    out = run_in_loop(_walk(run), app)
    try:  # Django's TaskResult of start_workflow, read back through the aqueue backend
        out["start"] = start_workflow.get_result(run.start_id).status
    except TaskResultDoesNotExist:  # no worker has received it yet
        out["start"] = "READY"
    return JsonResponse(out)


async def _walk(run: Run) -> dict[str, Any]:
    """celery101 day 6: the state of each step, first to last, and the last one's result."""
    steps = []
    for task_id in run.task_ids:
        handle = app.AsyncResult(task_id)
        state = await handle.state()
        steps.append({"id": task_id, "task": handle.name, "state": state})
    out: dict[str, Any] = {"run": run.pk, "testcase": run.testcase, "steps": steps}
    out["state"] = steps[-1]["state"] if steps else states.PENDING
    if steps and steps[-1]["state"] == states.SUCCESS:
        last = app.AsyncResult(run.task_ids[-1])
        await last.state()
        out["result"] = last.result
    failed = [s for s in steps if s["state"] == states.FAILURE]
    if failed:
        out["state"] = states.FAILURE
        handle = app.AsyncResult(failed[0]["id"])
        await handle.state()
        out["error"] = str(handle.result)
    return out
