"""``App``: the task registry, the settings and the connections, created explicitly.

There is no global app and no ``current_app`` proxy: tasks hold their app, and the worker
is given one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    Unpack,
    overload,
)

import msgspec

from ..workflows.apply import workflow_states
from ..workflows.builtins import register as register_builtins
from ..workflows.engine import Engine
from ..workflows.results import GroupResults
from ..workflows.signature import Canvas, Signature
from .bulk import encode_batch, new_ids, publish_chunks
from .canvas import Node, TaskNode
from .config import Settings
from .control import Control
from .errors import ArgumentError, ConfigurationError, NotRegistered, PublishTimeout
from .message import MessageOut, encode_message
from .middleware import Middleware, chain_publish
from .protocols import Broker, Outgoing, ResultBackend
from .result import AsyncResult
from .serialization import SerializerName, check_serializer
from .task import CallOptions, Task
from .urls import backend_class, broker_class, default_backend_url, redact

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("aqueue.app")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_BROKER_URL = "sqlite:///aqueue.db"


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns for an unbound function."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class BoundTaskDecorator(Protocol):
    """What ``@app.task(bind=True, ...)`` returns: the function takes the task first."""

    @overload
    def __call__(
        self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


class App:
    """An aqueue application.

    Args:
        name: the app's name; task names default to ``module.qualname``.
        broker: broker URL; default the embedded SQLite file ``aqueue.db`` in the working
            directory, or ``AQUEUE_BROKER_URL``.
        backend: result backend URL; default the broker's own store.
        include: modules the worker imports at start.
        **settings: any :class:`~aqueue.core.config.Settings` field.
    """

    def __init__(
        self,
        name: str = "aqueue",
        broker: str | None = None,
        backend: str | None = None,
        *,
        include: Sequence[str] = (),
        **settings: Any,
    ) -> None:
        self.name = name
        self.conf = Settings()
        self.conf.load_environment()
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["result_backend"] = backend
        if include:
            settings["include"] = list(include)
        self.conf.update(settings)
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: shared resources built by lifespan functions (``app.state.db = ...``)
        self.state = types.SimpleNamespace()
        self.middleware: list[Middleware] = []
        self.lifespans: list[Callable[[App], AbstractAsyncContextManager[None]]] = []
        self.control = Control(self)
        self.workflows = Engine(self)
        #: ``app.GroupResult(id, results)`` and ``await app.GroupResult.restore(id)``
        self.GroupResult = GroupResults(self)
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connect_lock: asyncio.Lock | None = None
        register_builtins(self)

    def __repr__(self) -> str:
        return f"<App {self.name} broker={redact(self.broker_url)}>"

    @property
    def broker_url(self) -> str:
        """The broker URL in effect."""
        return self.conf.broker_url or DEFAULT_BROKER_URL

    @property
    def backend_url(self) -> str | None:
        """The result backend URL in effect (``None``: results are not stored)."""
        return self.conf.result_backend or default_backend_url(self.broker_url)

    # -- tasks --------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        *,
        bind: Literal[True],
        name: str | None = None,
        base: type[Task[Any, Any]] | None = None,
        **options: Any,
    ) -> BoundTaskDecorator: ...
    @overload
    def task(
        self,
        *,
        bind: Literal[False] = False,
        name: str | None = None,
        base: type[Task[Any, Any]] | None = None,
        **options: Any,
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        bind: bool = False,
        name: str | None = None,
        base: type[Task[Any, Any]] | None = None,
        **options: Any,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., ...)``.

        ``async def`` tasks run on the worker's event loop; ``def`` tasks run in a thread.

        Options (Celery's names): ``name``, ``bind``, ``base``, ``queue``, ``ignore_result``,
        ``serializer``, ``acks_late``, ``track_started``, ``priority``.
        """

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            if not callable(func):
                raise TypeError("@app.task decorates a function")
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            if "serializer" in options and options["serializer"] is not None:
                check_serializer(options["serializer"])
            cls = base or Task
            if not (isinstance(cls, type) and issubclass(cls, Task)):
                raise TypeError("base= must be a subclass of aqueue.Task")
            existing = self.tasks.get(task_name)
            if existing is not None and existing.fn is not func:
                log.warning("task %s registered twice; the later definition wins", task_name)
            task = cls(self, func, name=task_name, bind=bind, **options)
            self.tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register

    def add_middleware(self, middleware: Middleware) -> None:
        """Add middleware around every publish and execution; the first added is outermost."""
        self.middleware.append(middleware)

    def lifespan(
        self, fn: Callable[[App], AsyncIterator[None]]
    ) -> Callable[[App], AsyncIterator[None]]:
        """Register worker startup/shutdown code, as an async generator (FastAPI's style).

        Code before ``yield`` runs when a worker starts, before it claims anything; code after
        runs when it stops, after its tasks finished. Put shared resources on ``app.state``::

            @app.lifespan
            async def resources(app):
                app.state.http = httpx.AsyncClient()
                yield
                await app.state.http.aclose()
        """
        self.lifespans.append(contextlib.asynccontextmanager(fn))
        return fn

    def signature(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[Any]:
        """A signature by task name; the task need not be registered in this process."""
        return Signature(name, args, kwargs, app=self, **options)

    async def workflow_states(self, root_id: str) -> dict[str, str]:
        """The state of every node of a workflow, by the id of its first task."""
        return await workflow_states(self, root_id)

    def get_task(self, name: str) -> Task[Any, Any]:
        """The registered task called ``name``."""
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(
                f"no task named {name!r} is registered on app {self.name}"
            ) from None

    def import_includes(self) -> None:
        """Import the modules named in ``include`` so their tasks register."""
        for module in self.conf.include:
            importlib.import_module(module)

    # -- connections --------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the broker and backend connections (done on first use otherwise)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # a new event loop (asyncio.run called again): connections of the old one are
            # unusable there, so start over
            self._broker = self._backend = None
            self._loop = loop
            self._connect_lock = asyncio.Lock()
        assert self._connect_lock is not None
        async with self._connect_lock:
            if self._broker is None:
                broker = broker_class(self.broker_url)(self.broker_url, **self.conf.broker_options)
                await broker.connect()
                self._broker = broker
                log.debug("connected to broker %s", redact(self.broker_url))
            if self._backend is None and self.backend_url is not None:
                cls = backend_class(self.backend_url)
                # rpc:// sends results over the broker's RabbitMQ: it needs the broker's URL
                uses_broker = getattr(cls, "uses_broker_url", False)
                extra = {"broker_url": self.broker_url} if uses_broker else {}
                backend = cls(self.backend_url, **extra)
                await backend.connect()
                self._backend = backend

    async def close(self) -> None:
        """Close connections; the app can connect again later."""
        broker, backend = self._broker, self._backend
        self._broker = self._backend = None
        self._loop = None
        if backend is not None:
            await backend.close()
        if broker is not None:
            await broker.close()

    async def __aenter__(self) -> App:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _connected_broker(self) -> Broker:
        if self._broker is None or self._loop is not asyncio.get_running_loop():
            await self.connect()
        assert self._broker is not None
        return self._broker

    async def _result_backend(self) -> ResultBackend:
        if self._backend is None or self._loop is not asyncio.get_running_loop():
            await self.connect()
        if self._backend is None:
            raise ConfigurationError(
                f"app {self.name} has no result backend: pass backend=... "
                "(e.g. redis://localhost:6379/0 or sqlite:///aqueue.db)"
            )
        return self._backend

    @property
    def broker(self) -> Broker:
        """The connected broker (after ``connect()`` or first use)."""
        if self._broker is None:
            raise ConfigurationError("the app is not connected: use `async with app:`")
        return self._broker

    # -- sending ------------------------------------------------------------------------

    async def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncResult[Any]:
        """Send a task by name; it need not be registered in this process.

        Arguments are not checked here (as in Celery): the worker validates them.
        """
        return await self._send(
            name,
            tuple(args or ()),
            dict(kwargs or {}),
            options,
            task=self.tasks.get(name),
            check=False,
        )

    async def _send(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions,
        *,
        task: Task[Any, Any] | None,
        check: bool = True,
    ) -> AsyncResult[Any]:
        msg, fmt = self._build(name, args, kwargs, options, task, check)
        await self._connected_broker()  # connects the backend too, which may route results
        msg = self._with_reply_headers(msg)
        if self.middleware:
            sent: list[MessageOut] = []

            async def last(final: MessageOut) -> None:
                await self._publish(final, fmt)
                sent.append(final)

            await chain_publish(self.middleware, last)(msg)
            task_id = sent[0].id if sent else msg.id
        else:
            await self._publish(msg, fmt)
            task_id = msg.id
        result_type = task.spec.result_type if task is not None else Any
        return AsyncResult(self, task_id, result_type=result_type, task=task)

    def _with_reply_headers(self, msg: MessageOut) -> MessageOut:
        """Add where results go, for a backend that routes them to the caller (rpc://)."""
        reply_headers = getattr(self._backend, "reply_headers", None)
        if reply_headers is None:
            return msg
        return msgspec.structs.replace(msg, headers={**reply_headers(), **msg.headers})

    async def _publish(self, msg: MessageOut, fmt: SerializerName) -> None:
        # encoded once, and refused if oversized before any I/O
        body = encode_message(msg, fmt, self.conf.max_message_bytes)
        outgoing = Outgoing(
            id=msg.id, queue=msg.queue, body=body, priority=msg.priority, eta=msg.eta
        )
        broker = await self._connected_broker()
        try:
            async with asyncio.timeout(self.conf.publish_timeout):
                await broker.publish([outgoing])
        except TimeoutError:
            raise PublishTimeout(
                f"publishing {msg.task} did not complete within {self.conf.publish_timeout}s "
                f"(broker {redact(self.broker_url)}); it may or may not have been queued"
            ) from None

    def _build(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions,
        task: Task[Any, Any] | None,
        check: bool,
    ) -> tuple[MessageOut, SerializerName]:
        plan = _Plan(self, name, options, task)
        if check and task is not None and task.typing:
            task.spec.check_call(args, kwargs)  # a wrong arity fails here, not in the worker
        task_id = options.get("task_id") or str(uuid.uuid4())
        return plan.message(task_id, args, kwargs, plan.headers), plan.serializer

    # -- sending many -------------------------------------------------------------------

    async def send_many(self, signatures: Iterable[Signature[Any]]) -> list[AsyncResult[Any]]:
        """Publish many task signatures (possibly of different tasks) in one bulk publish.

        ``await app.send_many([add.s(1, 2), mul.s(3, 4), add.s(x=1, y=2)])`` returns one
        :class:`AsyncResult` per signature, in order. Each message is exactly what
        ``sig.delay()`` would send (the signature's own options, links and ``task_id``),
        without any group bookkeeping. Arguments of locally registered typed tasks are
        checked and every message is encoded and size-checked before anything is sent;
        messages then go out in chunks (see :meth:`Task.delay_many`).

        Chains, groups and chords are refused with ``TypeError``: apply them with their own
        ``apply_async()`` (a group publishes its members in one bulk call too).
        """
        nodes: list[TaskNode] = []
        tasks: list[Task[Any, Any] | None] = []
        for index, sig in enumerate(signatures):
            if not isinstance(sig, Signature):
                raise TypeError(
                    f"send_many item {index} is a {type(sig).__name__}, not a task signature "
                    "(add.s(1, 2)): apply a chain, group or chord with its own apply_async()"
                )
            task = sig.task if sig.task is not None else self.tasks.get(sig.name)
            if task is not None and task.typing:
                _check_item(task, index, sig.args, sig.kwargs)
            nodes.append(sig.freeze())
            tasks.append(task)
        if not nodes:
            return []
        await self._connected_broker()  # connects the backend too, which may route results
        conf_fmt = self.conf.task_serializer
        messages: list[MessageOut] = []
        fmts: list[SerializerName] = []
        for node, task in zip(nodes, tasks, strict=True):
            messages.append(self._with_reply_headers(self.workflows.message_for(node)))
            fmts.append(
                check_serializer(
                    node.options.get("serializer")
                    or (task.serializer if task is not None else None)
                    or conf_fmt
                )
            )
        return await self._publish_many(messages, fmts, tasks)

    async def _send_many(
        self, task: Task[Any, Any], items: Iterable[Sequence[Any]], options: CallOptions
    ) -> list[AsyncResult[Any]]:
        """``delay_many`` / ``apply_many``: one plan, then per item only what differs."""
        if "task_id" in options:
            raise TypeError(
                "apply_many cannot give every message the same task_id: use "
                "app.send_many([task.s(...).set(task_id=...), ...]) for chosen ids"
            )
        plan = _Plan(self, task.name, options, task)  # every option checked once
        arg_list: list[tuple[Any, ...]] = [
            args if type(args) is tuple else _as_args(args, index)
            for index, args in enumerate(items)
        ]
        if not arg_list:
            return []
        if task.typing:  # a wrong arity fails here, before anything is sent
            check = task.spec.check_call
            for index, args in enumerate(arg_list):
                try:
                    check(args, _NO_KWARGS)
                except ArgumentError as exc:
                    raise ArgumentError(f"item {index}: {exc}; nothing was sent") from None
        await self._connected_broker()  # connects the backend too, which may route results
        reply_headers = getattr(self._backend, "reply_headers", None)
        headers = plan.headers
        if reply_headers is not None:
            headers = {**reply_headers(), **headers}
        ids = new_ids(len(arg_list))
        if plan.link is not None or plan.link_error is not None:
            # callbacks are frozen per message: each one needs its own task ids
            messages = [plan.message(i, a, {}, headers) for i, a in zip(ids, arg_list, strict=True)]
        else:
            # the hot path: everything but the id and the arguments is computed once
            name, queue, eta, expires = plan.name, plan.queue, plan.eta, plan.expires
            priority, ignore_result, now = plan.priority, plan.ignore_result, plan.now
            time_limit, soft_time_limit = plan.time_limit, plan.soft_time_limit
            parent_id, root_id, group_id = plan.parent_id, plan.root_id, plan.group_id
            messages = [
                MessageOut(
                    id=task_id,
                    task=name,
                    queue=queue,
                    args=args,
                    headers=headers,
                    eta=eta,
                    expires=expires,
                    priority=priority,
                    time_limit=time_limit,
                    soft_time_limit=soft_time_limit,
                    ignore_result=ignore_result,
                    parent_id=parent_id,
                    root_id=root_id,
                    group_id=group_id,
                    sent_at=now,
                )
                for task_id, args in zip(ids, arg_list, strict=True)
            ]
        return await self._publish_many(messages, plan.serializer, [task])

    async def _publish_many(
        self,
        messages: list[MessageOut],
        fmt: SerializerName | list[SerializerName],
        tasks: Sequence[Task[Any, Any] | None],
    ) -> list[AsyncResult[Any]]:
        """Encode (size-checked) then publish in chunks; one result per message, in order.

        With middleware, each message first goes through the publish chain; what reaches
        its end is collected and published in the same chunks afterwards.
        """
        if self.middleware:
            sent, origins, ids = await self._through_middleware(messages, fmt)
            sent_fmt: SerializerName | list[SerializerName] = (
                fmt if isinstance(fmt, str) else [fmt[i] for i in origins]
            )
            batch = encode_batch(sent, sent_fmt, self.conf.max_message_bytes)
            results = self._results(tasks, ids, range(len(ids)))
            handles = self._results(tasks, [m.id for m in sent], origins)
        else:
            batch = encode_batch(messages, fmt, self.conf.max_message_bytes)
            results = self._results(tasks, [m.id for m in messages], range(len(messages)))
            handles = results
        await publish_chunks(
            await self._connected_broker(),
            batch,
            handles,
            timeout=self.conf.publish_timeout,
            where=redact(self.broker_url),
            chunk=self.conf.publish_chunk_size,
        )
        return results

    def _results(
        self,
        tasks: Sequence[Task[Any, Any] | None],
        ids: Sequence[str],
        origins: Sequence[int],
    ) -> list[AsyncResult[Any]]:
        """Result handles of ``ids``, each typed by the task of its origin (one task: all)."""
        if len(tasks) == 1:
            task = tasks[0]
            result_type = task.spec.result_type if task is not None else Any
            return [AsyncResult(self, i, result_type=result_type, task=task) for i in ids]
        out: list[AsyncResult[Any]] = []
        for task_id, origin in zip(ids, origins, strict=True):
            task = tasks[origin]
            out.append(task.AsyncResult(task_id) if task is not None else self.AsyncResult(task_id))
        return out

    async def _through_middleware(
        self, messages: list[MessageOut], fmt: SerializerName | list[SerializerName]
    ) -> tuple[list[MessageOut], list[int], list[str]]:
        """Run each message through the publish middleware, collecting what reaches the end.

        Returns the messages to send, the index of the message each came from, and per
        input message the id its result is read by (the first message it became, or its own
        if the middleware dropped it).
        """
        sent: list[MessageOut] = []
        origins: list[int] = []
        ids: list[str | None] = [None] * len(messages)
        collecting = True
        for index, msg in enumerate(messages):

            async def last(final: MessageOut, index: int = index) -> None:
                if not collecting:  # call_next after the bulk call moved on: send it alone
                    await self._publish(final, fmt if isinstance(fmt, str) else fmt[index])
                    return
                sent.append(final)
                origins.append(index)
                if ids[index] is None:
                    ids[index] = final.id

            if msg.headers:  # one dict per message, so a middleware may change it in place
                msg = msgspec.structs.replace(msg, headers=dict(msg.headers))
            await chain_publish(self.middleware, last)(msg)
        collecting = False
        result_ids = [i if i is not None else m.id for i, m in zip(ids, messages, strict=True)]
        return sent, origins, result_ids

    # -- worker -------------------------------------------------------------------------

    def worker(self, **options: Any) -> Worker:
        """A worker for this app; ``async with app.worker(...):`` runs it in this loop.

        Options: ``queues``, ``concurrency``, ``prefetch``, ``hostname``, ``burst``,
        ``shutdown_timeout``, ``lease_seconds``.
        """
        from .worker import Worker

        return Worker(self, **options)

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:
        """A handle on any task by id (results decode untyped)."""
        return AsyncResult(self, task_id)


def _nodes(value: Canvas[Any] | list[Canvas[Any]] | None) -> tuple[Node, ...]:
    """Callbacks given as ``link=`` / ``link_error=`` (one or a list), as wire nodes."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(c.freeze() for c in items)


def _when(
    value: datetime | float | None, now: float, what: str, *, relative: bool = False
) -> float | None:
    """A time option as unix seconds. Numbers are seconds from now for ``expires``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return now + float(value) if relative else float(value)
    raise TypeError(f"{what} must be a datetime or a number, not {type(value).__name__}")


_NO_KWARGS: dict[str, Any] = {}


class _Plan:
    """What the call options decide for every message of one call, computed once."""

    __slots__ = (
        "eta",
        "expires",
        "group_id",
        "headers",
        "ignore_result",
        "link",
        "link_error",
        "name",
        "now",
        "parent_id",
        "priority",
        "queue",
        "root_id",
        "serializer",
        "soft_time_limit",
        "time_limit",
    )

    def __init__(
        self, app: App, name: str, options: CallOptions, task: Task[Any, Any] | None
    ) -> None:
        now = time.time()
        unknown = set(options) - _CALL_OPTIONS
        if unknown:
            raise TypeError(f"unknown call option(s): {', '.join(sorted(unknown))}")
        eta = _when(options.get("eta"), now, "eta")
        if "countdown" in options:
            if eta is not None:
                raise TypeError("give countdown or eta, not both")
            eta = now + float(options["countdown"])
        self.eta = eta if eta is not None and eta > now else None
        self.expires = _when(
            options.get("expires", task.expires if task else None), now, "expires", relative=True
        )
        self.queue = (
            options.get("queue") or (task.queue if task else None) or app.conf.task_default_queue
        )
        priority = options.get("priority", task.priority if task else 0)
        if not 0 <= priority <= 255:
            raise ValueError("priority must be between 0 and 255 (higher runs first)")
        self.priority = priority
        self.serializer = check_serializer(
            options.get("serializer")
            or (task.serializer if task else None)
            or app.conf.task_serializer
        )
        self.name = name
        self.now = now
        self.headers: dict[str, str] = options.get("headers", {})
        self.ignore_result: bool = options.get(
            "ignore_result", task.ignore_result if task else False
        )
        self.time_limit = options.get("time_limit")
        self.soft_time_limit = options.get("soft_time_limit")
        self.parent_id = options.get("parent_id")
        self.root_id = options.get("root_id")
        self.group_id = options.get("group_id")
        self.link = options.get("link")
        self.link_error = options.get("link_error")

    def message(
        self,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        headers: dict[str, str],
    ) -> MessageOut:
        """One message of the call (callbacks frozen anew: fresh ids for each message)."""
        return MessageOut(
            link=_nodes(self.link),
            link_error=_nodes(self.link_error),
            id=task_id,
            task=self.name,
            queue=self.queue,
            args=args,
            kwargs=kwargs,
            headers=headers,
            eta=self.eta,
            expires=self.expires,
            priority=self.priority,
            time_limit=self.time_limit,
            soft_time_limit=self.soft_time_limit,
            ignore_result=self.ignore_result,
            parent_id=self.parent_id,
            root_id=self.root_id,
            group_id=self.group_id,
            sent_at=self.now,
        )


_CALL_OPTIONS = frozenset(CallOptions.__annotations__)


def _as_args(value: Any, index: int) -> tuple[Any, ...]:
    """One item of ``delay_many``: a tuple of positional arguments (a list is accepted)."""
    if isinstance(value, list):
        return tuple(value)
    raise TypeError(
        f"item {index} is a {type(value).__name__}: each item is a tuple of the task's "
        "positional arguments, e.g. delay_many([(1, 2), (3, 4)]) or [(x,) for x in xs]"
    )


def _check_item(
    task: Task[Any, Any], index: int, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    try:
        task.spec.check_call(args, kwargs)
    except ArgumentError as exc:
        raise ArgumentError(f"item {index}: {exc}; nothing was sent") from None
