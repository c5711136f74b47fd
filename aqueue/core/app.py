"""``App``: the task registry, the settings and the connections, created explicitly.

There is no global app and no ``current_app`` proxy: tasks hold their app, and the worker
is given one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import logging
import types
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    Unpack,
    cast,
    overload,
)

from . import sending
from .awaiting import Awaiting
from .canvas import Signature
from .config import Settings, keyring_of
from .control import Control
from .emitting import SentEvents
from .errors import ConfigurationError, NotRegistered
from .events import Event, EventStream, iterate
from .middleware import Middleware
from .options import CallOptions
from .plugins import beat_for, check_beat_entry, workflows_for
from .protocols import BeatService, Broker, ResultBackend, RoutesByExchange, RoutesResults
from .result import AsyncResult, GroupResult, GroupResults
from .routing import Router, router_of
from .serialization import check_serializer
from .signed_results import SignedBackend
from .task import Task
from .urls import default_backend_url, full_url, make_backend, make_broker, redact

if TYPE_CHECKING:
    from .blocking import SyncApp
    from .protocols import Workflows
    from .worker import Worker

log = logging.getLogger("aqueue.app")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_BROKER_URL = "sqlite:///aqueue.db"

#: what publishes a task in another protocol (:meth:`App.register_protocol`): called with
#: the task's name, arguments, keyword arguments and call options, it returns the handle
ProtocolSender = Callable[
    [str, tuple[Any, ...], dict[str, Any], CallOptions], Coroutine[Any, Any, "AsyncResult[Any]"]
]


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


class PeriodicDecorator(Protocol):
    """What ``@app.periodic(...)`` returns: takes a function or a task, returns the task."""

    @overload
    def __call__(self, fn: Task[P, R], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class App:
    """An aqueue application.

    Args:
        name: the app's name; task names default to ``module.qualname``.
        broker: broker URL; default the embedded SQLite file ``aqueue.db`` in the working
            directory, or ``AQUEUE_BROKER_URL``. Or a broker object (any
            :class:`~aqueue.core.protocols.Broker`), used as it is.
        backend: result backend URL; default the broker's own store. Or a backend object
            (any :class:`~aqueue.core.protocols.ResultBackend`); with a broker object and
            no backend, results are not stored.
        include: modules the worker imports at start.
        **settings: any :class:`~aqueue.core.config.Settings` field.
    """

    def __init__(
        self,
        name: str = "aqueue",
        broker: str | Broker | None = None,
        backend: str | ResultBackend | None = None,
        *,
        include: Sequence[str] = (),
        **settings: Any,
    ) -> None:
        #: the app's name (``App("proj")``); tasks defined in ``__main__`` are named after it
        self.name = name
        #: the settings (:class:`~aqueue.core.config.Settings`): ``app.conf.update(...)``
        self.conf = Settings()
        self.conf.load_environment()
        # a broker or backend given as an object is used as it is (no URL, no options)
        self._broker_object: Broker | None = None
        self._backend_object: ResultBackend | None = None
        if isinstance(broker, str):
            settings["broker_url"] = full_url(broker)
        elif broker is not None:
            self._broker_object = _checked(broker, Broker, "broker")
        if isinstance(backend, str):
            settings["result_backend"] = full_url(backend)
        elif backend is not None:
            self._backend_object = _checked(backend, ResultBackend, "backend")
        if include:
            settings["include"] = list(include)
        self.conf.update(settings)
        keyring_of(self.conf)  # bad signing keys fail here, not at the first send
        #: the registered tasks by name
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: shared resources built by lifespan functions (``app.state.db = ...``)
        self.state = types.SimpleNamespace()
        #: publish and execute middleware, outermost first (``add_middleware``)
        self.middleware: list[Middleware] = []
        self.lifespans: list[Callable[[App], AbstractAsyncContextManager[None]]] = []
        # packages whose task modules the worker imports at start (autodiscover_tasks)
        self._autodiscover: list[tuple[Callable[[], Iterable[str]], str]] = []
        #: remote control and inspection of workers and tasks (Celery's ``app.control``)
        self.control = Control(self)
        #: ``app.GroupResult(id, results)`` and ``await app.GroupResult.restore(id)``
        self.GroupResult = GroupResults(self)
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connect_lock: asyncio.Lock | None = None
        # the blocking API's loop, once the app is used through ``app.sync`` (blocking.py)
        self._pinned_loop: asyncio.AbstractEventLoop | None = None
        self._sync: SyncApp | None = None
        #: the workflow engine (``aqueue.workflows``): applies canvases, and continues
        #: workflows in the worker; it registers its built-in tasks on the app
        self.workflows: Workflows = workflows_for(self)
        #: periodic tasks declared with ``@app.periodic``: entry name -> entry (as in
        #: ``beat_schedule``); the scheduler runs these and ``conf.beat_schedule``'s
        self.periodic_entries: dict[str, dict[str, Any]] = {}
        # the connected backend's reply_headers, when it pushes results to senders
        self._reply_headers: Callable[[], dict[str, str] | None] | None = None
        # the connected broker when it has exchanges, and the routing it was last given
        self._exchanges: RoutesByExchange | None = None
        self._routed: Router | None = None
        #: ``task-sent`` events of what this app sends (``task_send_sent_event``)
        self.sent_events = SentEvents(self)
        #: other task protocols ``send_task(..., protocol=name)`` can publish in, by name
        #: (:meth:`register_protocol`; ``aqueue.contrib.celery.CeleryBridge`` adds ``celery``)
        self._protocols: dict[str, ProtocolSender] = {}

    def __repr__(self) -> str:
        return f"<App {self.name} broker={redact(self.broker_url)}>"

    @property
    def broker_url(self) -> str:
        """The broker URL in effect (a broker object's repr when one was given)."""
        if self._broker_object is not None:
            return repr(self._broker_object)
        return self.conf.broker_url or DEFAULT_BROKER_URL

    @property
    def backend_url(self) -> str | None:
        """The result backend URL in effect (``None``: results are not stored)."""
        if self._backend_object is not None:
            return repr(self._backend_object)
        if self.conf.result_backend:
            return self.conf.result_backend
        return None if self._broker_object is not None else default_backend_url(self.broker_url)

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
            task_name = name or self.gen_task_name(func)
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

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: dt.timedelta | float | None = None,
        schedule: Any = None,
        tz: str | None = None,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        **policies: Any,
    ) -> PeriodicDecorator:
        """Run a task periodically: ``@app.periodic(cron="0 7 * * mon", tz="Europe/Berlin")``.

        Decorates a function (registered as with ``@app.task``) or a task (put it above
        ``@app.task(...)`` to give task options). The schedule is one of ``cron`` (a cron
        string), ``every`` (a timedelta or seconds) or ``schedule`` (``crontab(...)``, or
        what ``beat_schedule`` takes). ``name`` is the entry's name (default: the task's);
        ``args``, ``kwargs`` and ``options`` are what each run is sent with; ``policies``
        are the other keys of an entry: ``misfire``, ``catch_up``, ``misfire_grace``,
        ``overlap``, ``jitter``, ``start``, ``end``, ``enabled`` (docs/periodic-tasks.md).

        The entry runs wherever a scheduler of this app runs (``aqueue beat``,
        ``aqueue worker --beat``, ``async with app.beat():``).

        Raises:
            ConfigurationError: a bad schedule or key (checked here, at decoration).
        """
        given = [value for value in (cron, every, schedule) if value is not None]
        if len(given) != 1:
            raise ConfigurationError("@app.periodic needs one of cron=, every= or schedule=")

        def register(fn: Any) -> Any:
            task = fn if isinstance(fn, Task) else self.task(fn)
            entry_name = name or task.name
            raw: dict[str, Any] = {"task": task.name, "schedule": given[0], **policies}
            if tz is not None:
                raw["tz"] = tz
            if args:
                raw["args"] = tuple(args)
            if kwargs:
                raw["kwargs"] = dict(kwargs)
            if options:
                raw["options"] = dict(options)
            if entry_name in self.periodic_entries:
                raise ConfigurationError(f"beat entry {entry_name!r} is declared twice")
            check_beat_entry(self, entry_name, raw)
            self.periodic_entries[entry_name] = raw
            return task

        return cast(PeriodicDecorator, register)

    def beat(self, **options: Any) -> BeatService:
        """The periodic task scheduler of this app: ``async with app.beat():`` runs it here.

        Any number of schedulers may run (in ``aqueue beat`` processes, in workers started
        with ``--beat``, embedded like this): one leads, the others stand by, and each slot
        is sent once. Options: ``lease_seconds``, ``max_interval``, ``clock``, ``store``,
        ``name`` (see :class:`aqueue.beat.Beat`). Entries are managed at run time with
        :class:`aqueue.beat.BeatSchedule`.
        """
        return beat_for(self, **options)

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
        return await self.workflows.states(root_id)

    def get_task(self, name: str) -> Task[Any, Any]:
        """The registered task called ``name``."""
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(
                f"no task named {name!r} is registered on app {self.name}"
            ) from None

    def gen_task_name(self, fn: Callable[..., Any]) -> str:
        """The name a task gets when ``@app.task`` is given none: ``module.qualname``.

        A function defined in a script run as ``__main__`` is named after the app, as Celery
        does (``App("proj")``: ``proj.add``), so a worker that imports the script as a
        module, and a sender using ``send_task("proj.add")``, agree with it.
        """
        module = fn.__module__
        if module == "__main__":
            module = self.name
        return f"{module}.{fn.__qualname__}"

    def config_from_object(
        self, obj: Any, *, namespace: str | None = None, silent: bool = False
    ) -> list[str]:
        """Read settings from a module, a class, an object or a mapping (Celery's call).

        ``app.config_from_object("proj.celeryconfig")`` (a module name, or
        ``"module:attribute"``), ``app.config_from_object(Config)``, or Django's
        ``app.config_from_object("django.conf:settings", namespace="CELERY")``. Celery's
        lowercase setting names are read, and its old uppercase ones; Celery settings that
        aqueue needs no counterpart for are accepted (logged), a name that is no setting
        is an error naming the nearest one. Settings given to the constructor, to
        ``conf.update()`` or in ``AQUEUE_*`` variables win. Returns the names it set.

        Args:
            silent: return ``[]`` instead of raising when the module cannot be imported.
        """
        source = obj
        if isinstance(obj, str):
            module_name, _, attribute = obj.partition(":")
            try:
                source = importlib.import_module(module_name)
            except ImportError as exc:
                if silent:
                    return []
                raise ConfigurationError(
                    f"config_from_object: cannot import {module_name!r} ({exc})"
                ) from None
            for part in filter(None, attribute.split(".")):
                source = getattr(source, part)
        return self.conf.update_from_object(source, namespace=namespace)

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]],
        related_name: str = "tasks",
    ) -> None:
        """Import ``<package>.<related_name>`` of each package when the worker starts.

        ``app.autodiscover_tasks(["proj.orders", "proj.billing"])`` registers the tasks of
        ``proj/orders/tasks.py`` and ``proj/billing/tasks.py``; a package without such a
        module is skipped. ``packages`` may be a callable, called at that time (Django:
        ``lambda: settings.INSTALLED_APPS``).
        """
        if callable(packages):
            self._autodiscover.append((packages, related_name))
        else:
            names = list(packages)
            self._autodiscover.append((lambda: names, related_name))

    def import_includes(self) -> None:
        """Import the modules named in ``include``, and those autodiscovery finds, so their
        tasks register."""
        for module in self.conf.include:
            importlib.import_module(module)
        for packages, related_name in self._autodiscover:
            for package in packages():
                name = f"{package}.{related_name}"
                try:
                    importlib.import_module(name)
                except ModuleNotFoundError as exc:
                    if exc.name != name:  # no such package, or an import inside it failed
                        raise

    # -- connections --------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the broker and backend connections (done on first use otherwise)."""
        loop = asyncio.get_running_loop()
        if self._pinned_loop is not None:
            from .blocking import check_pinned

            check_pinned(self, self._pinned_loop)
        if self._loop is not loop:
            # a new event loop (asyncio.run called again): connections of the old one are
            # unusable there, so start over
            self._broker = self._backend = None
            self._reply_headers = None
            self._exchanges = self._routed = None
            self._loop = loop
            self._connect_lock = asyncio.Lock()
        assert self._connect_lock is not None
        async with self._connect_lock:
            if self._broker is None:
                broker = self._broker_object or make_broker(
                    self.broker_url, self.conf.broker_options
                )
                await broker.connect()
                if isinstance(broker, RoutesByExchange):
                    self._exchanges = broker
                    self._routed = None
                self._broker = broker
                log.debug("connected to broker %s", redact(self.broker_url))
            if self._backend is None and self.backend_url is not None:
                backend = self._backend_object or make_backend(self.backend_url, self.broker_url)
                await backend.connect()
                signed = keyring_of(self.conf) is not None  # read at connect (security.md)
                self._backend = SignedBackend(backend, self.conf) if signed else backend
                if isinstance(backend, RoutesResults):
                    self._reply_headers = backend.reply_headers

    @property
    def sync(self) -> SyncApp:
        """The blocking API of this app, for code outside any event loop (docs/sync.md):
        ``app.sync.send_task(...)``, ``app.sync.apply(canvas)``,
        ``app.sync.AsyncResult(id).get(timeout=10)``, ``with app.sync.worker():``."""
        if self._sync is None:
            from .blocking import SyncApp

            self._sync = SyncApp(self)
        return self._sync

    def _pin_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Bind the app's connections to ``loop`` (the blocking API's), or unbind them."""
        self._pinned_loop = loop

    def _forget_connections(self) -> list[object]:
        """Drop the connections without closing them: in a forked child they are the
        parent's (closing would be the parent's business), and the child connects anew.
        Returns what was dropped, for the caller to keep (see blocking.py)."""
        dropped: list[object] = [c for c in (self._broker, self._backend) if c is not None]
        self._broker = self._backend = None
        self._reply_headers = None
        self._exchanges = self._routed = None
        self._loop = None
        self._connect_lock = None
        self._pinned_loop = None
        return dropped

    def reply_headers(self) -> dict[str, str] | None:
        """Headers that make results come back to this process (a backend that routes
        results, :class:`~aqueue.core.protocols.RoutesResults`); ``None`` otherwise."""
        reply_headers = self._reply_headers
        return reply_headers() if reply_headers is not None else None

    async def close(self) -> None:
        """Close connections; the app can connect again later."""
        broker, backend = self._broker, self._backend
        self._broker = self._backend = None
        self._reply_headers = None
        self._exchanges = self._routed = None
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

    async def connected_broker(self) -> Broker:
        """The broker, connected in this event loop (connecting it and the backend first),
        and, when it has exchanges, given the current routing."""
        if self._broker is None or self._loop is not asyncio.get_running_loop():
            await self.connect()
        assert self._broker is not None
        if self._exchanges is not None:
            self.router()
        return self._broker

    def router(self) -> Router:
        """The compiled routing of ``task_routes`` and ``task_queues`` (docs/routing.md),
        handed to a connected broker that has exchanges whenever it changed."""
        router = router_of(self.conf)
        if self._exchanges is not None and router is not self._routed:
            self._exchanges.use_routing(router)
            self._routed = router
        return router

    @property
    def routes_by_exchange(self) -> bool:
        """Whether the connected broker has exchanges (RabbitMQ): messages routed to an
        exchange are published to it; otherwise they are resolved to a queue here."""
        return self._exchanges is not None

    async def result_backend(self) -> ResultBackend:
        """The result backend, connected in this event loop.

        Raises:
            ConfigurationError: the app stores no results.
        """
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

    @property
    def is_connected(self) -> bool:
        """Whether the broker (and backend) connections are open."""
        return self._broker is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the app's connections belong to (None before ``connect()``).

        Connections serve one loop; code in another thread that must use this app (a
        worker thread, a framework's sync code) sends its coroutines there
        (``asyncio.run_coroutine_threadsafe``) rather than connecting it anew.
        """
        return self._loop if self._broker is not None else None

    @property
    def backend(self) -> ResultBackend | None:
        """The connected result backend (after ``connect()``); ``None``: results not stored."""
        if self._broker is None:
            raise ConfigurationError("the app is not connected: use `async with app:`")
        return self._backend

    # -- sending (aqueue/core/sending.py) -------------------------------------------------

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        protocol: str = "aqueue",
        **options: Unpack[CallOptions],
    ) -> Awaiting[AsyncResult[Any]]:
        """Send a task by name; it need not be registered in this process.

        Arguments are not checked here (as in Celery): the worker validates them.
        ``protocol="celery"`` sends it as a Celery message for Celery's workers, through
        the app's :class:`~aqueue.contrib.celery.CeleryBridge` (see :meth:`register_protocol`);
        the handle then reads Celery's result.
        """
        if protocol != "aqueue":
            sender = self._protocols.get(protocol)
            if sender is None:
                hint = (
                    ": create aqueue.contrib.celery.CeleryBridge(app, broker_url) first"
                    if protocol == "celery"
                    else ""
                )
                raise ConfigurationError(
                    f"send_task(protocol={protocol!r}): this app has no sender for that "
                    f"protocol{hint}"
                )
            return Awaiting(
                sender(name, tuple(args or ()), dict(kwargs or {}), options), self, "send_task"
            )
        return Awaiting(
            sending.send(
                self,
                name,
                tuple(args or ()),
                dict(kwargs or {}),
                options,
                task=self.tasks.get(name),
                check=False,
            ),
            self,
            "send_task",
        )

    def register_protocol(self, name: str, sender: ProtocolSender) -> None:
        """Make ``send_task(..., protocol=name)`` publish through ``sender``: called with
        the task's name, arguments, keyword arguments and call options, it returns the
        task's result handle. ``"aqueue"`` is this app's own protocol and cannot be
        replaced, nor can a protocol another sender already publishes (registering the same
        sender again is a no-op).

        Raises:
            ConfigurationError: ``name`` is ``"aqueue"``, or has another sender already
                (two ``CeleryBridge`` objects on one app, say).
        """
        if name == "aqueue":
            raise ConfigurationError("the aqueue protocol is the app's own: it cannot be replaced")
        registered = self._protocols.get(name)
        if registered is not None and registered != sender:
            raise ConfigurationError(
                f"protocol {name!r} already has a sender on this app: one sender per protocol "
                "(e.g. one CeleryBridge per app)"
            )
        self._protocols[name] = sender

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
        return await sending.send_signatures(self, signatures)

    # -- worker -------------------------------------------------------------------------

    def worker(self, **options: Any) -> Worker:
        """A worker for this app; ``async with app.worker(...):`` runs it in this loop.

        Options: ``queues``, ``exclude_queues``, ``concurrency``, ``prefetch``,
        ``hostname``, ``burst``, ``shutdown_timeout``, ``lease_seconds``,
        ``max_tasks_per_child``, ``max_memory_per_child``, ``task_events`` (see
        :class:`Worker`).
        """
        from .worker import Worker

        return Worker(self, **options)

    # -- monitoring events (aqueue/core/events.py) ------------------------------------------

    def events(
        self, since: float | None = None, types: str | Sequence[str] | None = None
    ) -> AsyncGenerator[Event, None]:
        """The monitoring event stream, live: ``async for event in app.events(): ...``.

        Args:
            since: unix time; the events still kept from then on come first (a monitor
                that starts late catches up), then live ones.
            types: only events whose type matches one of these globs (``"task-*"``).

        Breaking out of the loop ends the subscription (use ``contextlib.aclosing`` to end
        it at once rather than when the iterator is collected). The first iteration raises
        ``ConfigurationError`` when the broker carries no events (no topics).
        """
        return iterate(EventStream(self, since=since, types=types))

    def AsyncResult(
        self, task_id: str, *, parent: AsyncResult[Any] | GroupResult[Any] | None = None
    ) -> AsyncResult[Any]:
        """A handle on any task by id (results decode untyped); Celery's ``parent=`` too."""
        return AsyncResult(self, task_id, parent=parent)


def _checked(component: Any, protocol: type, what: str) -> Any:
    """``component`` if it implements ``protocol``, else a ConfigurationError naming why."""
    if not isinstance(component, protocol):
        members = [n for n in dir(protocol) if not n.startswith("_")]
        missing = [name for name in members if not hasattr(component, name)]
        raise ConfigurationError(
            f"{what}= takes a URL or an object implementing aqueue.core.protocols."
            f"{protocol.__name__}; {type(component).__name__} does not"
            + (f" (missing {', '.join(sorted(missing))})" if missing else "")
        )
    return component
