"""The lifespan of an ASGI app (FastAPI, Starlette) that sends tasks.

``FastAPI(lifespan=aqueue.contrib.asgi.lifespan(app))``: the app's broker and backend are
connected when the web app starts, on the server's event loop, and closed when it stops,
so the first request pays no connection and shutdown leaves nothing half-open. With
``worker=True`` (or a dict of :meth:`App.worker` options) an embedded worker runs on the
same loop for the web app's lifetime: one process, one command, for development and small
deployments (``examples/fastapi_app``).

Composes with a lifespan of the user's own (``then=``), which runs inside (connected, the
worker running) and whose yielded state Starlette hands to requests. Imports nothing from
FastAPI or Starlette: the lifespan protocol is a plain async context manager factory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from aqueue.core.app import App

A = TypeVar("A")

Lifespan = Callable[[A], AbstractAsyncContextManager[Any]]


def lifespan(
    app: App,
    *,
    worker: bool | Mapping[str, Any] = False,
    then: Lifespan[A] | None = None,
) -> Lifespan[A]:
    """A lifespan for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``.

    Args:
        app: the aqueue app whose connections live as long as the web app.
        worker: run an embedded worker too (``True``, or :meth:`App.worker` options such
            as ``{"concurrency": 8}``).
        then: the web app's own lifespan, entered once aqueue is ready (its yielded
            state, if any, is passed on).
    """
    options: dict[str, Any] = dict(worker) if isinstance(worker, Mapping) else {}

    @contextlib.asynccontextmanager
    async def run(web_app: A) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app)
            if worker:
                await stack.enter_async_context(app.worker(**options))
            if then is None:
                yield None
            else:
                async with then(web_app) as state:
                    yield state

    return run
