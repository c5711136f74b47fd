"""The worker side: one aqueue task, ``aqueue.django.run``, that runs any Django task.

A Django task is a module-level function wrapped by ``@task``; the message carries its
dotted path (``proj.tasks.send_mail``), so the worker needs no per-function registration:
``install(app)`` once, in the module that defines the worker's app. Coroutine functions are
awaited on the worker's loop; plain functions run in a thread (as every plain aqueue task
does), with Django's stale database connections closed before and after, as Django does
around a request.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

# at run time too: the run task's annotations are resolved to validate its arguments
from aqueue import App, Task

#: the one aqueue task that runs Django tasks
RUN_TASK = "aqueue.django.run"


def install(app: App) -> Task[Any, Any]:
    """Register ``aqueue.django.run`` on ``app`` (idempotent); returns the aqueue task.

    Call it where the worker's app is defined (``proj/aqueue.py``): the worker then runs
    every Django task the :class:`~aqueue.django.AqueueBackend` sends to its queues.
    STARTED is recorded for it (``track_started``), so ``TaskResult.status`` reads RUNNING
    while it runs.
    """
    existing = app.tasks.get(RUN_TASK)
    if existing is not None:
        return existing

    @app.task(name=RUN_TASK, bind=True, track_started=True)
    async def run(
        self: Task[Any, Any],
        path: str,
        args: list[Any],
        kwargs: dict[str, Any],
        backend: str = "default",
    ) -> Any:
        from django.utils.module_loading import import_string

        django_task = import_string(path)
        func: Callable[..., Any] = django_task.func
        call_args = list(args)
        if django_task.takes_context:
            call_args.insert(0, _context(self, django_task, args, kwargs, backend))
        if inspect.iscoroutinefunction(func):
            return await func(*call_args, **kwargs)
        return await asyncio.to_thread(_call_sync, func, call_args, kwargs)

    return run


def _call_sync(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run a plain Django task in a worker thread, as Django runs a request: stale database
    connections of this thread are closed before and after."""
    from django.db import close_old_connections

    close_old_connections()
    try:
        return func(*args, **kwargs)
    finally:
        close_old_connections()


def _context(
    run: Task[Any, Any], django_task: Any, args: list[Any], kwargs: dict[str, Any], backend: str
) -> Any:
    """The ``TaskContext`` a ``takes_context`` task gets: its result as it stands, with one
    worker id per attempt so far (``context.attempt``)."""
    from django.utils import timezone

    from .compat import TaskContext, TaskResultStatus, task_result

    request = run.request
    now = timezone.now()
    result = task_result(
        task=django_task,
        id=request.id,
        status=TaskResultStatus.RUNNING,
        enqueued_at=None,
        started_at=now,
        finished_at=None,
        last_attempted_at=now,
        args=args,
        kwargs=kwargs,
        backend=backend,
        errors=[],
        worker_ids=[request.hostname or "aqueue"] * request.attempt,
    )
    return TaskContext(task_result=result)
