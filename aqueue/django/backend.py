"""``AqueueBackend``: Django's task backend API over an aqueue app.

Settings::

    TASKS = {
        "default": {
            "BACKEND": "aqueue.django.AqueueBackend",
            "QUEUES": ["default", "emails"],       # Django's queue names; "default" is the
                                                   # app's task_default_queue
            "OPTIONS": {
                "APP": "proj.aqueue:app",          # the aqueue App (or BROKER_URL below)
                # "BROKER_URL": "redis://localhost:6379/0", "RESULT_BACKEND": "...",
                "ENQUEUE_ON_COMMIT": False,        # True: every enqueue waits for the commit
            },
        }
    }

How Django's task fields map: ``queue_name`` is the aqueue queue (``"default"``: the app's
``task_default_queue``); ``priority`` -100..100 maps onto aqueue's 0..9 (the default 0 sends
with the app's default priority); ``run_after`` is the message's ``eta``; the result id is
the aqueue task id. States: PENDING, RECEIVED and RETRY read READY; STARTED reads RUNNING;
SUCCESS reads SUCCESSFUL; FAILURE and REVOKED read FAILED, with the remote error's type and
traceback as the ``TaskError`` (aqueue never carries exception objects).

Django calls ``enqueue()`` from synchronous code. aqueue is asynchronous, so each send runs
on the loop where the app is connected: in a worker process the worker's loop (a Django
task enqueueing another), elsewhere the loop thread of aqueue's blocking API (``.sync``,
one per process, started anew in a forked child; docs/sync.md). ``aenqueue`` awaits the same
loop, or directly when it is the caller's. The worker's case is why this is not simply
``app.sync``: the blocking API refuses an app connected in another running loop.
"""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from aqueue import App, AsyncResult, TaskFailed, TaskRevoked, states
from aqueue.core.blocking import portal

from .compat import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    BaseTaskBackend,
    TaskError,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_result,
)
from .runner import RUN_TASK

T = TypeVar("T")

_STATUS = {
    states.PENDING: TaskResultStatus.READY,
    states.RECEIVED: TaskResultStatus.READY,
    states.RETRY: TaskResultStatus.READY,
    states.STARTED: TaskResultStatus.RUNNING,
    states.SUCCESS: TaskResultStatus.SUCCESSFUL,
    states.FAILURE: TaskResultStatus.FAILED,
    states.REVOKED: TaskResultStatus.FAILED,
}


def aqueue_priority(priority: int) -> int:
    """Django's -100..100 onto aqueue's 0..9 (higher first in both): -100 is 0, 100 is 9."""
    span = MAX_PRIORITY - MIN_PRIORITY
    return (priority - MIN_PRIORITY) * 9 // span


def _home(app: App | None) -> asyncio.AbstractEventLoop:
    """Where ``app``'s coroutines run: the loop it is connected on while that loop runs (a
    worker's, when a task enqueues a Django task), else the loop thread. One app, one
    loop: connecting it again on another would drop the connections the first one uses."""
    loop = app.loop if app is not None else None
    if loop is not None and loop.is_running() and not loop.is_closed():
        return loop
    return portal().loop


def _current() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_in_loop(coro: Coroutine[Any, Any, T], app: App | None = None) -> T:
    """Run an aqueue coroutine from synchronous Django code (a view, a command) and return
    its value: on the loop ``app`` is connected on, else the blocking API's loop thread
    (where an ``AqueueBackend``'s app connects when nothing else has). Outside a worker,
    ``app.sync`` (docs/sync.md) does the same with typed results. It refuses to block the
    loop it would wait on (call it from a thread, or await).
    """
    home = _home(app)
    if _current() is home:
        coro.close()
        raise RuntimeError(
            "run_in_loop() called on the loop it runs coroutines on: await the coroutine "
            "(aenqueue(), aget_result()) instead"
        )
    return asyncio.run_coroutine_threadsafe(coro, home).result()


async def _arun(coro: Coroutine[Any, Any, T], app: App) -> T:
    """Await ``coro`` here when this is the app's loop, else on the app's loop."""
    home = _home(app)
    if _current() is home:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, home))


