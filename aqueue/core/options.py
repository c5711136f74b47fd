"""Call options: one set of rules for every way a task is sent.

``delay`` / ``apply_async`` / ``options()`` / ``send_task`` / ``delay_many`` / ``apply_many``,
signatures (``add.s(...).set(...)``, ``add.signature(..., **options)``), ``send_many`` and the
workflow steps the engine publishes all go through the two functions here:

* :func:`check_options` validates what a caller gave and returns it in its stored form
  (times as unix seconds); a signature keeps that form, and it travels inside workflow
  messages. A bad option raises :class:`OptionError`, with the same text on every path.
* :class:`Plan` turns stored options, the task's defaults and the app's settings into the
  fields of the call's messages, once per call (a bulk call then spends per message only an
  id and its arguments).

The bounds are the ones a worker enforces when it decodes a message (``message.py``), so a
message aqueue sends is never refused for its envelope.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypedDict

from .errors import OptionError
from .message import (
    INTERNAL_HEADER_PREFIX,
    MAX_CALLER_HEADERS,
    MAX_HEADER_NAME_LENGTH,
    MAX_HEADER_VALUE_LENGTH,
    MAX_HEADERS,
    MAX_NAME_LENGTH,
    MAX_PRIORITY,
    MAX_SECONDS,
    MessageOut,
)
from .nodes import Node, TaskNode
from .routing import Exchange, router_of
from .serialization import SerializerName, check_serializer

if TYPE_CHECKING:
    from .canvas import Canvas
    from .config import Settings
    from .task import Task


class CallOptions(TypedDict, total=False):
    """Per-call options of ``apply_async`` / ``options()`` / signatures (Celery's names)."""

    #: seconds from now before the task may run
    countdown: float
    #: when the task may run (aware datetime, naive means UTC, or unix seconds)
    eta: datetime | float
    #: seconds from now, or a time, after which the task is not run (state REVOKED)
    expires: datetime | float
    #: the queue (a name in ``task_queues``, or created on use)
    queue: str
    #: the exchange to publish to, by name (declared in ``task_queues``); with ``routing_key``
    exchange: str
    #: the routing key (a topic exchange matches it against its queues' binding keys)
    routing_key: str
    #: 0..9, higher runs first within a queue, on every broker (docs/routing.md)
    priority: int
    #: the id to use; enqueueing an id that is still queued does nothing
    task_id: str
    headers: dict[str, str]
    serializer: str
    ignore_result: bool
    time_limit: float
    soft_time_limit: float
    parent_id: str
    root_id: str
    group_id: str
    #: applied with the result when the task succeeds
    link: Canvas[Any, Any] | list[Canvas[Any, Any]]
    #: applied with ``(task_id, error)`` when the task fails
    link_error: Canvas[Any, Any] | list[Canvas[Any, Any]]


OPTION_NAMES: Final = frozenset(CallOptions.__annotations__)
#: the stored form of ``expires`` given as a time (a number is seconds from sending)
_EXPIRES_AT: Final = "expires_at"
#: a task may be delayed (``countdown``, ``eta``) or expire at most this far ahead
MAX_DELAY: Final = MAX_SECONDS

_NO_OPTIONS: Mapping[str, Any] = {}


def check_options(options: Mapping[str, Any], *, stored: bool = False) -> dict[str, Any]:
    """Validate call options; return them in stored form (times as unix seconds).

    Args:
        options: as a caller gave them, or (``stored``) as :func:`check_options` returned
            them earlier (a signature's options, possibly read back from a message).

    Raises:
        OptionError: an unknown option, a value of the wrong type or out of range, or
            ``countdown`` together with ``eta``. Also a ``TypeError`` / ``ValueError``.
    """
    if not options:
        return {}
    out: dict[str, Any] = {}
    for name, value in options.items():
        check = _CHECKS.get(name)
        if check is None:
            if not (stored and name == _EXPIRES_AT):
                unknown = sorted(set(options) - OPTION_NAMES)
                raise OptionError(f"unknown call option(s): {', '.join(unknown)}")
            out[name] = _timestamp(value, "expires")
            continue
        check(name, value, out)
    if "countdown" in out and "eta" in out:
        raise OptionError("give countdown or eta, not both")
    return out


def merge_options(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Stored options ``base`` with the stored options ``override`` on top.

    A time given one way replaces the other way of giving it: ``countdown`` replaces an
    ``eta`` (and the reverse), any ``expires`` replaces an earlier one. Used by ``set()`` and
    wherever a canvas passes its options down to its tasks.
    """
    out = dict(base)
    if not override:
        return out
    if "eta" in override:
        out.pop("countdown", None)
    elif "countdown" in override:
        out.pop("eta", None)
    if "expires" in override or _EXPIRES_AT in override:
        out.pop("expires", None)
        out.pop(_EXPIRES_AT, None)
    out.update(override)
    return out


# -- checks, one per option: each stores the option's value in ``out`` -----------------------


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(f"{name} must be a number of seconds, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise OptionError(f"{name} must be a finite number of seconds, not {value!r}")
    return number


def _timestamp(value: Any, name: str) -> float:
    """A time as unix seconds: an aware datetime (naive means UTC) or a number."""
    if isinstance(value, datetime):
        at = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(f"{name} must be a datetime or unix seconds, not {type(value).__name__}")
    else:
        at = float(value)
    if not math.isfinite(at) or at < 0:
        raise OptionError(f"{name} must be a finite time after 1970, not {value!r}")
    if at > time.time() + MAX_DELAY:
        raise OptionError(f"{name} {value!r} is more than {_years(MAX_DELAY)} years ahead")
    return at


def _years(seconds: float) -> int:
    return round(seconds / (366 * 86400))


def _check_countdown(name: str, value: Any, out: dict[str, Any]) -> None:
    seconds = _number(name, value)
    if seconds > MAX_DELAY:
        raise OptionError(f"countdown {value!r} is more than {_years(MAX_DELAY)} years")
    out[name] = seconds


def _check_eta(name: str, value: Any, out: dict[str, Any]) -> None:
    out[name] = _timestamp(value, name)


def _check_expires(name: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, datetime):
        out[_EXPIRES_AT] = _timestamp(value, name)
        return
    seconds = _number(name, value)
    if seconds > MAX_DELAY:
        raise OptionError(f"expires {value!r} is more than {_years(MAX_DELAY)} years")
    out[name] = seconds


def _check_limit(name: str, value: Any, out: dict[str, Any]) -> None:
    seconds = _number(name, value)
    if not 0 < seconds <= MAX_SECONDS:
        raise OptionError(f"{name} must be more than 0 seconds (and at most ten years)")
    out[name] = seconds


def _check_name(name: str, value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, str):
        raise OptionError(f"{name} must be a str, not {type(value).__name__}")
    if not 0 < len(value) <= MAX_NAME_LENGTH:
        raise OptionError(f"{name} must be 1 to {MAX_NAME_LENGTH} characters long")
    out[name] = value


def _check_priority(name: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"priority must be an int from 0 to {MAX_PRIORITY}, not {value!r}")
    if not 0 <= value <= MAX_PRIORITY:
        raise OptionError(
            f"priority must be between 0 and {MAX_PRIORITY} (higher runs first), not {value}"
        )
    out[name] = value


def _check_exchange(name: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Exchange):  # stored by name: options travel inside messages
        value = value.name
    if not isinstance(value, str):
        raise OptionError(f"exchange must be an exchange name (str), not {type(value).__name__}")
    if not 0 < len(value.encode()) <= _MAX_AMQP_NAME:
        raise OptionError(f"exchange must be 1 to {_MAX_AMQP_NAME} bytes long")
    out[name] = value


def _check_routing_key(name: str, value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, str):
        raise OptionError(f"routing_key must be a str, not {type(value).__name__}")
    if len(value.encode()) > _MAX_AMQP_NAME:
        raise OptionError(f"routing_key must be at most {_MAX_AMQP_NAME} bytes long")
    out[name] = value


_MAX_AMQP_NAME: Final = 255


def _check_headers(name: str, value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, Mapping):
        raise OptionError(f"headers must be a dict of str to str, not {type(value).__name__}")
    if len(value) > MAX_CALLER_HEADERS:
        raise OptionError(
            f"headers: {len(value)} given; a call may set at most {MAX_CALLER_HEADERS} "
            f"(a message carries at most {MAX_HEADERS}, aqueue's own included)"
        )
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise OptionError(f"headers must map str to str; {key!r}: {item!r} does not")
        if key.startswith(INTERNAL_HEADER_PREFIX):
            raise OptionError(
                f"header {key!r}: names starting {INTERNAL_HEADER_PREFIX!r} are reserved for aqueue"
            )
        if len(key) > MAX_HEADER_NAME_LENGTH or len(item) > MAX_HEADER_VALUE_LENGTH:
            raise OptionError(
                f"header {key[:64]!r}: a name is at most {MAX_HEADER_NAME_LENGTH} characters, a "
                f"value at most {MAX_HEADER_VALUE_LENGTH} ({len(key)} and {len(item)} given)"
            )
    out[name] = dict(value)


def _check_serializer(name: str, value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, str):
        raise OptionError(f"serializer must be 'msgpack' or 'json', not {value!r}")
    try:
        out[name] = check_serializer(value)
    except Exception as exc:
        raise OptionError(str(exc)) from None


def _check_bool(name: str, value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be True or False, not {value!r}")
    out[name] = value


def _check_callbacks(name: str, value: Any, out: dict[str, Any]) -> None:
    items = value if isinstance(value, list | tuple) else [value]
    for item in items:
        if not callable(getattr(item, "to_node", None)):
            raise OptionError(
                f"{name} takes a signature or a canvas (add.s(...)), or a list of them; "
                f"not {type(item).__name__}"
            )
    out[name] = list(items)


_CHECKS: Final = {
    "countdown": _check_countdown,
    "eta": _check_eta,
    "expires": _check_expires,
    "queue": _check_name,
    "exchange": _check_exchange,
    "routing_key": _check_routing_key,
    "priority": _check_priority,
    "task_id": _check_name,
    "headers": _check_headers,
    "serializer": _check_serializer,
    "ignore_result": _check_bool,
    "time_limit": _check_limit,
    "soft_time_limit": _check_limit,
    "parent_id": _check_name,
    "root_id": _check_name,
    "group_id": _check_name,
    "link": _check_callbacks,
    "link_error": _check_callbacks,
}
assert set(_CHECKS) == OPTION_NAMES


# -- from options to message fields -----------------------------------------------------------


class Plan:
    """What a call's (checked) options decide for each of its messages, computed once.

    Precedence, for each field: the call's option, then the route ``task_routes`` gives
    (``queue``, ``exchange``, ``routing_key``, ``priority``, ``serializer``, ``expires``,
    time limits, ``ignore_result``), then the task's attribute (``queue``, ``priority``,
    ``serializer``, ``ignore_result``, ``expires``), then the app's setting. The queue and
    options then give the destination (:meth:`~aqueue.core.routing.Router.destination`).
    With no routing configured, none of that costs anything.
    """

    __slots__ = (
        "eta",
        "exchange",
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
        "routing_key",
        "serializer",
        "soft_time_limit",
        "task_id",
        "time_limit",
    )

    def __init__(
        self,
        conf: Settings,
        name: str,
        options: Mapping[str, Any],
        task: Task[Any, Any] | None,
        now: float | None = None,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """``options`` as :func:`check_options` returned them; ``args`` and ``kwargs`` are
        the call's, for router callables (a bulk call with such routers plans per item)."""
        now = time.time() if now is None else now
        router = router_of(conf)
        if router.routes:
            route = router.lookup(name, args, kwargs, options, task)
            if route:
                options = merge_options(route, options)
        get = options.get
        eta = get("eta")
        countdown = get("countdown")
        if countdown is not None:
            eta = now + countdown
        self.eta: float | None = eta if eta is not None and eta > now else None
        expires = get("expires", task.expires if task is not None else None)
        self.expires: float | None = (
            get(_EXPIRES_AT) if expires is None or _EXPIRES_AT in options else now + expires
        )
        queue: str = (
            get("queue") or (task.queue if task is not None else None) or conf.task_default_queue
        )
        exchange = get("exchange")
        routing_key = get("routing_key")
        if router.trivial and exchange is None and routing_key is None:
            self.queue: str = queue
            self.exchange: str = ""
            self.routing_key: str = ""
        else:
            self.queue, self.exchange, self.routing_key = router.destination(
                queue, exchange, routing_key
            )
        priority = get("priority")
        if priority is None:
            priority = task.priority if task is not None else None
            if priority is None:
                priority = conf.task_default_priority
        self.priority: int = priority
        serializer = get("serializer") or (task.serializer if task is not None else None)
        self.serializer: SerializerName = check_serializer(serializer or conf.task_serializer)
        self.name = name
        self.now = now
        self.task_id: str | None = get("task_id")
        self.headers: dict[str, str] = get("headers", _NO_HEADERS)
        self.ignore_result: bool = get(
            "ignore_result", task.ignore_result if task is not None else False
        )
        self.time_limit: float | None = get("time_limit")
        self.soft_time_limit: float | None = get("soft_time_limit")
        self.parent_id: str | None = get("parent_id")
        self.root_id: str | None = get("root_id")
        self.group_id: str | None = get("group_id")
        self.link: Sequence[Canvas[Any, Any]] = get("link", ())
        self.link_error: Sequence[Canvas[Any, Any]] = get("link_error", ())

    def message(
        self,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        headers: dict[str, str],
        *,
        link: tuple[Node, ...] | None = None,
        link_error: tuple[Node, ...] | None = None,
        chain: tuple[Node, ...] = (),
        chord: str | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
    ) -> MessageOut:
        """One message of the call.

        Callbacks given as options are frozen anew for each message (fresh ids); a workflow
        step passes its frozen ones (``link`` / ``link_error``) and where it sits
        (``chain``, ``chord``, ``parent_id``, ``root_id``; the call's own options win).
        """
        return MessageOut(
            link=_callback_nodes(self.link) if link is None else link,
            link_error=_callback_nodes(self.link_error) if link_error is None else link_error,
            id=task_id,
            task=self.name,
            queue=self.queue,
            exchange=self.exchange,
            routing_key=self.routing_key,
            args=args,
            kwargs=kwargs,
            headers=headers,
            eta=self.eta,
            expires=self.expires,
            priority=self.priority,
            time_limit=self.time_limit,
            soft_time_limit=self.soft_time_limit,
            ignore_result=self.ignore_result,
            parent_id=self.parent_id or parent_id,
            root_id=self.root_id or root_id,
            group_id=self.group_id,
            chain=chain,
            chord=chord,
            sent_at=self.now,
        )


_NO_HEADERS: dict[str, str] = {}


def _callback_nodes(callbacks: Sequence[Canvas[Any, Any]]) -> tuple[Node, ...]:
    """Callbacks given as options, as nodes with fresh ids (one set per message)."""
    if not callbacks:
        return ()
    nodes = (c.to_node() for c in callbacks)
    return tuple(n for n in nodes if n is not None)


def node_message(
    conf: Settings,
    node: TaskNode,
    task: Task[Any, Any] | None,
    *,
    prepend: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    chain: tuple[Node, ...] = (),
    chord: str | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
    now: float | None = None,
) -> tuple[MessageOut, SerializerName]:
    """The message of a frozen signature (a workflow step, or one of ``send_many``).

    ``prepend`` (the previous step's result, or a canvas's partial arguments) goes before
    the node's own arguments and ``kwargs`` over its keyword arguments, unless the node is
    immutable. Its options are checked again: they may come from another process's message.

    Raises:
        OptionError: a stored option is not valid.
    """
    merged = node.kwargs if node.immutable or not kwargs else {**node.kwargs, **kwargs}
    call_args = node.args if node.immutable or not prepend else (*prepend, *node.args)
    options = check_options(node.options, stored=True)
    plan = Plan(conf, node.task, options, task, now, args=call_args, kwargs=merged)
    msg = plan.message(
        node.id,
        call_args,
        merged,
        plan.headers,
        link=node.link,
        link_error=node.link_error,
        chain=chain,
        chord=chord,
        parent_id=parent_id,
        root_id=root_id or node.id,
    )
    return msg, plan.serializer
