"""The seeds' web flow on FastAPI: POST starts the day-4 workflow and returns its id; GET
walks its steps (the day-6 status walk) and returns each one's state and the result.

    POST /workflows      {"div": [4, 2], "mul": [3], "add": [6], "sub": [2]}
                         -> 202 {"id": "<the first step's id>"}
    GET  /workflows/{id} -> {"state": "SUCCESS", "result": 10.0,
                             "steps": [{"step": "div", "id": "...", "state": "SUCCESS"}, ...]}

The id is the workflow's first task id: ``app.workflow_states(id)`` finds every node from
it, so a later request (another process, after a restart) needs nothing else.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from aqueue import App, states
from aqueue.contrib.asgi import lifespan

from .tasks import STEPS, create_queue, workflow


class Job(BaseModel):
    """Each step's own arguments (day-7's ``job_data``)."""

    div: list[float] = [4, 2]
    mul: list[float] = [3]
    add: list[float] = [6]
    sub: list[float] = [2]


def create_api(queue: App, *, worker: bool = False) -> FastAPI:
    """The web app; ``worker=True`` runs an embedded worker for its lifetime."""
    api = FastAPI(title="day-4 workflows", lifespan=lifespan(queue, worker=worker))

    @api.post("/workflows", status_code=202)
    async def start(job: Job) -> dict[str, str]:
        handle = await workflow(queue, job.model_dump()).apply_async()
        assert handle.workflow_ids is not None
        return {"id": handle.workflow_ids[0]}

    @api.get("/workflows/{workflow_id}")
    async def status(workflow_id: str) -> dict[str, Any]:
        by_id = await queue.workflow_states(workflow_id)
        if not by_id:
            raise HTTPException(404, f"no workflow {workflow_id}")
        steps = [  # in the workflow's order: div, mul, add, sub
            {"step": STEPS[i] if i < len(STEPS) else None, "id": task_id, "state": state}
            for i, (task_id, state) in enumerate(by_id.items())
        ]
        body: dict[str, Any] = {"id": workflow_id, "steps": steps, "result": None}
        ended = [s for s in steps if s["state"] in (states.FAILURE, states.REVOKED)]
        if ended:  # a step failed or was revoked: the steps after it never run
            body["state"] = ended[0]["state"]
            failed = queue.AsyncResult(ended[0]["id"])
            await failed.state()
            body["error"] = str(failed.result)
        elif steps[-1]["state"] == states.SUCCESS:
            last = queue.AsyncResult(steps[-1]["id"])
            await last.state()
            body["state"], body["result"] = states.SUCCESS, last.result
        elif all(s["state"] == states.PENDING for s in steps):
            body["state"] = states.PENDING
        else:
            body["state"] = states.STARTED
        return body

    return api


#: ``uvicorn examples.fastapi_app.main:api``: the web app alone (run workers beside it with
#: ``aqueue worker examples.fastapi_app.main:queue``); ``python -m examples.fastapi_app``
#: runs it with an embedded worker
queue = create_queue()
api = create_api(queue, worker=os.environ.get("EMBEDDED_WORKER") == "1")
