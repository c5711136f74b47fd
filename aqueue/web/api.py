"""Flower's REST API: the same paths, methods, parameters, response shapes and status codes,
so a client or script written against Flower works unchanged (docs/dashboard.md has the
table of what is the same and what differs).

Arguments, keyword arguments and results are ``null`` unless the dashboard was started with
``show_arguments`` (Flower shows them; aqueue does not by default: they may hold personal
data). Actions answer 403 in read-only mode.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aqueue.core import states
from aqueue.core.errors import ConfigurationError

from .security import form_fields

if TYPE_CHECKING:
    from .app import Dashboard

#: Flower's ``sort_by`` keys
SORT_KEYS = ("name", "state", "received", "started", "succeeded", "failed", "runtime", "timestamp")

#: call options ``async-apply`` and ``send-task`` pass on (Flower's)
APPLY_OPTIONS = ("countdown", "eta", "expires", "queue", "priority", "task_id", "retries")


def _dashboard(request: Request) -> Dashboard:
    board: Dashboard = request.app.state.dashboard
    return board


def _writable(board: Dashboard) -> None:
    if board.read_only:
        raise HTTPException(403, "the dashboard is read-only")


async def _params(request: Request) -> dict[str, Any]:
    """Query arguments, then the body's fields: a JSON object (Flower reads one whatever the
    content type says: ``curl -d '{"args": [1, 2]}'`` sends it as a form) or form fields."""
    out: dict[str, Any] = dict(request.query_params)
    if request.method != "POST":
        return out
    body = await request.body()
    if body.lstrip().startswith(b"{"):
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise HTTPException(400, f"invalid JSON body: {exc}") from exc
        out.update(data)
    elif body.strip():
        out.update(await form_fields(request))
    return out


def _bool(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def _int(params: dict[str, Any], name: str, default: int | None) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise HTTPException(400, f"invalid {name}: {value!r}") from exc


def _time(value: str | None) -> float | None:
    """Flower's ``received_start`` / ``received_end``: ``%Y-%m-%d %H:%M`` (UTC)."""
    if not value:
        return None
    try:
        moment = dt.datetime.strptime(value, "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise HTTPException(400, f"invalid date {value!r}: use YYYY-MM-DD HH:MM") from exc
    return moment.timestamp()


# -- workers ------------------------------------------------------------------------------


async def workers(request: Request) -> JSONResponse:
    """``GET /api/workers``: ``{node: {stats, registered, active_queues, ...}}``;
    ``?status=1``: ``{node: alive}``; ``?workername=`` one worker; ``?refresh=1`` asks the
    workers again instead of the last few seconds' answers."""
    board = _dashboard(request)
    params = request.query_params
    name = params.get("workername")
    if _bool(params.get("status", "")):
        alive = {w["hostname"]: not w["missing"] for w in await board.fleet.registry() or []}
        for host, w in board.state.workers.items():
            alive[host] = alive.get(host, False) or w.alive()
        if name:
            if name not in alive:
                raise HTTPException(404, f"Unknown worker '{name}'")
            alive = {name: alive[name]}
        return JSONResponse(alive)
    info = await board.fleet.inspect(refresh=_bool(params.get("refresh", "")))
    if name:
        if name not in info:
            raise HTTPException(404, f"Unknown worker '{name}'")
        info = {name: info[name]}
    return JSONResponse(info)


async def _known_worker(board: Dashboard, name: str) -> None:
    if name not in await board.fleet.names():
        raise HTTPException(404, f"Unknown worker '{name}'")


async def _replied(replies: list[dict[str, Any]], name: str, what: str) -> None:
    for reply in replies:
        value = reply.get(name)
        if isinstance(value, dict) and "error" in value:
            raise HTTPException(403, f"Failed to {what}: {value['error']}")
        if value is not None:
            return
    raise HTTPException(403, f"Failed to {what}: no reply from '{name}'")


async def pool_grow(request: Request) -> JSONResponse:
    """``POST /api/worker/pool/grow/{name}?n=1``."""
    return await _pool(request, grow=True)


async def pool_shrink(request: Request) -> JSONResponse:
    """``POST /api/worker/pool/shrink/{name}?n=1``."""
    return await _pool(request, grow=False)


async def _pool(request: Request, *, grow: bool) -> JSONResponse:
    board = _dashboard(request)
    _writable(board)
    name = request.path_params["name"]
    await _known_worker(board, name)
    n = _int(await _params(request), "n", 1) or 1
    replies = await board.fleet.pool(name, n, grow=grow)
    await _replied(replies, name, "grow pool" if grow else "shrink pool")
    verb = "Growing" if grow else "Shrinking"
    return JSONResponse({"message": f"{verb} '{name}' worker's pool by {n}"})


async def shutdown(request: Request) -> JSONResponse:
    """``POST /api/worker/shutdown/{name}``."""
    board = _dashboard(request)
    _writable(board)
    name = request.path_params["name"]
    await _known_worker(board, name)
    await board.fleet.shutdown(name)
    return JSONResponse({"message": f"Shutting down '{name}' worker"})


# -- tasks ----------------------------------------------------------------------------------


async def tasks(request: Request) -> JSONResponse:
    """``GET /api/tasks``: ``{id: task}`` newest first, with Flower's filters ``limit``,
    ``offset``, ``sort_by`` (``-`` for descending), ``workername``, ``taskname``, ``state``,
    ``received_start``, ``received_end``, ``search`` (in name, id, args and result)."""
    board = _dashboard(request)
    params = dict(request.query_params)
    limit = _int(params, "limit", None)
    offset = _int(params, "offset", 0) or 0
    found = select_tasks(
        board,
        worker=params.get("workername"),
        name=params.get("taskname"),
        state=params.get("state"),
        received_start=_time(params.get("received_start")),
        received_end=_time(params.get("received_end")),
        search=params.get("search"),
        sort_by=params.get("sort_by"),
    )
    window = found[offset : offset + limit if limit is not None else None]
    show = board.show_arguments
    return JSONResponse({t.uuid: t.as_dict(show_arguments=show) for t in window})


def select_tasks(
    board: Dashboard,
    *,
    worker: str | None = None,
    name: str | None = None,
    state: str | None = None,
    received_start: float | None = None,
    received_end: float | None = None,
    search: str | None = None,
    sort_by: str | None = None,
) -> list[Any]:
    """The tasks matching Flower's filters (the tasks page uses it too)."""
    out = []
    needle = (search or "").lower()
    show = board.show_arguments
    for t in board.state.iter_tasks():
        if worker and t.worker != worker:
            continue
        if name and t.name != name:
            continue
        if state and t.state != state:
            continue
        if received_start is not None and (t.received is None or t.received < received_start):
            continue
        if received_end is not None and (t.received is None or t.received > received_end):
            continue
        if needle:
            hay = [t.uuid, t.name or "", t.worker or "", t.exception or ""]
            if show:
                hay += [t.args or "", t.kwargs or "", t.result or ""]
            if not any(needle in h.lower() for h in hay):
                continue
        out.append(t)
    if sort_by:
        key = sort_by.lstrip("-")
        if key not in SORT_KEYS:
            raise HTTPException(400, f"invalid sort_by {sort_by!r}: one of {', '.join(SORT_KEYS)}")
        present = [t for t in out if getattr(t, key) is not None]
        absent = [t for t in out if getattr(t, key) is None]
        present.sort(key=lambda t: getattr(t, key), reverse=sort_by.startswith("-"))
        out = present + absent
    return out


async def task_info(request: Request) -> JSONResponse:
    """``GET /api/task/info/{id}``: every field Flower gives, with its name and type."""
    board = _dashboard(request)
    task_id = request.path_params["task_id"]
    task = await board.state.task_info(task_id)
    if task is None:
        raise HTTPException(404, f"Unknown task '{task_id}'")
    return JSONResponse(task.as_dict(show_arguments=board.show_arguments))


async def task_result(request: Request) -> JSONResponse:
    """``GET /api/task/result/{id}?timeout=``: ``{"task-id", "state", "result"}`` (and
    ``traceback`` for a failure), from the result backend."""
    board = _dashboard(request)
    task_id = request.path_params["task_id"]
    if board.app.backend_url is None:
        raise HTTPException(503, "No result backend configured")
    handle = board.app.AsyncResult(task_id)
    timeout = request.query_params.get("timeout")
    if timeout:
        try:
            seconds = float(timeout)
        except ValueError as exc:
            raise HTTPException(400, f"invalid timeout: {timeout!r}") from exc
        try:
            await handle.wait(timeout=seconds, propagate=False)
        except TimeoutError as exc:
            raise HTTPException(408, "Timeout") from exc
    state = await handle.state()
    response: dict[str, Any] = {"task-id": task_id, "state": state}
    value = handle.result
    if state == states.SUCCESS:
        response["result"] = _jsonable(value) if board.show_arguments else None
    elif state in (states.FAILURE, states.REVOKED):
        response["result"] = str(value)
        response["traceback"] = handle.traceback
    else:
        response["result"] = None
    return JSONResponse(response)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


async def task_types(request: Request) -> JSONResponse:
    """``GET /api/task/types``: ``{"task-types": [...]}`` (seen in events, and the
    workers' registered tasks)."""
    board = _dashboard(request)
    names = set(board.state.task_names())
    for info in (await board.fleet.inspect()).values():
        names.update(n.split(" ", 1)[0] for n in info.get("registered") or ())
    return JSONResponse({"task-types": sorted(names)})


async def async_apply(request: Request) -> JSONResponse:
    """``POST /api/task/async-apply/{name}`` (a task this app registers; body: ``args``,
    ``kwargs`` and options): ``{"task-id", "state"}``."""
    board = _dashboard(request)
    name = request.path_params["name"]
    if name not in board.app.tasks:
        raise HTTPException(404, f"Unknown task '{name}'")
    return await _send(request, board, name)


async def send_task(request: Request) -> JSONResponse:
    """``POST /api/task/send-task/{name}`` (any task name: the workers know it)."""
    return await _send(request, _dashboard(request), request.path_params["name"])


async def _send(request: Request, board: Dashboard, name: str) -> JSONResponse:
    _writable(board)
    params = await _params(request)
    args = params.get("args") or []
    kwargs = params.get("kwargs") or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise HTTPException(400, "args must be a list and kwargs an object")
    options: dict[str, Any] = {}
    for key in APPLY_OPTIONS:
        if params.get(key) not in (None, ""):
            options[key] = params[key]
    for key in ("countdown", "expires"):
        if key in options:
            try:
                options[key] = float(options[key])
            except (TypeError, ValueError) as exc:
                raise HTTPException(400, f"invalid {key}: {options[key]!r}") from exc
    if "eta" in options:
        try:
            options["eta"] = dt.datetime.fromisoformat(str(options["eta"]))
        except ValueError as exc:
            raise HTTPException(400, f"invalid eta: {options['eta']!r}") from exc
    try:
        result = await board.app.send_task(name, args, kwargs, **options)
    except (TypeError, ValueError) as exc:
        raise HTTPException(400, str(exc)) from exc
    response: dict[str, Any] = {"task-id": result.id}
    if board.app.backend_url is not None:
        response["state"] = await result.state()
    return JSONResponse(response)


async def revoke(request: Request) -> JSONResponse:
    """``POST /api/task/revoke/{id}?terminate=true``."""
    board = _dashboard(request)
    _writable(board)
    task_id = request.path_params["task_id"]
    params = await _params(request)
    await board.fleet.revoke(task_id, terminate=_bool(params.get("terminate", "")))
    return JSONResponse({"message": f"Revoked '{task_id}'"})


async def rate_limit(request: Request) -> JSONResponse:
    """``POST /api/task/rate-limit/{name}`` with ``workername`` and ``ratelimit``."""
    board = _dashboard(request)
    _writable(board)
    name = request.path_params["name"]
    params = await _params(request)
    worker = params.get("workername")
    rate = params.get("ratelimit")
    if rate is None:
        raise HTTPException(400, "Missing argument 'ratelimit'")
    if worker:
        await _known_worker(board, worker)
    try:
        replies = await board.fleet.rate_limit(name, str(rate), worker)
    except (ValueError, ConfigurationError) as exc:
        raise HTTPException(400, str(exc)) from exc
    if worker:
        await _replied(replies, worker, "set rate limit")
    return JSONResponse({"message": f"new rate limit set successfully for '{name}'"})


async def queues_length(request: Request) -> JSONResponse:
    """``GET /api/queues/length``: ``{"active_queues": [{"name", "messages"}]}``."""
    board = _dashboard(request)
    return JSONResponse({"active_queues": await board.fleet.queues()})


def routes() -> list[Route]:
    """The API's routes, to mount at the dashboard's root (paths start with ``/api``)."""
    return [
        Route("/api/workers", workers),
        Route("/api/worker/pool/grow/{name}", pool_grow, methods=["POST"]),
        Route("/api/worker/pool/shrink/{name}", pool_shrink, methods=["POST"]),
        Route("/api/worker/shutdown/{name}", shutdown, methods=["POST"]),
        Route("/api/tasks", tasks),
        Route("/api/task/types", task_types),
        Route("/api/task/info/{task_id}", task_info),
        Route("/api/task/result/{task_id}", task_result),
        Route("/api/task/async-apply/{name}", async_apply, methods=["POST"]),
        Route("/api/task/send-task/{name}", send_task, methods=["POST"]),
        Route("/api/task/revoke/{task_id}", revoke, methods=["POST"]),
        Route("/api/task/rate-limit/{name}", rate_limit, methods=["POST"]),
        Route("/api/queues/length", queues_length),
    ]
