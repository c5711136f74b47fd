"""Routing as Celery has it: ``task_routes``, ``task_queues`` and exchanges.

A call's destination is worked out once per send, by :class:`~aqueue.core.options.Plan`
(the one option resolver), from these pieces:

* :class:`Exchange`, :class:`Queue` and :class:`Broadcast`: what ``task_queues`` declares
  (kombu's names and arguments, the subset aqueue gives a meaning to);
* :class:`Router`: the compiled ``task_routes`` (exact names, glob patterns, regular
  expressions, router callables and dotted paths to them) and queue table of one
  :class:`~aqueue.core.config.Settings`, cached on it (:func:`router_of`) until a routing
  setting changes; with no routing configured it is *trivial* and a send pays nothing for it;
* :meth:`Router.destination`: a queue name and the ``exchange`` / ``routing_key`` options
  to where the message goes: straight to a queue (AMQP's default exchange) or to an
  exchange with a routing key;
* :meth:`Router.target`: on brokers without exchanges (memory, SQLite, Redis) an exchange
  and routing key resolved here, on the producer, to the one queue bound to match it; what
  only RabbitMQ can do (copy a message to several queues, broadcast) is refused with
  :class:`~aqueue.core.errors.RoutingError`.

Precedence, for every field a route may set: the call's option, then the route, then the
task's option, then the app's setting (docs/routing.md). Celery puts the task's option
above the route; aqueue lets configuration re-route a task without editing its code.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .errors import ConfigurationError, RoutingError

if TYPE_CHECKING:
    from .config import Settings
    from .message import MessageOut
    from .task import Task

__all__ = [
    "EXCHANGE_TYPES",
    "ROUTE_KEYS",
    "ROUTING_SETTINGS",
    "Broadcast",
    "Exchange",
    "Queue",
    "Router",
    "check_queues",
    "check_routes",
    "resolved",
    "router_of",
    "topic_matches",
]

#: the exchange types aqueue routes by (RabbitMQ's; emulated on the producer elsewhere)
EXCHANGE_TYPES: Final = ("direct", "topic", "fanout")
#: what a route may set; every other call option belongs to the call alone
ROUTE_KEYS: Final = frozenset(
    {
        "queue",
        "exchange",
        "exchange_type",
        "routing_key",
        "priority",
        "serializer",
        "expires",
        "time_limit",
        "soft_time_limit",
        "ignore_result",
    }
)
#: the settings a :class:`Router` is compiled from (changing one recompiles it)
ROUTING_SETTINGS: Final = (
    "task_routes",
    "task_queues",
    "task_create_missing_queues",
    "task_default_queue",
    "task_default_exchange",
    "task_default_exchange_type",
    "task_default_routing_key",
    "task_queue_max_priority",
)
#: AMQP names (exchanges, routing keys) are short strings
_MAX_AMQP_NAME: Final = 255
#: the queue arguments a :class:`Queue` accepts, kombu's spelling
_QUEUE_ARGUMENTS: Final = ("x-max-priority", "x-queue-type")


# -- what task_queues declares ----------------------------------------------------------------


class Exchange:
    """An exchange, as kombu's ``Exchange(name, type="direct")``.

    Args:
        name: its name (on RabbitMQ, declared as ``<prefix>.<name>``).
        type: ``"direct"`` (the routing key equals a queue's binding key), ``"topic"``
            (binding keys are patterns: ``*`` one word, ``#`` zero or more) or ``"fanout"``
            (every bound queue gets a copy; with :class:`Broadcast`, every worker).
        durable: survives a RabbitMQ restart (kombu's default, ``True``).
        auto_delete: RabbitMQ deletes it when its last queue is unbound.
    """

    __slots__ = ("auto_delete", "durable", "name", "type")

    def __init__(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        auto_delete: bool = False,
        **unsupported: Any,
    ) -> None:
        if unsupported:
            raise ConfigurationError(
                f"Exchange({name!r}): {', '.join(sorted(unsupported))} not supported "
                "(aqueue's Exchange takes name, type, durable, auto_delete)"
            )
        _check_amqp_name(name, "Exchange name", empty=False)
        if type not in EXCHANGE_TYPES:
            raise ConfigurationError(
                f"Exchange({name!r}): type must be direct, topic or fanout, not {type!r}"
                + (" (headers exchanges are not supported)" if type == "headers" else "")
            )
        for flag, value in (("durable", durable), ("auto_delete", auto_delete)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"Exchange({name!r}): {flag} must be True or False")
        self.name: str = name
        self.type: str = type
        self.durable = durable
        self.auto_delete = auto_delete

    def _key(self) -> tuple[str, str, bool, bool]:
        return (self.name, self.type, self.durable, self.auto_delete)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Exchange) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Exchange({self.name!r}, type={self.type!r})"


class Queue:
    """A queue, as kombu's ``Queue(name, exchange, routing_key, ...)``.

    Args:
        name: the queue's name (what workers consume: ``-Q name``).
        exchange: the exchange it is bound to (a name means a direct exchange); ``None``:
            the default exchange when ``task_default_exchange`` or a non-direct
            ``task_default_exchange_type`` is set, otherwise none (reached by name only).
        routing_key: its binding key (a pattern on a topic exchange); ``None``:
            ``task_default_routing_key``, else the queue's name.
        queue_arguments: kombu's spelling of ``x-max-priority`` and ``x-queue-type``
            (``"quorum"`` or ``"classic"``, RabbitMQ only); no other argument.
        max_priority: RabbitMQ's ``x-max-priority`` (1..255): the queue is declared as a
            classic queue that orders by priority (RabbitMQ 3's quorum queues do not).
    """

    __slots__ = ("broadcast", "exchange", "max_priority", "name", "queue_type", "routing_key")

    def __init__(
        self,
        name: str,
        exchange: Exchange | str | None = None,
        routing_key: str | None = None,
        *,
        queue_arguments: Mapping[str, Any] | None = None,
        max_priority: int | None = None,
        **unsupported: Any,
    ) -> None:
        if unsupported:
            raise ConfigurationError(
                f"Queue({name!r}): {', '.join(sorted(unsupported))} not supported (aqueue's "
                "Queue takes name, exchange, routing_key, queue_arguments, max_priority)"
            )
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"Queue name must be a non-empty str, not {name!r}")
        if isinstance(exchange, str):
            exchange = Exchange(exchange)
        elif exchange is not None and not isinstance(exchange, Exchange):
            raise ConfigurationError(
                f"Queue({name!r}): exchange must be an Exchange or a name, not "
                f"{type(exchange).__name__}"
            )
        if routing_key is not None:
            _check_amqp_name(routing_key, f"Queue({name!r}) routing_key")
        queue_type: str | None = None
        if queue_arguments:
            extra = sorted(set(queue_arguments) - set(_QUEUE_ARGUMENTS))
            if extra:
                raise ConfigurationError(
                    f"Queue({name!r}): queue argument(s) {', '.join(extra)} not supported "
                    f"(aqueue sets the others itself; it takes {', '.join(_QUEUE_ARGUMENTS)})"
                )
            if "x-max-priority" in queue_arguments:
                if max_priority is not None and max_priority != queue_arguments["x-max-priority"]:
                    raise ConfigurationError(
                        f"Queue({name!r}): max_priority and queue_arguments['x-max-priority'] "
                        "differ"
                    )
                max_priority = queue_arguments["x-max-priority"]
            queue_type = queue_arguments.get("x-queue-type")
            if queue_type not in (None, "quorum", "classic"):
                raise ConfigurationError(
                    f"Queue({name!r}): x-queue-type must be quorum or classic, not {queue_type!r}"
                )
        if max_priority is not None and (
            isinstance(max_priority, bool)
            or not isinstance(max_priority, int)
            or not 1 <= max_priority <= 255
        ):
            raise ConfigurationError(
                f"Queue({name!r}): max_priority must be an int from 1 to 255, not {max_priority!r}"
            )
        if max_priority is not None and queue_type == "quorum":
            raise ConfigurationError(
                f"Queue({name!r}): max_priority needs a classic queue (x-queue-type quorum given)"
            )
        self.name: str = name
        self.exchange: Exchange | None = exchange
        self.routing_key: str | None = routing_key
        self.max_priority: int | None = max_priority
        self.queue_type: str | None = queue_type
        #: every consuming worker gets its own copy (see :class:`Broadcast`)
        self.broadcast: bool = False

    def _key(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.exchange,
            self.routing_key,
            self.max_priority,
            self.queue_type,
            self.broadcast,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queue) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        kind = "Broadcast" if self.broadcast else "Queue"
        parts = [repr(self.name)]
        if self.exchange is not None:
            parts.append(f"exchange={self.exchange!r}")
        if self.routing_key is not None:
            parts.append(f"routing_key={self.routing_key!r}")
        if self.max_priority is not None:
            parts.append(f"max_priority={self.max_priority}")
        return f"{kind}({', '.join(parts)})"

    def bound_as(
        self, exchange: Exchange | None, routing_key: str | None, max_priority: int | None
    ) -> Queue:
        """A copy with the effective exchange, binding key and max priority filled in."""
        out = Queue.__new__(Queue)
        out.name = self.name
        out.exchange = exchange
        out.routing_key = routing_key
        out.max_priority = max_priority
        out.queue_type = self.queue_type
        out.broadcast = self.broadcast
        return out


class Broadcast(Queue):
    """Celery's broadcast queue: every worker consuming it runs each of its tasks once.

    ``Broadcast("reload")`` is a fanout exchange ``reload`` and, on RabbitMQ, one exclusive
    queue per consuming worker bound to it (deleted with the worker's connection). Workers
    consume it by its name (``-Q reload``); route tasks to it by that name or exchange.
    Only RabbitMQ copies messages to every worker: other brokers refuse it.
    """

    __slots__ = ()

    def __init__(
        self,
        name: str,
        queue: str | None = None,
        *,
        exchange: Exchange | str | None = None,
        **unsupported: Any,
    ) -> None:
        if queue is not None:
            raise ConfigurationError(
                f"Broadcast({name!r}, queue={queue!r}): aqueue names each worker's own queue"
            )
        if exchange is None:
            exchange = Exchange(name, "fanout")
        elif isinstance(exchange, str):
            exchange = Exchange(exchange, "fanout")
        if isinstance(exchange, Exchange) and exchange.type != "fanout":
            raise ConfigurationError(f"Broadcast({name!r}): its exchange must be a fanout one")
        super().__init__(name, exchange, **unsupported)
        self.broadcast = True


def _check_amqp_name(value: Any, what: str, *, empty: bool = True) -> None:
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} must be a str, not {type(value).__name__}")
    if (not empty and not value) or len(value.encode()) > _MAX_AMQP_NAME:
        raise ConfigurationError(
            f"{what} must be {'1' if not empty else '0'} to {_MAX_AMQP_NAME} bytes long"
        )


# -- settings: checked when set, compiled on first use ------------------------------------------


def check_queues(value: Any) -> list[Queue] | None:
    """``task_queues`` as a list of queues: Celery's list, tuple or dict forms.

    A dict maps names to a :class:`Queue` or to Celery's old options (``exchange``,
    ``exchange_type``, ``routing_key`` or ``binding_key``, ``queue_arguments``).

    Raises:
        ConfigurationError: anything else, naming the setting.
    """
    if value is None:
        return None
    if isinstance(value, Queue):
        value = [value]
    items: list[Queue] = []
    if isinstance(value, Mapping):
        for name, spec in value.items():
            if isinstance(spec, Queue):
                items.append(spec)
            elif isinstance(spec, Mapping):
                items.append(_queue_from_dict(name, spec))
            else:
                raise ConfigurationError(
                    f"setting task_queues: {name!r} must map to a Queue or a dict of options, "
                    f"not {type(spec).__name__}"
                )
    elif isinstance(value, list | tuple | set | frozenset):
        for spec in value:
            if not isinstance(spec, Queue):
                raise ConfigurationError(
                    "setting task_queues must be a list of Queue(...) (from aqueue import "
                    f"Queue, Exchange), not a list holding {type(spec).__name__}"
                )
            items.append(spec)
    else:
        raise ConfigurationError(
            "setting task_queues must be a list of Queue(...) or a dict of them, not "
            f"{type(value).__name__}"
        )
    seen: dict[str, Queue] = {}
    for q in items:
        if q.name in seen and seen[q.name] != q:
            raise ConfigurationError(
                f"setting task_queues declares queue {q.name!r} twice, differently: "
                f"{seen[q.name]!r} and {q!r}"
            )
        seen[q.name] = q
    return list(seen.values())


def _queue_from_dict(name: Any, spec: Mapping[str, Any]) -> Queue:
    known = {"exchange", "exchange_type", "routing_key", "binding_key", "queue_arguments"}
    extra = sorted(set(spec) - known)
    if extra:
        raise ConfigurationError(
            f"setting task_queues: queue {name!r} has unknown option(s) {', '.join(extra)} "
            f"(known: {', '.join(sorted(known))})"
        )
    exchange: Exchange | None = None
    if spec.get("exchange") is not None:
        ex = spec["exchange"]
        exchange = (
            ex if isinstance(ex, Exchange) else Exchange(ex, spec.get("exchange_type") or "direct")
        )
    return Queue(
        name,
        exchange,
        spec.get("routing_key", spec.get("binding_key")),
        queue_arguments=spec.get("queue_arguments"),
    )


#: one router: a compiled map, or a callable (name, args, kwargs, options, task=...)
RouterFn = Callable[..., Any]


def check_routes(value: Any) -> Any:
    """``task_routes`` checked for shape (dotted paths are imported on first use).

    A dict (exact names, ``*`` globs, compiled regular expressions as keys), a list of
    ``(pattern, route)`` pairs, a router callable, a dotted path to one, or a list or
    tuple of those, consulted in order.

    Raises:
        ConfigurationError: anything else, naming the setting.
    """
    if value is None:
        return None
    routers = list(value) if isinstance(value, list | tuple) and not _is_pairs(value) else [value]
    for router in routers:
        if isinstance(router, Mapping):
            for key, route in router.items():
                _check_map_entry(key, route)
        elif isinstance(router, list | tuple):
            for pair in router:
                _check_map_entry(*pair)
        elif not (isinstance(router, str) or callable(router)):
            raise ConfigurationError(
                "setting task_routes takes a dict, a list of (pattern, route) pairs, a router "
                f"function or its dotted path, or a list of those; not {type(router).__name__}"
            )
    return value


def _is_pairs(value: Sequence[Any]) -> bool:
    """Whether a list is Celery's ``[(pattern, route), ...]`` form (not a list of routers)."""
    return bool(value) and all(
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str | re.Pattern)
        and isinstance(item[1], str | Mapping | Queue)
        for item in value
    )


def _check_map_entry(key: Any, route: Any) -> None:
    if not isinstance(key, str | re.Pattern):
        raise ConfigurationError(
            f"setting task_routes: key {key!r} must be a task name, a glob or re.compile(...)"
        )
    if not isinstance(route, str | Mapping | Queue):
        raise ConfigurationError(
            f"setting task_routes: the route of {_show(key)} must be a queue name or a dict "
            f"of options, not {type(route).__name__}"
        )
    if isinstance(route, Mapping):
        extra = sorted(set(route) - ROUTE_KEYS)
        if extra:
            raise ConfigurationError(
                f"setting task_routes: the route of {_show(key)} has unknown key(s) "
                f"{', '.join(extra)} (a route may set {', '.join(sorted(ROUTE_KEYS))})"
            )


def _show(key: str | re.Pattern[str]) -> str:
    return f"re.compile({key.pattern!r})" if isinstance(key, re.Pattern) else repr(key)


class MapRoute:
    """A dict of routes, Celery's ``MapRoute``: exact names first, then the patterns in
    order (``*`` globs and regular expressions)."""

    __slots__ = ("exact", "patterns")

    def __init__(self, routes: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> None:
        pairs = routes.items() if isinstance(routes, Mapping) else routes
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[re.Pattern[str], Any]] = []
        for key, route in pairs:
            if isinstance(key, re.Pattern):
                self.patterns.append((key, route))
            elif "*" in key:
                self.patterns.append((re.compile(fnmatch.translate(key)), route))
            else:
                self.exact[key] = route

    def __call__(self, name: str, *_: Any, **__: Any) -> Any:
        route = self.exact.get(name)
        if route is not None:
            return route
        for pattern, route in self.patterns:
            if pattern.match(name):
                return route
        return None


def _import_router(path: str) -> RouterFn:
    """``"pkg.module.func"`` or ``"pkg.module:func"``: the router function it names."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        router = getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"setting task_routes: cannot import router {path!r} ({type(exc).__name__}: {exc})"
        ) from None
    if not callable(router):
        raise ConfigurationError(f"setting task_routes: {path!r} is not callable")
    return router  # type: ignore[no-any-return]


# -- topic matching -------------------------------------------------------------------------


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """Whether a topic exchange delivers ``routing_key`` to a queue bound with
    ``binding_key``: words are separated by dots, ``*`` stands for exactly one word and
    ``#`` for zero or more (AMQP 0-9-1, as RabbitMQ matches)."""
    pattern = binding_key.split(".")
    words = routing_key.split(".")
    # positions in ``words`` the pattern's prefix can end at, after each pattern word
    reach = {0}
    for part in pattern:
        if part == "#":
            reach = set(range(min(reach), len(words) + 1)) if reach else set()
        else:
            reach = {i + 1 for i in reach if i < len(words) and (part == "*" or words[i] == part)}
        if not reach:
            return False
    return len(words) in reach


# -- the compiled router ----------------------------------------------------------------------


class Router:
    """``task_routes`` and ``task_queues`` of one :class:`~aqueue.core.config.Settings`,
    compiled; see the module's docstring."""

    def __init__(self, conf: Settings) -> None:
        # options.py imports this module; its checks are reached at compile time only
        from .options import check_options

        self._check = check_options
        self.default_queue: str = conf.task_default_queue
        self.create_missing: bool = conf.task_create_missing_queues
        self.default_routing_key: str | None = conf.task_default_routing_key
        self.max_priority: int | None = conf.task_queue_max_priority
        configured = (
            conf.task_default_exchange is not None or conf.task_default_exchange_type != "direct"
        )
        #: applied to declared queues without an exchange, when the settings name one
        self.default_exchange: Exchange | None = (
            Exchange(
                conf.task_default_exchange or conf.task_default_queue,
                conf.task_default_exchange_type,
            )
            if configured
            else None
        )
        self.declared: bool = conf.task_queues is not None
        #: queue name -> the queue with its effective exchange, binding key, max priority
        self.queues: dict[str, Queue] = {}
        #: exchange name -> exchange (from the queues, routes and the default)
        self.exchanges: dict[str, Exchange] = {}
        if self.default_exchange is not None:
            self._add_exchange(self.default_exchange, "task_default_exchange")
        for q in check_queues(conf.task_queues) or [Queue(self.default_queue)]:
            self._add_queue(q)
        self.routes: list[RouterFn] = [self._router(r) for r in _router_list(conf.task_routes)]
        #: whether a router callable may answer differently per call (args, kwargs)
        self.dynamic = any(not isinstance(r, MapRoute) for r in self.routes)
        #: routes checked once: id(route object) -> its stored options
        self._static: dict[int, dict[str, Any]] = {}
        for r in self.routes:
            if isinstance(r, MapRoute):
                for route in (*r.exact.values(), *(v for _, v in r.patterns)):
                    self._static[id(route)] = self._route_options(route, "task_routes")
        #: nothing configured: a call's queue is its own, the task's or the default
        self.trivial = (
            not self.routes
            and not self.declared
            and self.create_missing
            and self.default_exchange is None
            and self.max_priority is None
        )
        self._targets: dict[tuple[str, str], tuple[Queue, ...]] = {}
        #: queues created on use (task_create_missing_queues)
        self._missing: dict[str, Queue] = {}

    def __repr__(self) -> str:
        return f"<Router queues={sorted(self.queues)} routes={len(self.routes)}>"

    # -- building -----------------------------------------------------------------------

    def _router(self, router: Any) -> RouterFn:
        if isinstance(router, Mapping | list | tuple):
            return MapRoute(router)
        if isinstance(router, str):
            return _import_router(router)
        return router  # type: ignore[no-any-return]

    def _add_exchange(self, exchange: Exchange, where: str) -> None:
        known = self.exchanges.get(exchange.name)
        if known is not None and known != exchange:
            raise ConfigurationError(
                f"exchange {exchange.name!r} is declared twice, differently: {known!r} and "
                f"{exchange!r} ({where})"
            )
        self.exchanges[exchange.name] = exchange

    def _add_queue(self, q: Queue) -> Queue:
        exchange = q.exchange or self.default_exchange
        key = None
        if exchange is not None:
            self._add_exchange(exchange, f"queue {q.name!r}")
            key = q.routing_key or self.default_routing_key or q.name
        effective = q.bound_as(exchange, key, q.max_priority or self.max_priority)
        self.queues[q.name] = effective
        self._targets = {}
        return effective

    # -- looking up ---------------------------------------------------------------------

    def spec(self, queue: str) -> Queue | None:
        """The queue ``queue`` as declared (with its effective exchange and binding key),
        or as created for it when missing; ``None`` if it is missing and may not be."""
        q = self.queues.get(queue) or self._missing.get(queue)
        if q is not None:
            return q
        if not self.create_missing:
            return None
        q = self._missing[queue] = Queue(queue).bound_as(None, None, self.max_priority)
        return q

    def bound(self, exchange: str) -> list[Queue]:
        """The declared queues bound to ``exchange``."""
        return [
            q
            for q in self.queues.values()
            if q.exchange is not None and q.exchange.name == exchange
        ]

    def _matches(self, exchange: str, routing_key: str) -> tuple[Queue, ...]:
        """The declared queues ``exchange`` delivers ``routing_key`` to (cached)."""
        matches = self._targets.get((exchange, routing_key))
        if matches is None:
            ex = self.exchanges[exchange]
            matches = tuple(
                q
                for q in self.bound(exchange)
                if ex.type == "fanout"
                or (ex.type == "direct" and q.routing_key == routing_key)
                or (ex.type == "topic" and topic_matches(q.routing_key or "", routing_key))
            )
            self._targets[(exchange, routing_key)] = matches
        return matches

    def copies(self, exchange: str, routing_key: str) -> bool:
        """Whether a message published to ``exchange`` with ``routing_key`` was copied to
        several queues (a fanout exchange, or several bindings match): every copy, the same
        task id, runs once, and another copy's finished record does not stop it."""
        ex = self.exchanges.get(exchange) if exchange else None
        if ex is None:
            return False
        return ex.type == "fanout" or len(self._matches(exchange, routing_key)) > 1

    def consumed_by_default(self) -> list[str]:
        """The queues a worker given none consumes: every declared one (Celery's rule),
        else the default queue."""
        return list(self.queues) if self.declared else [self.default_queue]

    def lookup(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
        task: Task[Any, Any] | None,
    ) -> dict[str, Any] | None:
        """The first route an entry of ``task_routes`` gives for this call, as stored
        call options (``None``: no router answered)."""
        for router in self.routes:
            if isinstance(router, MapRoute):
                route = router(name)
                if route is not None:
                    return self._static[id(route)]
                continue
            try:
                route = router(name, tuple(args), dict(kwargs or {}), dict(options), task=task)
            except Exception as exc:
                raise RoutingError(
                    f"router {getattr(router, '__qualname__', router)!r} of task_routes raised "
                    f"for task {name} ({type(exc).__name__}: {exc})"
                ) from exc
            if route is not None:
                return self._route_options(
                    route, f"router {getattr(router, '__qualname__', router)!r}"
                )
        return None

    def _route_options(self, route: Any, where: str) -> dict[str, Any]:
        """A route as stored call options: a queue name, a :class:`Queue` or a dict."""
        if isinstance(route, str | Queue):
            route = {"queue": route}
        elif not isinstance(route, Mapping):
            raise RoutingError(
                f"{where} returned {type(route).__name__}: a route is a queue name, a Queue, "
                "a dict of options or None"
            )
        route = dict(route)
        extra = sorted(set(route) - ROUTE_KEYS)
        if extra:
            raise RoutingError(
                f"{where}: a route has unknown key(s) {', '.join(extra)} "
                f"(a route may set {', '.join(sorted(ROUTE_KEYS))})"
            )
        queue = route.get("queue")
        if isinstance(queue, Queue):
            known = self.queues.get(queue.name)
            if known is None:
                self._add_queue(queue)
            route["queue"] = queue.name
        exchange = route.get("exchange")
        exchange_type = route.pop("exchange_type", None)
        if isinstance(exchange, Exchange):
            self._add_exchange(exchange, where)
            route["exchange"] = exchange.name
        elif isinstance(exchange, str) and exchange_type is not None:
            self._add_exchange(Exchange(exchange, exchange_type), where)
        elif exchange_type is not None:
            raise RoutingError(f"{where}: exchange_type without exchange")
        try:
            return self._check(route)
        except Exception as exc:
            raise RoutingError(f"{where}: {exc}") from None

    # -- destinations -------------------------------------------------------------------

    def destination(
        self, queue: str, exchange: str | None, routing_key: str | None
    ) -> tuple[str, str, str]:
        """Where a message for ``queue`` (with these options) goes: ``(queue, exchange,
        routing_key)``, the exchange ``""`` when it goes straight to the queue.

        Celery's rule: a direct exchange is skipped (the message goes to the queue by name)
        unless the call or its route names both the exchange and the routing key; a topic
        or fanout exchange gets the given routing key, else the queue's binding key.

        Raises:
            RoutingError: the queue is not declared and ``task_create_missing_queues`` is
                off, or the exchange is declared nowhere.
        """
        spec = self.spec(queue)
        if spec is None:
            raise RoutingError(
                f"queue {queue!r} is not in task_queues and task_create_missing_queues is False "
                f"(declared: {', '.join(sorted(self.queues))})"
            )
        if exchange:
            ex = self.exchanges.get(exchange)
            if ex is None:
                raise RoutingError(
                    f"exchange {exchange!r} is not declared: bind a queue to it in task_queues "
                    f"(Queue(..., exchange=Exchange({exchange!r}, type=...))) or set "
                    "task_default_exchange"
                )
        else:
            ex = spec.exchange
        if ex is None or (ex.type == "direct" and not (exchange and routing_key)):
            return queue, "", routing_key or ""
        key = routing_key or spec.routing_key or self.default_routing_key or queue
        return queue, ex.name, key

    def target(self, exchange: str, routing_key: str, broker: str) -> str:
        """The one queue a broker without exchanges (named ``broker`` in errors) stores a
        message for ``exchange`` / ``routing_key`` in: the declared queue bound to match.

        Raises:
            RoutingError: no queue matches, several do (only RabbitMQ copies a message),
                or the exchange broadcasts.
        """
        matches = self._matches(exchange, routing_key)
        ex = self.exchanges[exchange]
        if ex.type == "fanout" or any(q.broadcast for q in matches):
            raise RoutingError(
                f"exchange {exchange!r} is a fanout (broadcast) exchange: only RabbitMQ "
                f"delivers a copy to every bound queue and worker; {broker} cannot"
            )
        if len(matches) == 1:
            return matches[0].name
        if not matches:
            raise RoutingError(
                f"no queue in task_queues is bound to {ex.type} exchange {exchange!r} with a "
                f"key matching routing key {routing_key!r}: the message would be lost"
            )
        raise RoutingError(
            f"routing key {routing_key!r} on {ex.type} exchange {exchange!r} matches queues "
            f"{', '.join(q.name for q in matches)}: only RabbitMQ copies a message to several "
            f"queues; {broker} stores it in one"
        )

    # -- the worker's view ----------------------------------------------------------------

    def named(self, tasks: Iterable[Task[Any, Any]]) -> list[str]:
        """Every queue the configuration sends to, the default first: the queues of
        ``task_queues``, the tasks' ``queue`` and the static routes' queues (router
        callables cannot be read; call options can name any queue)."""
        names = dict.fromkeys([self.default_queue, *self.queues])
        extra = {t.queue for t in tasks if t.queue}
        extra.update(o["queue"] for o in self._static.values() if o.get("queue"))
        names.update(dict.fromkeys(sorted(extra - names.keys())))
        return list(names)

    def untargeted(self, queues: Iterable[str], tasks: Iterable[Task[Any, Any]]) -> list[str]:
        """Of ``queues``, those nothing sends to by configuration (see :meth:`named`)."""
        targeted = set(self.named(tasks))
        return [q for q in queues if q not in targeted]


def _router_list(routes: Any) -> list[Any]:
    if routes is None:
        return []
    check_routes(routes)
    if isinstance(routes, list | tuple) and not _is_pairs(routes):
        return list(routes)
    return [routes]


def router_of(conf: Settings) -> Router:
    """The compiled router of ``conf``, cached on it until a routing setting changes."""
    router: Router | None = conf.router
    if router is None:
        router = conf.router = Router(conf)
    return router


def resolved(router: Router, messages: list[MessageOut], broker: str) -> list[MessageOut]:
    """``messages`` as a broker without exchanges takes them: each one routed to an
    exchange re-aimed at the one queue its routing key reaches (:meth:`Router.target`).

    Raises:
        RoutingError: a message that only RabbitMQ could deliver; nothing was sent.
    """
    out: list[MessageOut] = []
    for m in messages:
        if m.exchange:
            queue = router.target(m.exchange, m.routing_key, broker)
            m = msgspec.structs.replace(m, queue=queue, exchange="")
        out.append(m)
    return out
