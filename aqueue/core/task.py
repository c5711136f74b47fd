"""``Task[P, R]``: what ``@app.task`` makes of a function.

A task plays two roles, as in Celery: calling ``delay`` / ``apply_async`` sends a message;
a worker that receives one calls the task (``__call__`` -> ``run``). Per-call options cannot
share the function's ParamSpec, hence ``task.options(...).delay(...)`` for the typed path and
``apply_async(args, kwargs, **options)`` for Celery's.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Never, NoReturn, ParamSpec, TypeVar, Unpack

from . import sending
from .admission import parse_rate
from .arguments import ArgumentSpec
from .awaiting import Awaiting
from .canvas import MAP_TASK, STARMAP_TASK, Canvas, Chain, Group, Signature, derived_node
from .context import Request, current_request, trail_of
from .errors import MaxRetriesExceededError, Replace, Retry, Unsupported, eager_refused
from .message import ResultOut
from .options import CallOptions, check_options
from .result import AsyncResult, GroupResult
from .retry import backoff_delay, retries_left
from .serialization import check_serializer, encode
from .states import READY_STATES

log = logging.getLogger("aqueue.worker")

if TYPE_CHECKING:
    from .app import App
    from .blocking import SyncTask

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Task(Generic[P, R]):
    """A registered task. Subclass it and pass ``base=`` for hooks and class defaults.

    Class attributes are defaults that ``@app.task(...)`` keywords override.
    """

    #: queue used when a call names none (``None``: the app's ``task_default_queue``)
    queue: str | None = None
    ignore_result: bool = False
    #: ``None``: the app's ``task_serializer``
    serializer: str | None = None
    #: ``None``: the app's ``task_acks_late``
    acks_late: bool | None = None
    #: ``None``: the app's ``task_track_started``
    track_started: bool | None = None
    #: 0..9, higher first (``None``: the app's ``task_default_priority``)
    priority: int | None = None
    #: retries allowed (``None``: unlimited); Celery's default is 3
    max_retries: int | None = 3
    #: seconds before a retry when ``retry()`` names no countdown and there is no backoff
    default_retry_delay: float = 180.0
    #: exceptions that retry the task automatically
    autoretry_for: tuple[type[BaseException], ...] = ()
    #: exceptions never retried automatically, even if they match ``autoretry_for``
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    #: exponential backoff for automatic retries: ``True`` (1 s base) or a base in seconds
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    #: randomize backoff delays between 0 and the computed delay
    retry_jitter: bool = True
    #: seconds after which the task is stopped (``None``: the worker's default)
    time_limit: float | None = None
    #: seconds after which ``SoftTimeLimitExceeded`` is raised inside the task
    soft_time_limit: float | None = None
    #: e.g. ``"10/s"``, ``"100/m"``: across all workers on Redis, per worker otherwise
    rate_limit: str | None = None
    #: at most this many executions running at once (across the fleet where shared)
    concurrency_limit: int | None = None
    #: where a ``def`` task runs: ``"thread"`` (default) or ``"process"`` (killable, no GIL)
    offload: str = "thread"
    #: options of automatic retries (``max_retries``, ``countdown``), as in Celery
    retry_kwargs: dict[str, Any] = {}
    #: default ``expires`` of every call: seconds from sending (``None``: never)
    expires: float | None = None
    #: expected exceptions: logged at INFO without a traceback (still FAILURE)
    throws: tuple[type[BaseException], ...] = ()
    #: store FAILURE even when ``ignore_result`` is set
    store_errors_even_if_ignored: bool = False
    #: check the arguments against the signature when sending (Celery's default)
    typing: bool = True
    #: Celery's option; aqueue always redelivers a lost worker's tasks (until max_deliveries)
    reject_on_worker_lost: bool = True
    #: record what the task sends as its children, stored with its result (Celery's
    #: ``trail``); ``False`` for a task that sends very many (its record stays small)
    trail: bool = True

    name: str
    app: App
    #: the function as written (with ``self`` first when bound)
    fn: Callable[..., Any]

    def __init__(
        self, app: App, fn: Callable[..., Any], *, name: str, bind: bool, **options: Any
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        self.is_async = inspect.iscoroutinefunction(fn)
        for key, value in options.items():
            if not hasattr(type(self), key):
                raise TypeError(f"unknown task option {key!r}")
            setattr(self, key, value)
        if self.priority is not None or self.queue is not None:
            # the same rule as a call's option, checked at decoration
            check_options(
                {
                    k: v
                    for k, v in (("priority", self.priority), ("queue", self.queue))
                    if v is not None
                }
            )
        if self.rate_limit is not None:
            parse_rate(self.rate_limit)  # a bad rate fails at decoration, not in the worker
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValueError("concurrency_limit must be at least 1")
        if not self.reject_on_worker_lost:
            raise ValueError(
                "reject_on_worker_lost=False is not supported: a lost worker's tasks always run "
                "again, up to max_deliveries; use acks_late=False for at-most-once"
            )
        if self.offload not in ("thread", "process"):
            raise ValueError("offload must be 'thread' or 'process'")
        if self.offload == "process" and self.is_async:
            raise TypeError(
                f"{fn.__qualname__} is async: offload='process' is for def tasks (inside an "
                "async task, await aqueue.offload(fn, ...) for a CPU-bound section)"
            )
        self.spec = ArgumentSpec(fn, skip_first=bind)
        self.run: Callable[..., Any] = functools.partial(fn, self) if bind else fn
        functools.update_wrapper(self, fn, updated=())

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run in-process, as a plain call (an ``async`` task returns its coroutine)."""
        return self.run(*args, **kwargs)

    # -- the running task -------------------------------------------------------------

    @property
    def request(self) -> Request:
        """The current request (inside a running task) or an empty one called directly."""
        req = current_request()
        if req is not None and req.task == self.name:
            return req
        return Request(
            id="",
            task=self.name,
            args=(),
            kwargs={},
            queue="",
            attempt=1,
            retries=0,
            headers={},
            called_directly=True,
        )

    def update_state(
        self, state: str = "PROGRESS", meta: Any = None, *, task_id: str | None = None
    ) -> Awaitable[bool]:
        """Store a custom state (e.g. PROGRESS with ``meta={"done": 3, "total": 10}``).

        In an ``async def`` task: ``await self.update_state(...)``. In a ``def`` task (a
        worker thread) the call completes before it returns; awaiting it is not needed.
        Waiters see it through ``result.events()``, ``await result.state()`` and
        ``result.info``. Resolves to ``False`` if a newer attempt owns the task (fencing).
        """
        return _on_worker_loop(self._store_state(state, meta, task_id), self.request)

    async def _store_state(self, state: str, meta: Any, task_id: str | None) -> bool:
        if state in READY_STATES:
            raise ValueError(f"update_state cannot set {state}: return or raise instead")
        req = self.request
        target = task_id or req.id
        if not target:
            raise RuntimeError("update_state outside a running task needs task_id=")
        backend = await self.app.result_backend()
        record = ResultOut(
            id=target,
            state=state,
            task=self.name,
            meta=meta,
            attempt=req.attempt,
            retries=req.retries,
            worker=req.hostname,
            parent_id=req.parent_id,
            root_id=req.root_id,
            group_id=req.group_id,
        )
        fmt = check_serializer(self.serializer or self.app.conf.task_serializer)
        return await backend.store(
            target,
            encode(record, fmt),
            state=state,
            attempt=req.attempt,
            ttl=self.app.conf.result_expires,
        )

    def retry(
        self,
        exc: BaseException | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        max_retries: int | None = None,
        throw: bool = True,
    ) -> Retry:
        """End this attempt and run the task again later: ``raise self.retry(exc=e)``.

        The retry is a new attempt of the same task id, after ``countdown`` seconds (default
        ``default_retry_delay``, or the backoff). With no retries left, re-raises ``exc``
        (or raises :class:`MaxRetriesExceededError`).
        """
        req = self.request
        if req.called_directly:
            raise RuntimeError("retry() works inside a task run by a worker")
        if not retries_left(self, req, max_retries):
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"{self.name}[{req.id}] used its {req.retries} retries")
        # the same rules as apply_async's (a NaN or infinite countdown is refused here)
        checked = check_options({"countdown": countdown} if countdown is not None else {})
        when = check_options({"eta": eta})["eta"] if eta is not None else None
        countdown = checked.get("countdown")
        if countdown is None and when is None:
            countdown = backoff_delay(self, req.retries)
        signal = Retry(
            f"retry in {countdown}s" if countdown is not None else "retry",
            exc=exc,
            countdown=countdown,
            when=when,
            max_retries=max_retries,
        )
        if throw:
            raise signal
        return signal

    def replace(self, sig: Canvas[Any, Any] | Task[..., Any]) -> Never:
        """Replace this task with ``sig``, a signature, chain, group or chord (Celery's).

        Ends the task at once: ``await self.replace(...)``, ``return self.replace(...)``
        and ``raise self.replace(...)`` do the same. The worker applies the replacement,
        with its own arguments, in this task's place: its value becomes this task's
        result (a group's: the list), so a waiter on this task gets it, the next step of
        this task's chain is given it, this task's chord waits for it and its callbacks
        (``link``) run with it. If the replacement fails, this task fails with its error
        and its errbacks (``link_error``) are called with ``(this task's id, error)``.

        The replacement's ids are derived from this task's id: if the task runs again
        (its worker died before acking), the same replacement is not run twice.

        Raises:
            Replace: always; the worker handles it (do not catch it).
            RuntimeError: called outside a task run by a worker.
            ValueError: the replacement has nothing to run (an empty chain).
        """
        req = self.request
        if req.called_directly:
            raise RuntimeError(
                "replace() works inside a task run by a worker (not a direct call, not an "
                "offload='process' task)"
            )
        canvas = sig.s() if isinstance(sig, Task) else sig
        if isinstance(canvas, Chain) and not canvas.steps:
            raise ValueError("cannot replace a task with an empty chain")
        raise Replace(derived_node(canvas, f"{req.id}:replace"))

    def add_to_chord(
        self, sig: Canvas[Any, Any] | Task[..., Any], lazy: bool = False
    ) -> Awaitable[AsyncResult[Any] | GroupResult[Any]]:
        """Apply ``sig`` as part of the chord this task is a member of (Celery's).

        ``await self.add_to_chord(add.s(1, 2))``: the chord's body waits for it too, and
        gets its value after the header's values (what members added, in the order they
        added it). Only the task that completes a chord member may call it: a header task,
        the last step of a chain in the header, or the body of a chord inside a chord. In
        a ``def`` task (a worker thread) the call completes before it returns.

        Raises:
            ValueError: this task is not a member of a chord.
            RuntimeError: called outside a task run by a worker.
            Unsupported: ``lazy=True`` (Celery's "apply it later yourself").
        """
        if lazy:
            raise Unsupported(
                "add_to_chord(lazy=True) is not supported: the chord would wait for a task "
                "that might never be sent; add_to_chord() applies it at once"
            )
        req = self.request
        if req.called_directly:
            raise RuntimeError(
                "add_to_chord() works inside a task run by a worker (not a direct call, not "
                "an offload='process' task)"
            )
        if req.chord is None:
            raise ValueError(
                "add_to_chord: the current task is not a member of a chord (only a task "
                "that completes a chord member may add to its chord)"
            )
        trail = trail_of(req)
        seed = f"{req.id}:add:{trail.add_calls}"
        trail.add_calls += 1
        canvas = sig.s() if isinstance(sig, Task) else sig
        coro = self.app.workflows.add_to_chord(req, derived_node(canvas, seed))
        return _on_worker_loop(coro, req)

    def apply(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Celery's eager ``apply()``: refused with :class:`Unsupported`, naming what to use."""
        raise eager_refused(f"{self.name}.apply()")

    # -- hooks (sync or async; Celery's signatures) ---------------------------------------

    def on_success(
        self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[None] | None:
        """Called in the worker after the task returned."""
        return None

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: str,
    ) -> Awaitable[None] | None:
        """Called in the worker after the task raised (``einfo`` is the traceback text)."""
        return None

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: str,
    ) -> Awaitable[None] | None:
        """Called in the worker when the task is to be retried."""
        return None

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: str | None,
    ) -> Awaitable[None] | None:
        """Called in the worker after either of the above."""
        return None

    # -- calling ----------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Awaiting[AsyncResult[R]]:
        """Send the task with these arguments; returns once the broker has it.

        ``await add.delay(2, 2)``. Not awaited, nothing is sent, and that is logged at ERROR
        with the line (:mod:`aqueue.core.awaiting`). (Not ``async def`` itself: it hands
        back the sending coroutine, one frame fewer for each of thousands of ``delay()``
        calls awaiting the broker at once.)
        """
        return Awaiting(
            sending.send(self.app, self.name, args, kwargs, _NO_OPTIONS, task=self), self, "delay"
        )

    @property
    def sync(self) -> SyncTask[P, R]:
        """The blocking spelling for code outside any event loop (docs/sync.md):
        ``add.sync.delay(2, 2).get(timeout=10)``."""
        from .blocking import SyncTask

        return SyncTask(self)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> Awaiting[AsyncResult[R]]:
        """Celery's form: arguments as a tuple and a dict, then options."""
        return Awaiting(
            sending.send(
                self.app, self.name, tuple(args or ()), dict(kwargs or {}), options, task=self
            ),
            self,
            "apply_async",
        )

    async def delay_many(self, items: Iterable[tuple[Any, ...]]) -> list[AsyncResult[R]]:
        """Send one task per item, each item a tuple of positional arguments, in bulk.

        ``await add.delay_many([(1, 2), (3, 4)])`` (``[(x,) for x in xs]`` for one argument;
        ``[() for _ in range(n)]`` for none) returns one :class:`AsyncResult` per item, in
        order, once the broker has them all. Much cheaper per task than ``delay()``: the
        options are worked out once, then each message costs an id, an arity check, and
        one encoding. Every message is checked and encoded before anything is sent
        (:class:`ArgumentError` or :class:`MessageTooLarge` naming the item), then they
        go out in chunks of ``publish_chunk_size`` (5,000) per broker call, each within
        ``publish_timeout``; a failed chunk raises :class:`BulkPublishError`, which says
        how many were stored. Publish middleware sees every message (docs/bulk.md).

        Keyword arguments: ``app.send_many([task.s(x=1), ...])``.
        """
        return await sending.send_items(self.app, self, items, {})

    async def apply_many(
        self, items: Iterable[tuple[Any, ...]], **options: Unpack[CallOptions]
    ) -> list[AsyncResult[R]]:
        """``delay_many`` with call options applied to every message.

        ``await add.apply_many([(1, 2), (3, 4)], queue="hi", countdown=10)``. Times
        (``countdown``, ``eta``, ``expires``) are computed once, for the whole call.
        ``task_id`` is refused (every message needs its own id).
        """
        return await sending.send_items(self.app, self, items, options)

    def options(self, **options: Unpack[CallOptions]) -> TaskCall[P, R]:
        """Bind call options, keeping ``delay``'s typed arguments.

        ``await add.options(countdown=5, queue="hi").delay(2, 2)``
        """
        return TaskCall(self, options)

    # -- signatures (workflows) ----------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature: ``add.s(2, 2)``; in a chain the previous result is prepended."""
        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """An immutable signature: in a chain, the previous result is not passed to it."""
        return Signature(self, args, kwargs, immutable=True)

    def signature(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        **options: Any,
    ) -> Signature[R]:
        """A signature with options: ``add.signature((2, 2), countdown=10)``."""
        return Signature(self, args, kwargs, immutable=immutable, **options)

    def map(self, items: Iterable[Any]) -> Signature[list[R]]:
        """One task that calls this one for each item, in order: ``add1.map([1, 2, 3])``."""
        return Signature(MAP_TASK, (self.name, list(items)), app=self.app, immutable=True)

    def starmap(self, items: Iterable[Sequence[Any]]) -> Signature[list[R]]:
        """One task calling this one with each item as its arguments: ``add.starmap([(1, 2)])``."""
        return Signature(
            STARMAP_TASK, (self.name, [list(i) for i in items]), app=self.app, immutable=True
        )

    def chunks(self, items: Iterable[Sequence[Any]], n: int) -> Group[list[R]]:
        """A group of ``starmap`` tasks over ``n``-sized chunks of ``items``."""
        if n < 1:
            raise ValueError("chunk size must be at least 1")
        seq = [list(i) for i in items]
        return Group([self.starmap(seq[i : i + n]) for i in range(0, len(seq), n)])

    def AsyncResult(
        self, task_id: str, *, parent: AsyncResult[Any] | GroupResult[Any] | None = None
    ) -> AsyncResult[R]:
        """A handle on an earlier call of this task, typed by its return annotation."""
        return AsyncResult(
            self.app, task_id, result_type=self.spec.result_type, task=self, parent=parent
        )


