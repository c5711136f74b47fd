"""The dashboard as an ASGI application: pages, Flower's API, the live stream.

``dashboard_app(app)`` returns a Starlette application. ``aqueue dashboard`` serves it with
uvicorn; an application of your own mounts it (``fastapi_app.mount("/flower",
dashboard_app(app))``). A mounted Starlette app gets no lifespan events, so the model
starts following the event stream on the first request instead, and stops with the
``close()`` of the returned app's ``state.dashboard`` (or at interpreter exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from . import api, pages
from .fleet import Fleet
from .security import AuthHook, AuthMiddleware
from .state import State

if TYPE_CHECKING:
    from aqueue.core.app import App

HERE = Path(__file__).parent

#: how long one live stream lasts before the browser opens another (EventSource reconnects
#: by itself): no response stays open for ever, so a server can stop promptly
STREAM_SECONDS = 300.0


@dataclass(slots=True)
class Dashboard:
    """What every handler reads: the app, the model, the fleet and the options."""

    app: App
    state: State
    fleet: Fleet
    read_only: bool
    show_arguments: bool

    def ensure_started(self) -> None:
        """Follow the event stream from now on (idempotent; needs a running loop)."""
        self.state.start()

    async def close(self) -> None:
        """Stop following the stream."""
        await self.state.stop()


class _Starter:
    """Starts the model on the first request (a mounted app gets no lifespan)."""

    def __init__(self, app: ASGIApp, board: Dashboard) -> None:
        self.app = app
        self.board = board

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.board.ensure_started()
        await self.app(scope, receive, send)


class _Asgi:
    """An ASGI app as a route's endpoint: Starlette takes a plain function for a request
    handler, and ``prometheus_client.make_asgi_app()`` returns one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def live(request: Request) -> Response:
    """Server-sent events: ``data: <change count>`` whenever the model changes (at most
    four a second), a comment every 15 s to keep proxies from closing it."""
    board: Dashboard = request.app.state.dashboard

    async def stream() -> AsyncIterator[str]:
        seen = -1
        ends = time.monotonic() + STREAM_SECONDS
        yield "retry: 1000\n\n"
        while time.monotonic() < ends:
            changed = await board.state.wait_change(seen, 15.0)
            if changed == seen:
                yield ": keep-alive\n\n"
                continue
            seen = changed
            yield f"data: {changed}\n\n"
            await asyncio.sleep(0.25)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def dashboard_app(
    app: App,
    *,
    read_only: bool = False,
    show_arguments: bool = False,
    basic_auth: str | None = None,
    token: str | None = None,
    auth: AuthHook | None = None,
    max_tasks: int = 10_000,
    catch_up: float = 3600.0,
    extra_routes: Sequence[BaseRoute] = (),
    mounts: dict[str, ASGIApp] | None = None,
    close_app: bool = False,
) -> Starlette:
    """The dashboard and Flower's REST API for ``app``, as an ASGI application.

    Args:
        app: the aqueue app whose fleet is shown (connected on first use).
        read_only: no actions: buttons hidden, action endpoints answer 403.
        show_arguments: show tasks' args, kwargs and results (hidden by default).
        basic_auth: ``"user:password"`` required (HTTP basic auth).
        token: a bearer token accepted (``Authorization: Bearer <token>``).
        auth: a hook ``request -> bool`` (or awaitable) of an embedding application.
        max_tasks: tasks kept in memory (the least recently updated are forgotten).
        catch_up: seconds of the stored event stream read at start.
        extra_routes: more routes of the embedding application (checked by the same auth).
        mounts: ASGI apps to mount by path, e.g. ``{"/metrics": metrics_app}``.
        close_app: close ``app``'s connections when the server stops (its lifespan's
            end): for a dashboard that owns the app, as ``aqueue dashboard`` does.
    """
    state = State(app, max_tasks=max_tasks, catch_up=catch_up)
    board = Dashboard(
        app=app,
        state=state,
        fleet=Fleet(app, state),
        read_only=read_only,
        show_arguments=show_arguments,
    )
    routes: list[BaseRoute] = [
        *pages.routes(),
        *api.routes(),
        Route("/live", live),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        *extra_routes,
    ]
    for path, sub in (mounts or {}).items():
        # the path itself (``/metrics``, as Prometheus scrapes it) and what is below it
        routes += [Route(path, _Asgi(sub)), Mount(path, sub)]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        board.ensure_started()
        for sub in (mounts or {}).values():  # a mount is not sent lifespan events: start it
            start = getattr(sub, "start", None)
            if start is not None:
                await start()
        try:
            yield
        finally:
            await board.close()
            for sub in (mounts or {}).values():  # e.g. /metrics' event follower
                close = getattr(sub, "close", None)
                if close is not None:
                    await close()
            if close_app:
                await app.close()

    web = Starlette(
        routes=routes,
        middleware=[
            Middleware(AuthMiddleware, basic_auth=basic_auth, token=token, auth=auth),
            Middleware(_Starter, board=board),
        ],
        lifespan=lifespan,
    )
    web.state.dashboard = board
    return web
