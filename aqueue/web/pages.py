"""The dashboard's pages (server-rendered with Jinja2) and its actions (HTML forms).

Each page marks the parts that change with ``data-live``; ``static/live.js`` fetches the
page again when the live stream says the model changed and swaps those parts, so a
running workflow moves on screen without a reload and the page works without the script
(a reload shows the same). Actions are POST forms with a CSRF token and a confirmation
(``data-confirm``); in read-only mode they are not rendered and answer 403.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from aqueue.__about__ import __version__
from aqueue.core import states
from aqueue.core.errors import ConfigurationError
from aqueue.core.urls import redact

from .api import select_tasks
from .security import CSRF_COOKIE, CSRF_FIELD, csrf_ok, csrf_token, form_fields
from .state import FINAL_STATES

if TYPE_CHECKING:
    from .app import Dashboard
    from .state import TaskInfo

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

PAGE_SIZE = 50

STATES = [
    states.PENDING,
    states.RECEIVED,
    states.STARTED,
    states.RETRY,
    states.SUCCESS,
    states.FAILURE,
    states.REVOKED,
    "REJECTED",
]


def _ts(value: float | None) -> str:
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _ago(value: float | None) -> str:
    if value is None:
        return ""
    seconds = max(0.0, time.time() - value)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _duration(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


templates.env.filters["ts"] = _ts
templates.env.filters["duration"] = _duration
templates.env.filters["ago"] = _ago


def _board(request: Request) -> Dashboard:
    board: Dashboard = request.app.state.dashboard
    return board


def root(request: Request) -> str:
    """Where the dashboard is mounted (``""`` at the server's root)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(
    request: Request, name: str, page: str, *, status_code: int = 200, **context: Any
) -> Response:
    """A page, with what every page shows (the nav, the mode, the CSRF token)."""
    board = _board(request)
    context.update(
        root=root(request),
        flash=request.query_params.get("flash"),
        page=page,
        board=board,
        read_only=board.read_only,
        show_arguments=board.show_arguments,
        problem=board.state.problem,
        csrf=csrf_token(request),
        csrf_field=CSRF_FIELD,
        version=__version__,
        broker=redact(board.app.broker_url),
    )
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    new = request.state.__dict__.get("new_csrf")
    if new:
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict")
    return response


# -- pages --------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    board = _board(request)
    rate, failures = board.state.throughput()
    registry = await board.fleet.registry()
    return render(
        request,
        "overview.html",
        "overview",
        rate=rate,
        failures=failures,
        counts=board.state.state_counts(),
        totals=board.state.counts,
        queues=await board.fleet.queues(),
        workers=_workers(board, registry),
        recent=list(board.state.iter_tasks())[:10],
    )