_NO_OPTIONS: CallOptions = {}


class _Done(Generic[T]):
    """An already-finished awaitable (what ``update_state`` returns in a worker thread)."""

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        return self.value
        yield  # a generator that finishes at once

    def __bool__(self) -> bool:
        return bool(self.value)


def _on_worker_loop(coro: Coroutine[Any, Any, T], request: Request) -> Awaitable[T]:
    """``coro`` to await; in a ``def`` task (a worker thread), run to the end at once."""
    loop = request.loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is None and loop is not None:  # a sync task in a worker thread
        return _Done(asyncio.run_coroutine_threadsafe(coro, loop).result())
    return coro


class TaskCall(Generic[P, R]):
    """A task with call options bound; ``delay`` keeps the task's argument types."""

    def __init__(self, task: Task[P, R], options: CallOptions) -> None:
        self.task = task
        self.call_options = options

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Awaiting[AsyncResult[R]]:
        """Send the task with these arguments and the bound options."""
        return Awaiting(
            sending.send(
                self.task.app, self.task.name, args, kwargs, self.call_options, task=self.task
            ),
            self.task,
            "options(...).delay",
        )

    async def delay_many(self, items: Iterable[tuple[Any, ...]]) -> list[AsyncResult[R]]:
        """:meth:`Task.delay_many` with the bound options."""
        return await sending.send_items(self.task.app, self.task, items, self.call_options)

    @property
    def sync(self) -> SyncTask[P, R]:
        """The blocking spelling, with the bound options."""
        from .blocking import SyncTask

        return SyncTask(self.task, self.call_options)

    def options(self, **options: Unpack[CallOptions]) -> TaskCall[P, R]:
        """Add more options."""
        merged: CallOptions = {**self.call_options, **options}
        return TaskCall(self.task, merged)


async def call_hook(task: Task[Any, Any], name: str, *args: Any) -> None:
    """Call the task's ``name`` hook (``on_success``, ``after_return``...), sync or async.

    Skipped when neither the task's class nor the task replaces the no-op default (most
    tasks: two calls fewer per task). A hook's error is logged, never fatal.
    """
    if getattr(type(task), name) is getattr(Task, name) and name not in vars(task):
        return
    hook = getattr(task, name)
    try:
        value = hook(*args)
        if inspect.isawaitable(value):
            await value
    except Exception:
        log.exception("task hook %s raised", getattr(hook, "__name__", hook))
