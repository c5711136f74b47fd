"""The blocking API: aqueue from code that runs in no event loop (Flask and Django views,
gunicorn/uWSGI sync workers, scripts, notebooks' plain cells).

The spelling is ``.sync`` on what the async API already has, so the async API stays as it
is and the blocking one is found next to it::

    result = add.sync.delay(2, 2)                 # SyncResult[int]; sent when it returns
    result.get(timeout=10)                        # 4 (TaskFailed / TaskRevoked / TimeoutError)
    result.state                                  # "SUCCESS" (a property here: it blocks)
    handle = (div.s(4, 2) | mul.s(3)).sync.apply_async()
    app.sync.send_task("proj.add", (1, 2))
    app.sync.AsyncResult(task_id).revoke()

Why one background loop per process (the "portal"): aqueue's connections are asyncio
objects bound to the loop that opened them. ``asyncio.run`` per call would open (and
close) a broker and backend connection per call, a few milliseconds each and a socket in
TIME_WAIT each. So the first blocking call starts one daemon thread running one event loop,
every blocking call hands its coroutine to that loop
(:func:`asyncio.run_coroutine_threadsafe`) and waits on the concurrent future, and the
app's connections live on that loop for the life of the process. Any number of threads
may call at once: the loop serialises nothing but the bytes on the wire, and the app's
connection pool serves them together.

An app used through ``.sync`` is pinned to the portal's loop: using the same app object
from another running loop (``asyncio.run(...)`` beside it, a worker in another thread)
raises :class:`~aqueue.core.errors.ConfigurationError` instead of silently moving (and
leaking) its connections back and forth. Run an embedded worker with ``app.sync.worker()``
(it runs on the portal's loop), or use a second ``App`` for the async side.

Fork safety: a forked child (gunicorn's and uWSGI's pre-fork workers, ``multiprocessing``
with fork) inherits the portal's objects but not its thread; ``os.register_at_fork`` resets
the portal in the child, and unpins and forgets (without closing: they are the parent's
sockets) the connections of the apps it served, so the child's first blocking call starts
its own loop and connects anew.

Called inside a running event loop, every blocking call raises
:class:`~aqueue.core.errors.SyncUsageError` naming the ``await`` spelling: blocking there
would stall that loop (or, on the portal's own loop, deadlock).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.thread  # (see the exit hook below)
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack, overload

from .errors import ConfigurationError, SyncUsageError
from .options import CallOptions
from .result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from .app import App
    from .canvas import Canvas, Group
    from .task import Task
    from .worker import Worker

log = logging.getLogger("aqueue.sync")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
H = TypeVar("H")

#: how long process exit waits for the portal to close the connections it opened
CLOSE_TIMEOUT = 5.0


class Portal:
    """One event loop in one daemon thread; blocking calls run their coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        #: apps whose connections live on this loop (closed at exit, forgotten at fork)
        self.apps: weakref.WeakSet[App] = weakref.WeakSet()
        running = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(running,), name="aqueue-sync", daemon=True
        )
        self._thread.start()
        running.wait()

    def _run(self, running: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(running.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def call(self, app: App | None, factory: Callable[[], Awaitable[T]]) -> T:
        """Run ``factory()`` on the portal's loop and wait for its value (or error)."""
        if app is not None and app not in self.apps:
            other = app.loop
            if other is not None and other is not self.loop and other.is_running():
                raise ConfigurationError(
                    f"app {app.name} is connected in another running event loop: use the "
                    "async API there, or another App object for the blocking API (.sync)"
                )
            app._pin_loop(self.loop)
            self.apps.add(app)

        async def run() -> T:
            return await factory()

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            return future.result()
        except BaseException:
            # an interrupt (KeyboardInterrupt, a thread's timeout) while waiting: stop the
            # coroutine too, rather than leave it running for nobody
            future.cancel()
            raise

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the connections of the apps served here, then stop the loop."""
        if not self._thread.is_alive():
            return
        apps = list(self.apps)

        async def close_all() -> None:
            for app in apps:
                try:
                    await app.close()
                except Exception:
                    log.warning("closing app %s failed", app.name, exc_info=True)
                app._pin_loop(None)

        future = asyncio.run_coroutine_threadsafe(close_all(), self.loop)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            future.result(timeout)
        self.apps.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


_portal: Portal | None = None
_portal_lock = threading.Lock()


def portal() -> Portal:
    """This process's portal, started on first use."""
    global _portal
    current = _portal
    if current is not None:
        return current
    with _portal_lock:
        if _portal is None:
            _portal = Portal()
        return _portal


def blocking(app: App | None, spelling: str, factory: Callable[[], Awaitable[T]]) -> T:
    """Run the async call ``factory()`` for a blocking caller.

    Raises:
        SyncUsageError: called inside a running event loop; ``spelling`` is the async form
            the message suggests.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return portal().call(app, factory)
    raise SyncUsageError(
        f"a blocking aqueue call inside a running event loop would stall it: "
        f"use `{spelling}` there (the .sync API is for code outside any event loop)"
    )


def shutdown() -> None:
    """Close the portal's connections and stop its thread (at exit; or by hand, e.g. between
    tests). The next blocking call starts a new one."""
    global _portal
    with _portal_lock:
        current, _portal = _portal, None
    if current is not None and current.pid == os.getpid():
        current.close()


#: what a forked child inherited from its parent's portal: the loop and the connections,
#: kept referenced for the child's lifetime. Collected, their finalizers could run with a
#: loop running (the child's own portal thread) and unregister the parent's sockets from
#: the epoll instance parent and child share, or write a close frame on the parent's
#: connection; kept, they are only a few idle objects.
_inherited: list[object] = []


def _after_fork_in_child() -> None:
    global _portal, _portal_lock
    # the lock may have been held by a thread that does not exist here
    _portal_lock = threading.Lock()
    inherited, _portal = _portal, None
    if inherited is not None:
        _inherited.append(inherited)
        for app in list(inherited.apps):
            _inherited.extend(app._forget_connections())


os.register_at_fork(after_in_child=_after_fork_in_child)
# Closing needs the default executor (a backend closes its sync client in a thread), which
# refuses work once concurrent.futures' own exit hook ran: that hook runs among threading's
# exit hooks, last registered first, before atexit's. So ours goes there, registered after
# concurrent.futures.thread's (imported above) so that it runs before it.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(shutdown)
else:  # pragma: no cover (CPython has it since 3.9)
    atexit.register(shutdown)


# -- results ------------------------------------------------------------------------------


class SyncResult(Generic[R]):
    """A blocking view of an :class:`~aqueue.core.result.AsyncResult` (Celery's spelling).

    ``get(timeout=)`` waits; ``state``, ``status``, ``result``, ``info`` and ``traceback``
    read the backend each time (properties, as in Celery: here they can block).
    """

    def __init__(self, result: AsyncResult[R]) -> None:
        #: the async handle (use it from async code)
        self.async_result = result

    def __repr__(self) -> str:
        return f"<SyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def id(self) -> str:
        return self.async_result.id

    task_id = id

    @property
    def app(self) -> App:
        return self.async_result.app

    @property
    def parent(self) -> SyncResult[Any] | SyncGroupResult[Any] | None:
        """The previous step's result when this ends a chain (the day-6 walk)."""
        parent = self.async_result.parent
        return None if parent is None else wrap(parent)

    @property
    def workflow_ids(self) -> list[str] | None:
        """Every task id of the workflow this result ends, when it came from one."""
        return self.async_result.workflow_ids

    def _run(self, spelling: str, factory: Callable[[], Awaitable[T]]) -> T:
        return blocking(self.app, spelling, factory)

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the result.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            TaskFailed: FAILURE (when ``propagate``).
            TaskRevoked: revoked or expired (when ``propagate``).
        """
        return self._run(
            "await result.wait(timeout=...)",
            lambda: self.async_result.wait(timeout=timeout, propagate=propagate),
        )

    wait = get

    @property
    def state(self) -> str:
        """The current state, read now."""
        return self._run("await result.state()", self.async_result.state)

    status = state

    def _read(self) -> AsyncResult[R]:
        self._run("await result.state()", self.async_result.state)
        return self.async_result

    @property
    def result(self) -> Any:
        """The value (SUCCESS), the error (FAILURE) or the progress meta, read now."""
        return self._read().result

    @property
    def info(self) -> Any:
        return self._read().info

    @property
    def traceback(self) -> str | None:
        return self._read().traceback

    def ready(self) -> bool:
        return self._run("await result.ready()", self.async_result.ready)

    def successful(self) -> bool:
        return self._run("await result.successful()", self.async_result.successful)

    def failed(self) -> bool:
        return self._run("await result.failed()", self.async_result.failed)

    def revoke(self, *, terminate: bool = False) -> None:
        """Revoke the task (or every node of the workflow it ends)."""
        self._run("await result.revoke()", lambda: self.async_result.revoke(terminate=terminate))

    def forget(self) -> None:
        self._run("await result.forget()", self.async_result.forget)


class SyncGroupResult(Generic[R]):
    """A blocking view of a :class:`~aqueue.core.result.GroupResult`."""

    def __init__(self, result: GroupResult[R]) -> None:
        self.async_result = result

    def __repr__(self) -> str:
        return f"<SyncGroupResult {self.id} ({len(self)} results)>"

    def __len__(self) -> int:
        return len(self.async_result)

    def __iter__(self) -> Iterator[SyncResult[Any] | SyncGroupResult[Any]]:
        return iter(self.results)

    @property
    def id(self) -> str:
        return self.async_result.id

    @property
    def results(self) -> list[SyncResult[Any] | SyncGroupResult[Any]]:
        return [wrap(r) for r in self.async_result]

    def _run(self, spelling: str, factory: Callable[[], Awaitable[T]]) -> T:
        return blocking(self.async_result.app, spelling, factory)

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[R]:
        """Wait for every member; their values in order."""
        return self._run(
            "await group_result.wait(timeout=...)",
            lambda: self.async_result.wait(timeout=timeout, propagate=propagate),
        )

    wait = get

    def ready(self) -> bool:
        return self._run("await group_result.ready()", self.async_result.ready)

    def successful(self) -> bool:
        return self._run("await group_result.successful()", self.async_result.successful)

    def failed(self) -> bool:
        return self._run("await group_result.failed()", self.async_result.failed)

    def completed_count(self) -> int:
        return self._run("await group_result.completed_count()", self.async_result.completed_count)

    def revoke(self, *, terminate: bool = False) -> None:
        self._run(
            "await group_result.revoke()",
            lambda: self.async_result.revoke(terminate=terminate),
        )


@overload
def wrap(result: GroupResult[T]) -> SyncGroupResult[T]: ...
@overload
def wrap(result: AsyncResult[T]) -> SyncResult[T]: ...
def wrap(result: AsyncResult[Any] | GroupResult[Any]) -> SyncResult[Any] | SyncGroupResult[Any]:
    """The blocking view of an async handle."""
    if isinstance(result, GroupResult):
        return SyncGroupResult(result)
    return SyncResult(result)


# -- sending ------------------------------------------------------------------------------


class SyncTask(Generic[P, R]):
    """``task.sync``: send a task from blocking code (``add.sync.delay(2, 2)``)."""

    def __init__(self, task: Task[P, R], options: CallOptions | None = None) -> None:
        self._task = task
        self._options: CallOptions = options or {}

    def __repr__(self) -> str:
        return f"<SyncTask {self._task.name}>"

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> SyncResult[R]:
        """Send with these arguments; returns once the broker has the message."""
        task, options = self._task, self._options
        sent = blocking(
            task.app,
            "await task.delay(...)",
            lambda: (
                task.options(**options).delay(*args, **kwargs)
                if options
                else task.delay(*args, **kwargs)
            ),
        )
        return SyncResult(sent)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> SyncResult[R]:
        """Celery's form: arguments as a tuple and a dict, then options."""
        task = self._task
        merged: CallOptions = {**self._options, **options}
        sent = blocking(
            task.app,
            "await task.apply_async(...)",
            lambda: task.apply_async(args, kwargs, **merged),
        )
        return SyncResult(sent)

    def options(self, **options: Unpack[CallOptions]) -> SyncTask[P, R]:
        """Bind call options (``add.sync.options(countdown=5).delay(2, 2)``)."""
        merged: CallOptions = {**self._options, **options}
        return SyncTask(self._task, merged)

    def AsyncResult(self, task_id: str) -> SyncResult[R]:
        """A handle on an earlier call of this task, typed by its return annotation."""
        return SyncResult(self._task.AsyncResult(task_id))


class SyncCanvas(Generic[R, H]):
    """``canvas.sync``: apply a signature, chain, group or chord from blocking code."""

    def __init__(self, canvas: Canvas[R, H]) -> None:
        self._canvas = canvas

    @overload
    def apply_async(
        self: SyncCanvas[Any, GroupResult[T]],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> SyncGroupResult[T]: ...
    @overload
    def apply_async(
        self: SyncCanvas[T, Any],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> SyncResult[T]: ...
    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> SyncResult[Any] | SyncGroupResult[Any]:
        """Apply it (Celery's ``apply_async``); the handle of what it ends with."""
        canvas = self._canvas
        handle: Any = blocking(
            canvas._require_app(),
            "await canvas.apply_async(...)",
            lambda: canvas.apply_async(args, kwargs, **options),
        )
        wrapped: SyncResult[Any] | SyncGroupResult[Any] = wrap(handle)
        return wrapped

    @overload
    def delay(
        self: SyncCanvas[Any, GroupResult[T]], *args: Any, **kwargs: Any
    ) -> SyncGroupResult[T]: ...
    @overload
    def delay(self: SyncCanvas[T, Any], *args: Any, **kwargs: Any) -> SyncResult[T]: ...
    def delay(self, *args: Any, **kwargs: Any) -> SyncResult[Any] | SyncGroupResult[Any]:
        """Apply it; ``args`` go before the first tasks' own arguments."""
        return self.apply_async(args, kwargs)


class SyncApp:
    """``app.sync``: the app's blocking calls."""

    def __init__(self, app: App) -> None:
        self._app = app

    def _run(self, spelling: str, factory: Callable[[], Awaitable[T]]) -> T:
        return blocking(self._app, spelling, factory)

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        protocol: str = "aqueue",
        **options: Unpack[CallOptions],
    ) -> SyncResult[Any]:
        """Send a task by name (it need not be registered in this process); ``protocol``
        as :meth:`App.send_task`'s."""
        app = self._app
        return SyncResult(
            self._run(
                "await app.send_task(...)",
                lambda: app.send_task(name, args, kwargs, protocol=protocol, **options),
            )
        )

    @overload
    def apply(self, canvas: Group[T], **options: Any) -> SyncGroupResult[T]: ...
    @overload
    def apply(self, canvas: Canvas[Any, GroupResult[T]], **options: Any) -> SyncGroupResult[T]: ...
    @overload
    def apply(self, canvas: Canvas[T, Any], **options: Any) -> SyncResult[T]: ...
    def apply(
        self, canvas: Canvas[Any, Any], **options: Any
    ) -> SyncResult[Any] | SyncGroupResult[Any]:
        """Apply a canvas (``app.sync.apply(div.s(4, 2) | mul.s(3))``)."""
        handle: Any = self._run(
            "await canvas.apply_async(...)", lambda: canvas.apply_async(**options)
        )
        wrapped: SyncResult[Any] | SyncGroupResult[Any] = wrap(handle)
        return wrapped

    def AsyncResult(self, task_id: str) -> SyncResult[Any]:
        """The result of a task by id (e.g. an id a web request got earlier)."""
        return SyncResult(self._app.AsyncResult(task_id))

    def revoke(self, task_ids: str | Sequence[str], *, terminate: bool = False) -> None:
        """Revoke tasks by id (``app.control.revoke``)."""
        ids = task_ids if isinstance(task_ids, str) else list(task_ids)
        self._run(
            "await app.control.revoke(...)",
            lambda: self._app.control.revoke(ids, terminate=terminate),
        )

    def workflow_states(self, root_id: str) -> dict[str, str]:
        """The state of every node of a workflow, by the id of its first task."""
        return self._run(
            "await app.workflow_states(...)", lambda: self._app.workflow_states(root_id)
        )

    def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run any async function of this app on the portal (``app.sync.call(f, x)``)."""
        return self._run("await fn(...)", lambda: fn(*args, **kwargs))

    @contextlib.contextmanager
    def worker(self, **options: Any) -> Iterator[Worker]:
        """Run an embedded worker on the portal's loop for the ``with`` block.

        For development and tests of a blocking app (``flask run`` with its worker in the
        same process). It stops (finishing what it runs, within ``shutdown_timeout``) when
        the block ends.
        """
        app = self._app
        worker = app.worker(**options)
        self._run("async with app.worker(...)", worker.start)
        try:
            yield worker
        finally:
            self._run("async with app.worker(...)", worker.stop)

    def close(self) -> None:
        """Close this app's connections on the portal and release the app from it: it may
        then be used from another event loop, or through ``.sync`` again."""
        app = self._app

        async def close() -> None:
            await app.close()

        self._run("await app.close()", close)
        current = _portal
        if current is not None:
            current.apps.discard(app)
        app._pin_loop(None)


def check_pinned(app: App, pinned: asyncio.AbstractEventLoop | None) -> None:
    """Refuse to connect ``app`` in a loop other than the portal's it is pinned to."""
    if pinned is None:
        return
    if asyncio.get_running_loop() is not pinned:
        raise ConfigurationError(
            f"app {app.name} is used through the blocking API (.sync), and its connections "
            "live on that API's event loop: use `app.sync...` here too, run a worker with "
            "`app.sync.worker()`, or use another App object in this event loop"
        )
