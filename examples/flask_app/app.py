"""The Celery notes' Flask flow on aqueue's blocking API (no event loop in sight):

1. ``POST /reports {"customer": "acme", "month": "2026-11"}``: the app submits the job and
   replies at once with its id (202); the result backend records it (PENDING);
2. a worker builds it; the backend records it done (SUCCESS, with the report);
3. ``GET /reports/<id>``: the report's state, and the report once it is ready
   (``?wait=5`` waits up to five seconds for it first: ``result.get(timeout=5)``).

Every aqueue call here is a ``.sync`` call: it runs on the process's one background event
loop, over one set of connections, whatever thread Flask serves the request on.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from aqueue import App, TaskFailed, TaskRevoked, states


def create_app(queue: App) -> Flask:
    """The Flask app sending to ``queue``."""
    web = Flask(__name__)
    build = queue.tasks["reports.build"]

    @web.post("/reports")
    def submit() -> tuple[dict[str, str], int]:
        body = request.get_json(force=True)
        result = build.sync.delay(str(body["customer"]), str(body["month"]))
        return {"id": result.id}, 202

    @web.get("/reports/<report_id>")
    def fetch(report_id: str) -> dict[str, Any]:
        result = queue.sync.AsyncResult(report_id)
        wait = request.args.get("wait", type=float)
        if wait:
            try:
                result.get(timeout=wait)
            except (TimeoutError, TaskFailed, TaskRevoked):
                pass  # not ready yet, failed or revoked: the state below says which
        state = result.state
        body: dict[str, Any] = {"id": report_id, "state": state}
        if state == states.SUCCESS:
            body["report"] = result.result
        elif state in (states.FAILURE, states.REVOKED):
            body["error"] = str(result.result)
        return body

    return web