def _workers(board: Dashboard, registry: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Registry entries and event-only workers, merged by node name."""
    out: dict[str, dict[str, Any]] = {}
    for w in registry or []:
        out[w["hostname"]] = dict(w, alive=not w["missing"], events=False)
    for name, info in board.state.workers.items():
        entry = out.setdefault(name, {"hostname": name, "alive": info.alive(), "missing": False})
        entry.update(
            events=True,
            active=info.active,
            processed=info.processed,
            loadavg=info.loadavg,
            heartbeat=info.last_heartbeat,
        )
        if registry is None:
            entry["alive"] = info.alive()
    return sorted(out.values(), key=lambda w: (not w["alive"], w["hostname"]))


async def tasks_page(request: Request) -> Response:
    board = _board(request)
    q = request.query_params
    try:
        page = max(1, int(q.get("page") or 1))
        since = float(q["since"]) * 60 if q.get("since") else None
    except ValueError as exc:
        raise HTTPException(400, "invalid page or since") from exc
    found = select_tasks(
        board,
        worker=q.get("worker") or None,
        name=q.get("name") or None,
        state=q.get("state") or None,
        received_start=time.time() - since if since else None,
        search=q.get("search") or None,
    )
    pages = max(1, (len(found) + PAGE_SIZE - 1) // PAGE_SIZE)
    window = found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    base = {k: v for k, v in q.items() if k != "page" and v}
    return render(
        request,
        "tasks.html",
        "tasks",
        tasks=window,
        total=len(found),
        page_no=page,
        pages=pages,
        prev_url=f"?{urlencode({**base, 'page': page - 1})}" if page > 1 else None,
        next_url=f"?{urlencode({**base, 'page': page + 1})}" if page < pages else None,
        filters=q,
        states=STATES,
        names=board.state.task_names(),
        worker_names=sorted(board.state.workers),
    )


async def task_page(request: Request) -> Response:
    board = _board(request)
    task_id = request.path_params["task_id"]
    task = await board.state.task_info(task_id)
    if task is None:
        return render(request, "task_unknown.html", "tasks", task_id=task_id, status_code=404)
    root_id = task.root_id or task.uuid
    tree = _tree(board, root_id, set())
    return render(
        request,
        "task.html",
        "tasks",
        task=task,
        info=task.as_dict(show_arguments=board.show_arguments),
        tree=tree,
        finished=task.state in FINAL_STATES,
    )


def _tree(board: Dashboard, task_id: str, seen: set[str]) -> dict[str, Any]:
    """The workflow below ``task_id``: ``{"task", "id", "children": [...]}``."""
    seen.add(task_id)
    task: TaskInfo | None = board.state.tasks.get(task_id)
    children = [c for c in (task.children if task else []) if c not in seen]
    return {
        "id": task_id,
        "task": task,
        "children": [_tree(board, c, seen) for c in children],
    }


async def workers_page(request: Request) -> Response:
    board = _board(request)
    registry = await board.fleet.registry()
    inspected = await board.fleet.inspect(refresh=bool(request.query_params.get("refresh")))
    return render(
        request,
        "workers.html",
        "workers",
        workers=_workers(board, registry),
        inspected=inspected,
        registry_known=registry is not None,
    )


async def queues_page(request: Request) -> Response:
    board = _board(request)
    return render(request, "queues.html", "queues", queues=await board.fleet.queues())


async def dead_letters_page(request: Request) -> Response:
    board = _board(request)
    try:
        letters: list[dict[str, Any]] | None = await board.fleet.dead_letters()
        error = None
    except Exception as exc:
        letters, error = None, f"{type(exc).__name__}: {exc}"
    return render(request, "dead_letters.html", "dead_letters", letters=letters, error=error)


async def schedules_page(request: Request) -> Response:
    board = _board(request)
    entries = await board.fleet.schedules(show_arguments=board.show_arguments)
    return render(request, "schedules.html", "schedules", entries=entries)


# -- actions ------------------------------------------------------------------------------


async def _action_form(request: Request) -> dict[str, str]:
    board = _board(request)
    if board.read_only:
        raise HTTPException(403, "the dashboard is read-only")
    fields = await form_fields(request)
    if not csrf_ok(request, fields.get(CSRF_FIELD)):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page")
    return fields


def _back(request: Request, fallback: str, message: str) -> Response:
    """Back to the page the form was on (or ``fallback``), saying what was done."""
    target = request.headers.get("referer") or root(request) + fallback
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "flash"]
    query.append(("flash", message))
    # only the path and query: never a redirect to another site
    return RedirectResponse(f"{parts.path}?{urlencode(query)}", status_code=303)


async def revoke_action(request: Request) -> Response:
    board = _board(request)
    fields = await _action_form(request)
    task_id = request.path_params["task_id"]
    terminate = fields.get("terminate") == "1"
    await board.fleet.revoke(task_id, terminate=terminate)
    return _back(request, f"/task/{task_id}", "terminated" if terminate else "revoked")


async def retry_action(request: Request) -> Response:
    """Send a failed task again, with the arguments its result record kept
    (``result_extended``): a new task id, linked from the page it opens."""
    board = _board(request)
    await _action_form(request)
    task_id = request.path_params["task_id"]
    handle = board.app.AsyncResult(task_id)
    await handle.state()
    if handle.name is None or (handle.args is None and handle.kwargs is None):
        raise HTTPException(
            409,
            "this task's arguments are not stored (set result_extended = True to retry "
            "from the dashboard)",
        )
    sent = await board.app.send_task(handle.name, handle.args or (), handle.kwargs or {})
    return RedirectResponse(
        f"{root(request)}/task/{sent.id}?flash=retry+of+{task_id}", status_code=303
    )


async def replay_action(request: Request) -> Response:
    board = _board(request)
    await _action_form(request)
    task_id = request.path_params["task_id"]
    try:
        await board.fleet.replay(task_id)
    except Exception as exc:
        raise HTTPException(409, f"cannot replay: {exc}") from exc
    return _back(request, "/dead-letters", f"replayed {task_id}")


async def rate_limit_action(request: Request) -> Response:
    board = _board(request)
    fields = await _action_form(request)
    name, rate = fields.get("task_name", ""), fields.get("rate", "")
    if not name:
        raise HTTPException(400, "no task name")
    try:
        await board.fleet.rate_limit(name, rate, fields.get("worker") or None)
    except (ValueError, ConfigurationError) as exc:
        raise HTTPException(400, str(exc)) from exc
    return _back(request, "/workers", f"rate limit of {name} set to {rate or 'none'}")


async def pool_action(request: Request) -> Response:
    board = _board(request)
    fields = await _action_form(request)
    name = request.path_params["name"]
    grow = fields.get("direction") == "grow"
    await board.fleet.pool(name, 1, grow=grow)
    return _back(request, "/workers", f"pool of {name} {'grown' if grow else 'shrunk'} by 1")


async def shutdown_action(request: Request) -> Response:
    board = _board(request)
    await _action_form(request)
    name = request.path_params["name"]
    await board.fleet.shutdown(name)
    return _back(request, "/workers", f"shutdown sent to {name}")


def routes() -> list[Route]:
    """The pages and the actions."""
    return [
        Route("/", overview),
        Route("/tasks", tasks_page),
        Route("/task/{task_id}", task_page),
        Route("/workers", workers_page),
        Route("/queues", queues_page),
        Route("/dead-letters", dead_letters_page),
        Route("/schedules", schedules_page),
        Route("/action/revoke/{task_id}", revoke_action, methods=["POST"]),
        Route("/action/retry/{task_id}", retry_action, methods=["POST"]),
        Route("/action/replay/{task_id}", replay_action, methods=["POST"]),
        Route("/action/rate-limit", rate_limit_action, methods=["POST"]),
        Route("/action/pool/{name}", pool_action, methods=["POST"]),
        Route("/action/shutdown/{name}", shutdown_action, methods=["POST"]),
    ]