class AqueueBackend(BaseTaskBackend):  # type: ignore[misc]
    """Django's task backend on an aqueue app; see the module docstring for the settings."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.enqueue_on_commit: bool = bool(self.options.get("ENQUEUE_ON_COMMIT", False))
        self._app: App | None = None

    @property
    def app(self) -> App:
        """The aqueue app: ``OPTIONS["APP"]`` (an App or ``"module:attribute"``), else one
        made from ``BROKER_URL`` / ``RESULT_BACKEND`` (``result_extended`` on, so results
        can be read back as Django ``TaskResult``s)."""
        if self._app is None:
            spec = self.options.get("APP")
            if isinstance(spec, App):
                app = spec
            elif isinstance(spec, str):
                app = import_string(spec.replace(":", "."))
            else:
                app = App(
                    f"django-{self.alias}",
                    broker=self.options.get("BROKER_URL"),
                    backend=self.options.get("RESULT_BACKEND"),
                    result_extended=True,
                )
            if not isinstance(app, App):
                raise TypeError(f"TASKS[{self.alias!r}]['OPTIONS']['APP'] is no aqueue App")
            self._app = app
        return self._app

    def check(self, **kwargs: Any) -> list[Any]:
        """Django's system checks (``manage.py check``): results can be read back only when
        the app stores the task's arguments (``result_extended``)."""
        from django.core import checks

        messages = list(super().check(**kwargs))
        if not self.app.conf.result_extended:
            messages.append(
                checks.Warning(
                    f"TASKS[{self.alias!r}]: the aqueue app {self.app.name!r} does not store "
                    "task arguments, so get_result() / TaskResult.refresh() cannot work",
                    hint="set result_extended=True on the app (CELERY_RESULT_EXTENDED = True)",
                    id="aqueue.W001",
                )
            )
        return messages

    # -- enqueue ----------------------------------------------------------------------------

    def enqueue(self, task: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        return self._enqueue(task, args, kwargs, on_commit=self.enqueue_on_commit)

    async def aenqueue(self, task: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        if self.enqueue_on_commit:  # on_commit is Django's sync machinery
            from asgiref.sync import sync_to_async

            return await sync_to_async(self.enqueue, thread_sensitive=True)(task, args, kwargs)
        result = self._result(task, args, kwargs)
        await _arun(self._send(result), self.app)
        return result

    def _enqueue(
        self, task: Any, args: Sequence[Any], kwargs: dict[str, Any], *, on_commit: bool
    ) -> Any:
        result = self._result(task, args, kwargs)
        if on_commit:
            # the id is known now; the message leaves only if the transaction commits (at
            # once outside a transaction, never after a rollback)
            transaction.on_commit(lambda: run_in_loop(self._send(result), self.app))
        else:
            run_in_loop(self._send(result), self.app)
        return result

    def _result(self, task: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        self.validate_task(task)
        return task_result(
            task=task,
            id=str(uuid.uuid4()),
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    async def _send(self, result: Any) -> None:
        task = result.task
        options: dict[str, Any] = {"task_id": result.id}
        if task.queue_name != "default":
            options["queue"] = task.queue_name
        if task.priority != 0:
            options["priority"] = aqueue_priority(task.priority)
        if task.run_after is not None:
            options["eta"] = task.run_after
        await self.app.send_task(
            RUN_TASK,
            args=[task.module_path, result.args, result.kwargs, self.alias],
            **options,
        )

    # -- results ----------------------------------------------------------------------------

    def get_result(self, result_id: str) -> Any:
        return run_in_loop(self._get_result(result_id), self.app)

    async def aget_result(self, result_id: str) -> Any:
        return await _arun(self._get_result(result_id), self.app)

    async def _get_result(self, result_id: str) -> Any:
        handle: AsyncResult[Any] = self.app.AsyncResult(result_id)
        state = await handle.state()
        stored = handle.args
        if state == states.PENDING or not stored or handle.name != RUN_TASK:
            # aqueue keeps no record of a task until a worker receives it, and the record
            # carries the Django task's path only with result_extended
            raise TaskResultDoesNotExist(result_id)
        path, args, kwargs = stored[0], stored[1], stored[2]
        errors: list[Any] = []
        value: Any = None
        if state == states.SUCCESS:
            value = handle.result
        elif state in (states.FAILURE, states.REVOKED):
            exc = handle.result
            if isinstance(exc, TaskFailed):
                errors.append(
                    TaskError(
                        exception_class_path=_class_path(exc.exc_type),
                        traceback=exc.traceback or "",
                    )
                )
            elif isinstance(exc, TaskRevoked):
                errors.append(TaskError(exception_class_path="aqueue.TaskRevoked", traceback=""))
        done = handle.date_done if state in states.READY_STATES else None
        return task_result(
            task=import_string(path),
            id=result_id,
            status=_STATUS.get(state, TaskResultStatus.READY),
            enqueued_at=None,
            started_at=None,
            finished_at=done,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=errors,
            worker_ids=[handle.worker] * max(handle.attempt, 1) if handle.worker else [],
            return_value=value,
        )


def _class_path(name: str) -> str:
    """A remote exception's importable path for ``TaskError``: aqueue records the class's
    qualified name only, so builtins resolve (``builtins.ValueError``) and other classes
    keep their bare name (``TaskError.exception_class`` cannot import those)."""
    return f"builtins.{name}" if "." not in name and hasattr(builtins, name) else name


def enqueue_on_commit(task: Any, *args: Any, **kwargs: Any) -> Any:
    """``task.enqueue(*args, **kwargs)`` once the current transaction commits.

    Returns the ``TaskResult`` at once (its id is known); the message is sent by
    ``transaction.on_commit``, so a rolled-back transaction sends nothing, and a worker never
    sees a task before the rows it reads are committed. Outside a transaction it sends at
    once. The task's backend must be an :class:`AqueueBackend`.
    """
    backend = task.get_backend()
    if not isinstance(backend, AqueueBackend):
        raise TypeError(f"enqueue_on_commit needs an AqueueBackend, not {type(backend).__name__}")
    return backend._enqueue(task, args, kwargs, on_commit=True)
