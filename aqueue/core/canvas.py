"""The canvas, Celery's vocabulary for task calls as data: signature, chain, group, chord.

These are plain data. :meth:`Canvas.to_node` gives the wire form (``nodes.py``) with fresh
task ids; :meth:`Canvas.freeze` first pins the ids, as Celery's ``freeze()`` does, so the
ids it shows are the ones a later ``delay()`` uses. Applying a chain, group or chord is the
workflow engine's business (``aqueue.workflows``), which core reaches through
``app.workflows`` (the :class:`~aqueue.core.protocols.Workflows` protocol) and never
imports. A lone signature is sent by core itself, exactly as ``app.send_many`` sends it.

Every canvas has Celery's signature API: ``set(**options)``, ``link``, ``link_error``,
``on_error``, ``delay``, ``apply_async(args, kwargs, **options)`` and the call form. What a
composite does with options and callbacks, as in Celery:

========  ==========================  =================  ==============================
canvas    call options (``set``)      ``link``           ``link_error``
========  ==========================  =================  ==============================
chain     its first step              its last step      every step
group     every member                once, all done     every member (once per failure)
chord     header (body: no delay)     its body           its body
========  ==========================  =================  ==============================

``task_id`` names the result the canvas returns: a chain's last step, a chord's body, a
group's id. Each canvas is typed by its value ``R`` and by the handle applying it returns
``H``: ``AsyncResult[R]``, or ``GroupResult`` for a group (and a chain or chord ending in
one).
"""

from __future__ import annotations

import contextvars
import copy
import itertools
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    NamedTuple,
    NoReturn,
    Self,
    TypeVar,
    cast,
    overload,
)

from .awaiting import Awaiting, awaiting
from .errors import ConfigurationError, Unsupported, eager_refused
from .nodes import ChainNode, ChordNode, GroupNode, Node, TaskNode, chord_members
from .options import check_options, merge_options
from .result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from .app import App
    from .blocking import SyncCanvas
    from .task import Task

R = TypeVar("R")
S = TypeVar("S")
H = TypeVar("H")
H2 = TypeVar("H2")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
H1 = TypeVar("H1")
H3 = TypeVar("H3")
H4 = TypeVar("H4")

#: built-in tasks the canvas refers to by name (``aqueue.workflows`` registers them)
MAP_TASK: Final = "aqueue.map"
STARMAP_TASK: Final = "aqueue.starmap"

#: options that delay a call: a chord's body is never delayed by its own chord's options
_DELAYS: Final = ("countdown", "eta")


#: where :func:`new_id` takes ids from while :func:`derived_node` builds a node
_derived_ids: contextvars.ContextVar[Iterator[str] | None] = contextvars.ContextVar(
    "aqueue_derived_ids", default=None
)
#: the namespace of ids derived from a task id (``uuid5``)
_DERIVED = uuid.UUID("6b1d3c0e-6a4f-4f8e-9d3a-2f1c8e5b7a90")


def new_id() -> str:
    """A fresh task id (inside :func:`derived_node`: the next derived one)."""
    derived = _derived_ids.get()
    if derived is not None:
        return next(derived)
    return str(uuid.uuid4())


def derived_node(canvas: Canvas[Any, Any], seed: str) -> Node:
    """``canvas``'s wire form with every id not pinned derived from ``seed``.

    A worker that applies a canvas on a task's behalf (``self.replace()``,
    ``self.add_to_chord()``) derives the ids from the task's id, so the task running again
    (its worker died before acking) sends the same ids, which run once.

    Raises:
        ValueError: the canvas has no task to run (an empty chain).
    """
    ids = (str(uuid.uuid5(_DERIVED, f"{seed}/{n}")) for n in itertools.count())
    token = _derived_ids.set(ids)
    try:
        node = canvas.to_node()
    finally:
        _derived_ids.reset(token)
    if node is None:
        raise ValueError(f"{canvas!r} has no task to run")
    return node


class _Push(NamedTuple):
    """What an enclosing canvas (or ``apply_async``'s options) gives what it contains."""

    #: call options, stored form (``check_options``)
    options: Mapping[str, Any]
    #: the id of the result the canvas returns
    task_id: str | None
    link: tuple[Canvas[Any, Any], ...]
    link_error: tuple[Canvas[Any, Any], ...]


_NO_PUSH: Final = _Push({}, None, (), ())


def _push_of(options: Mapping[str, Any]) -> _Push:
    """``apply_async``'s (checked) options as what the canvas passes down."""
    if not options:
        return _NO_PUSH
    rest = dict(options)
    task_id = rest.pop("task_id", None)
    link = tuple(rest.pop("link", ()))
    link_error = tuple(rest.pop("link_error", ()))
    return _Push(rest, task_id, link, link_error)


def _own(options: Mapping[str, Any]) -> dict[str, Any]:
    """A canvas's options without ``task_id`` (which names its result, not its tasks)."""
    return {k: v for k, v in options.items() if k != "task_id"}


def _nodes(canvases: Iterable[Canvas[Any, Any]]) -> tuple[Node, ...]:
    """Callbacks as nodes, fresh ids each time (an empty canvas is nothing to call)."""
    out = []
    for c in canvases:
        node = c.to_node()
        if node is not None:
            out.append(node)
    return tuple(out)


class Canvas(Generic[R, H]):
    """Anything that can be applied: a signature, chain, group or chord.

    ``R`` is its value, ``H`` the handle applying it returns (``await canvas.delay()``).
    """

    app: App | None
    #: call options, stored form (see :mod:`aqueue.core.options`)
    options: dict[str, Any]
    #: callbacks applied with the value on success
    links: list[Canvas[Any, Any]]
    #: callbacks applied with ``(task_id, error)`` (or ``(task_id)``) on failure
    errbacks: list[Canvas[Any, Any]]

    def _start(self, app: App | None) -> None:
        self.app = app
        self.options = {}
        self.links = []
        self.errbacks = []

    # -- Celery's signature API -----------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The ``task_id`` option: the id of the result this canvas returns, if pinned."""
        task_id = self.options.get("task_id")
        return task_id if isinstance(task_id, str) else None

    def set(self, **options: Any) -> Self:
        """Set call options (Celery's names), checked as ``apply_async`` checks them.

        ``link`` / ``link_error`` add callbacks, as :meth:`link` and :meth:`link_error` do.
        Returns the canvas itself.
        """
        checked = check_options(options)
        for callback in checked.pop("link", ()):
            self.link(callback)
        for errback in checked.pop("link_error", ()):
            self.link_error(errback)
        self.options = merge_options(self.options, checked)
        return self

    def link(self, callback: Canvas[Any, Any]) -> Self:
        """Apply ``callback`` with this canvas's value when it succeeds."""
        self.links.append(_as_canvas(callback))
        return self

    def link_error(self, errback: Canvas[Any, Any]) -> Self:
        """Apply ``errback`` with ``(task_id, error)`` when a task of this canvas fails.

        An errback task that takes one argument gets ``(task_id)`` only.
        """
        self.errbacks.append(_as_canvas(errback))
        return self

    def on_error(self, errback: Canvas[Any, Any]) -> Self:
        """:meth:`link_error`, returning the canvas: ``add.s(1, 2).on_error(log.s())``."""
        return self.link_error(errback)

    def __or__(self, other: Canvas[S, H2]) -> Chain[S, H2]:
        return Chain(self, other)

    def apply(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Celery's eager ``apply()``: refused with :class:`Unsupported`, naming what to use.

        aqueue has no eager mode: apply the canvas on ``memory://`` with an embedded worker.
        """
        raise eager_refused(f"{type(self).__name__.lower()}.apply()")

    def stamp(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Celery's stamping: refused with :class:`Unsupported` (docs/workflows.md)."""
        raise Unsupported(
            "stamping (canvas.stamp(), StampingVisitor) is not supported: give each "
            "signature its headers with .set(headers={...}); they reach self.request.headers"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON when the arguments are); ``signature(data, app=app)`` rebuilds it."""
        raise NotImplementedError

    def _dict_options(self) -> dict[str, Any]:
        """Options as ``to_dict`` writes them: callbacks under ``link`` / ``link_error``."""
        options: dict[str, Any] = dict(self.options)
        if self.links:
            options["link"] = [c.to_dict() for c in self.links]
        if self.errbacks:
            options["link_error"] = [c.to_dict() for c in self.errbacks]
        return options

    def _composite(self, kind: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "task": f"aqueue.{kind}",
            "subtask_type": kind,
            "args": [],
            "kwargs": kwargs,
            "options": self._dict_options(),
            "immutable": False,
        }

    # -- ids and the wire form -----------------------------------------------------------

    def to_node(self) -> Node | None:
        """The wire form, with fresh ids for every task whose id is not pinned.

        ``None`` for an empty canvas (a chain without steps): nothing to run.
        """
        return self._node(_NO_PUSH)

    def freeze(self) -> Node:
        """Pin every task id (Celery's ``freeze()``) and return the wire form.

        A frozen canvas sends the same ids every time it is applied; aqueue runs a task id
        once, so applying it again gives the results of the first run.
        """
        self._pin()
        node = self.to_node()
        if node is None:
            raise ValueError(f"{self!r} has no task to run")
        return node

    def _node(self, push: _Push) -> Node | None:
        raise NotImplementedError

    def _pin(self) -> None:
        raise NotImplementedError

    def _is_empty(self) -> bool:
        """Whether applying it runs nothing (an empty chain or group is skipped where it sits)."""
        return False

    def _require_app(self) -> App:
        if self.app is None:
            raise ConfigurationError(
                "this canvas has no app: build it with task.s(...), app.signature(...), "
                "signature(name, app=app) or group([...], app=app)"
            )
        return self.app

    # -- applying ------------------------------------------------------------------------

    @property
    def sync(self) -> SyncCanvas[R, H]:
        """The blocking spelling for code outside any event loop (docs/sync.md):
        ``(div.s(4, 2) | mul.s(3)).sync.apply_async().get(timeout=10)``."""
        from .blocking import SyncCanvas

        return SyncCanvas(self)

    def delay(self, *args: Any, **kwargs: Any) -> Awaiting[H]:
        """Apply it; ``args`` go before the first tasks' own arguments, ``kwargs`` over theirs."""
        return awaiting(self._apply(args, kwargs, {}), self, "delay")

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Awaiting[H]:
        """Apply it with partial arguments and call options (see the module docstring)."""
        return awaiting(
            self._apply(tuple(args or ()), dict(kwargs or {}), options), self, "apply_async"
        )

    async def _apply(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], options: Mapping[str, Any]
    ) -> H:
        app = self._require_app()
        node = self._node(_push_of(check_options(options)))
        if node is None:
            raise ValueError(f"{self!r} has no task to run")
        handle = await app.workflows.apply(node, args=args, kwargs=kwargs)
        return cast(H, handle)


class Signature(Canvas[R, AsyncResult[R]]):
    """A task name with arguments and options, applied later or inside a workflow.

    ``add.s(2, 2)`` (or ``add.signature((2, 2), countdown=5)``) builds one; ``add.si(...)``
    an immutable one (the parent's result is not prepended in a chain). Partial: ``add.s(2)``
    then ``await sig.delay(4)`` calls ``add(4, 2)``: as in Celery, extra arguments go first.
    Options are Celery's call options, checked as ``apply_async`` checks them
    (:mod:`aqueue.core.options`).
    """

    def __init__(
        self,
        task: str | Task[Any, R],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: App | None = None,
        immutable: bool = False,
        **options: Any,
    ) -> None:
        if isinstance(task, str):
            self.name = task
            self.task: Task[Any, R] | None = app.tasks.get(task) if app else None
        else:
            self.name, self.task = task.name, task
            app = app or task.app
        self._start(app)
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.immutable = immutable
        if options:
            self.set(**options)

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.name}.{'si' if self.immutable else 's'}({args})"

    def clone(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature[R]:
        """A copy with ``args`` before its own, ``kwargs`` over its own, options set.

        An immutable signature keeps its own arguments (Celery's rule).
        """
        twin = copy.copy(self)
        if not self.immutable:
            twin.args = (*args, *self.args)
            twin.kwargs = {**self.kwargs, **(kwargs or {})}
        twin.options = dict(self.options)
        twin.links, twin.errbacks = list(self.links), list(self.errbacks)
        return twin.set(**options) if options else twin

    def _pin(self) -> None:
        if "task_id" not in self.options:
            self.options["task_id"] = new_id()

    def _node(self, push: _Push) -> TaskNode:
        own = self.options
        return TaskNode(
            id=push.task_id or own.get("task_id") or new_id(),
            task=self.name,
            args=self.args,
            kwargs=self.kwargs,
            options=merge_options(_own(own), push.options),
            immutable=self.immutable,
            link=_nodes([*self.links, *push.link]),
            link_error=_nodes([*self.errbacks, *push.link_error]),
        )

    def to_node(self) -> TaskNode:
        """The wire form, with a fresh id unless ``task_id`` is pinned."""
        return self._node(_NO_PUSH)

    def freeze(self) -> TaskNode:
        """Pin the task id (Celery's ``freeze()``): ``sig.freeze().id`` is the id sent later."""
        self._pin()
        return self.to_node()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON when the arguments are); ``signature(data, app=app)`` rebuilds it."""
        return {
            "task": self.name,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": self._dict_options(),
            "immutable": self.immutable,
        }

    async def _apply(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], options: Mapping[str, Any]
    ) -> AsyncResult[R]:
        sig = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        [result] = await sig._require_app().send_many([sig])
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Awaiting[AsyncResult[R]]:
        """Celery's ``sig()``: here the same as ``delay`` (it sends; it does not run here)."""
        return awaiting(self._apply(args, kwargs, {}), self, "delay")


@overload
def signature(
    task: str | Task[Any, R],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    app: App | None = None,
    immutable: bool = False,
    **options: Any,
) -> Signature[R]: ...
@overload
def signature(task: Mapping[str, Any], *, app: App | None = None) -> Canvas[Any, Any]: ...
def signature(
    task: str | Task[Any, R] | Mapping[str, Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    app: App | None = None,
    immutable: bool = False,
    **options: Any,
) -> Canvas[Any, Any]:
    """A signature by task name (``signature("proj.tasks.add", args=(2, 2), app=app)``).

    Given a canvas's ``to_dict()`` (e.g. after JSON), rebuilds that canvas: a signature,
    chain, group or chord, with its options and callbacks.
    """
    if isinstance(task, Mapping):
        return _from_dict(task, app)
    return Signature(task, args, kwargs, app=app, immutable=immutable, **options)


def _from_dict(data: Mapping[str, Any], app: App | None) -> Canvas[Any, Any]:
    """The canvas ``to_dict()`` described."""
    kind = data.get("subtask_type")
    body = data.get("kwargs") or {}
    canvas: Canvas[Any, Any]
    if kind == "chain":
        canvas = Chain(*(_from_dict(t, app) for t in body["tasks"]), app=app)
    elif kind == "group":
        canvas = Group(*(_from_dict(t, app) for t in body["tasks"]), app=app)
    elif kind == "chord":
        header = _from_dict(body["header"], app)
        canvas = Chord(header, _from_dict(body["body"], app), timeout=body.get("timeout"), app=app)
    elif kind is None:
        canvas = Signature(
            data["task"],
            data.get("args", ()),
            body,
            app=app,
            immutable=data.get("immutable", False),
        )
    else:
        raise ValueError(f"unknown canvas type {kind!r}")
    options = dict(data.get("options") or {})
    for callback in options.pop("link", ()):
        canvas.link(_from_dict(callback, app))
    for errback in options.pop("link_error", ()):
        canvas.link_error(_from_dict(errback, app))
    canvas.options = check_options(options, stored=True)
    return canvas


def _as_canvas(item: Any) -> Canvas[Any, Any]:
    """A canvas, or a task (Celery lets a task stand for its signature without arguments)."""
    if isinstance(item, Canvas):
        return item
    from .task import Task  # a cycle at import time only: task.py builds signatures

    if isinstance(item, Task):
        return item.s()
    raise TypeError(
        f"expected a signature, a task or a canvas (add.s(2, 2), chain, group, chord); "
        f"got {type(item).__name__}"
    )


def _canvases(items: Iterable[Any]) -> list[Canvas[Any, Any]]:
    """Members given as canvases, tasks, or iterables of them."""
    out: list[Canvas[Any, Any]] = []
    for item in items:
        if isinstance(item, Canvas) or not isinstance(item, Iterable):
            out.append(_as_canvas(item))
        else:
            out += _canvases(item)
    return out


def _app_of(parts: Iterable[Canvas[Any, Any]]) -> App | None:
    return next((p.app for p in parts if p.app is not None), None)


def _plain(canvas: Canvas[Any, Any]) -> bool:
    """No options or callbacks of its own: its steps can join an enclosing chain."""
    return not (canvas.options or canvas.links or canvas.errbacks)


class Chain(Canvas[R, H]):
    """Steps run in order; each step's result is prepended to the next step's arguments.

    A group followed by a step becomes a chord with that step as its body (Celery's
    upgrade), wherever it sits. Empty chains are skipped, and so are empty groups after a
    step; a chain that starts with an empty group gives the next step ``[]``.
    """

    def __init__(
        self, *steps: Canvas[Any, Any] | Iterable[Canvas[Any, Any]], app: App | None = None
    ) -> None:
        flat: list[Canvas[Any, Any]] = []
        for step in _canvases(steps):
            if isinstance(step, Chain) and _plain(step):
                flat.extend(step.steps)
            else:
                flat.append(step)
        self.steps: list[Canvas[Any, Any]] = flat
        self._start(app or _app_of(flat))

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.steps)) if self.steps else "chain()"

    def __or__(self, other: Canvas[S, H2]) -> Chain[S, H2]:
        if _plain(self):
            return Chain(*self.steps, other)
        return Chain(self, other)

    def _is_empty(self) -> bool:
        return all(s._is_empty() for s in self.steps) and not (
            len(self.steps) > 1 and isinstance(self.steps[0], Group)
        )

    def _pin(self) -> None:
        for step in self.steps:
            step._pin()

    def _node(self, push: _Push) -> Node | None:
        live: list[Canvas[Any, Any]] = []
        for step in self.steps:
            if not step._is_empty():
                live.append(step)
            elif not live and isinstance(step, Group):
                # a leading empty group stays: the next step gets [] (Celery's group() | task)
                live.append(step)
        if not live:
            return None
        first = merge_options(_own(self.options), push.options)
        errbacks = (*self.errbacks, *push.link_error)
        last = len(live) - 1
        nodes: list[Node] = []
        for i, step in enumerate(live):
            node = step._node(
                _Push(
                    first if i == 0 else {},
                    (push.task_id or self.id) if i == last else None,
                    (*self.links, *push.link) if i == last else (),
                    errbacks,
                )
            )
            if isinstance(node, ChainNode):
                nodes.extend(node.steps)
            elif node is not None:
                nodes.append(node)
        return nodes[0] if len(nodes) == 1 else ChainNode(steps=tuple(nodes))

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``signature(data, app=app)`` rebuilds the chain."""
        return self._composite("chain", {"tasks": [s.to_dict() for s in self.steps]})

    def __call__(self, *args: Any, **kwargs: Any) -> Awaiting[H]:
        """Celery's ``chain(...)()``: ``await chain(add.s(2, 2), add.s(4))()``."""
        return awaiting(self._apply(args, kwargs, {}), self, "__call__")


class Group(Canvas[list[R], GroupResult[R]]):
    """Members run in parallel; the value is the list of their values, in order.

    A group directly inside a group joins it member by member (Celery unrolls it); a group
    ending a chain that is a member keeps its own list: ``group(a, chain(b, group(c, d)))``
    gives ``[a, [c, d]]``.
    """

    def __init__(
        self,
        *members: Canvas[Any, Any] | Iterable[Canvas[Any, Any]],
        app: App | None = None,
    ) -> None:
        self.members = _canvases(members)
        self._start(app or _app_of(self.members))

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.members))})"

    def __len__(self) -> int:
        return len(self.members)

    def _is_empty(self) -> bool:
        return all(m._is_empty() for m in self.members)

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> Self:
        """Spread the members out in time (Celery's ``skew``): returns the group itself.

        Member ``i`` gets ``countdown=start + i * step``; past ``stop`` the members keep the
        last countdown that did not exceed it. A ``countdown`` given to the whole group
        (``set``, ``apply_async``) replaces these, as in Celery.
        """
        countdown = previous = float(start)
        for member in self.members:
            if stop is not None and countdown > stop:
                member.set(countdown=previous)
                continue
            member.set(countdown=countdown)
            previous, countdown = countdown, countdown + step
        return self

    def _pin(self) -> None:
        if "task_id" not in self.options:
            self.options["task_id"] = new_id()
        for member in self.members:
            member._pin()

    def _node(self, push: _Push) -> GroupNode:
        inner = _Push(
            merge_options(_own(self.options), push.options),
            None,
            (),
            (*self.errbacks, *push.link_error),
        )
        members: list[Node] = []
        for m in self.members:
            if m._is_empty():
                continue
            node = m._node(inner)
            if isinstance(node, GroupNode) and not node.link:
                members.extend(node.members)
            elif node is not None:
                members.append(node)
        return GroupNode(
            id=push.task_id or self.id or new_id(),
            members=tuple(members),
            link=_nodes([*self.links, *push.link]),
        )

    def to_node(self) -> GroupNode:
        """The wire form, with fresh ids for every task whose id is not pinned."""
        return self._node(_NO_PUSH)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``signature(data, app=app)`` rebuilds the group."""
        return self._composite("group", {"tasks": [m.to_dict() for m in self.members]})

    def __call__(self, *args: Any, **options: Any) -> Awaiting[GroupResult[R]]:
        """Celery's ``group(...)()``: partial arguments, then call options."""
        return awaiting(self._apply(args, {}, options), self, "__call__")


class Chord(Canvas[R, H]):
    """A group whose values, in order, are passed as a list to ``body`` once all succeed.

    A member that fails fails the chord at once (the body's errbacks run); a member lost
    for good fails it when its ``timeout`` passes. It never hangs.
    """

    def __init__(
        self,
        header: Group[Any] | Canvas[Any, Any] | Iterable[Canvas[Any, Any]],
        body: Canvas[R, H],
        *,
        timeout: float | None = None,
        app: App | None = None,
    ) -> None:
        self.header: Group[Any] = header if isinstance(header, Group) else Group(header)
        self.body: Canvas[R, H] = cast("Canvas[R, H]", _as_canvas(body))
        self.timeout = timeout
        self._chord_id: str | None = None
        self._start(app or self.header.app or self.body.app)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def _pin(self) -> None:
        self._chord_id = self._chord_id or new_id()
        self.header._pin()
        self.body._pin()

    def _node(self, push: _Push) -> ChordNode:
        header_options = merge_options(_own(self.options), push.options)
        header = self.header._node(_Push(header_options, None, (), ()))
        body = self.body._node(
            _Push(
                {k: v for k, v in header_options.items() if k not in _DELAYS},
                push.task_id or self.id,
                (*self.links, *push.link),
                (*self.errbacks, *push.link_error),
            )
        )
        if body is None:
            raise ValueError(f"{self!r}: the body has no task to run")
        return ChordNode(
            id=self._chord_id or new_id(),
            header=tuple(chord_members((header,))),
            body=body,
            timeout=self.timeout,
        )

    def to_node(self) -> ChordNode:
        """The wire form, with fresh ids for every task whose id is not pinned."""
        return self._node(_NO_PUSH)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``signature(data, app=app)`` rebuilds the chord."""
        parts: dict[str, Any] = {"header": self.header.to_dict(), "body": self.body.to_dict()}
        if self.timeout is not None:
            parts["timeout"] = self.timeout
        return self._composite("chord", parts)

    def __call__(self, body: Canvas[Any, Any] | None = None, **options: Any) -> Awaiting[H]:
        """Celery's ``chord(header, body)()``; ``body`` replaces the body, as in Celery."""
        target: Chord[Any, Any] = self if body is None else self._with_body(body)
        return awaiting(target._apply((), {}, options), self, "__call__")

    def _with_body(self, body: Canvas[Any, Any]) -> Chord[Any, Any]:
        twin = copy.copy(self)
        twin.body = _as_canvas(body)
        return twin


class ChordHeader:
    """``chord(header)``, waiting for its body: ``await chord(header)(tsum.s())``."""

    def __init__(self, header: Any, timeout: float | None) -> None:
        self.header = header
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"chord({self.header!r})"

    def __call__(self, body: Canvas[R, H], **options: Any) -> Awaiting[H]:
        """Apply the chord with ``body``; ``options`` as ``apply_async``'s."""
        target = Chord(self.header, body, timeout=self.timeout)
        return awaiting(target._apply((), {}, options), self, "__call__")


def _chain(steps: tuple[Any, ...], options: Mapping[str, Any]) -> Chain[Any, Any]:
    made: Chain[Any, Any] = Chain(*steps)
    return made.set(**options) if options else made


@overload
def chain(s1: Canvas[T1, H1], /, **options: Any) -> Chain[T1, H1]: ...
@overload
def chain(s1: Canvas[Any, Any], s2: Canvas[T2, H2], /, **options: Any) -> Chain[T2, H2]: ...
@overload
def chain(
    s1: Canvas[Any, Any], s2: Canvas[Any, Any], s3: Canvas[T3, H3], /, **options: Any
) -> Chain[T3, H3]: ...
@overload
def chain(
    s1: Canvas[Any, Any],
    s2: Canvas[Any, Any],
    s3: Canvas[Any, Any],
    s4: Canvas[T4, H4],
    /,
    **options: Any,
) -> Chain[T4, H4]: ...
@overload
def chain(*steps: Any, **options: Any) -> Chain[Any, Any]: ...
def chain(*steps: Any, **options: Any) -> Chain[Any, Any]:
    """Steps in order: ``chain(add.s(2, 2), mul.s(4))``, the same as ``add.s(2, 2) | mul.s(4)``.

    Also ``chain(generator)``; ``options`` as :meth:`Canvas.set` (``task_id`` names the last
    step's result).
    """
    return _chain(steps, options)


@overload
def group(
    *members: Canvas[R, Any] | Task[Any, R] | Iterable[Canvas[R, Any] | Task[Any, R]],
    app: App | None = None,
    **options: Any,
) -> Group[R]: ...
@overload
def group(*members: Any, app: App | None = None, **options: Any) -> Group[Any]: ...
def group(*members: Any, app: App | None = None, **options: Any) -> Group[Any]:
    """Parallel members: ``group(add.s(i, i) for i in range(10))`` or ``group(a.s(), b.s())``.

    ``app`` is only needed for a group with no members; ``options`` as :meth:`Canvas.set`.
    """
    made: Group[Any] = Group(*members, app=app)
    return made.set(**options) if options else made


@overload
def chord(
    header: Group[Any] | Canvas[Any, Any] | Iterable[Any],
    body: None = None,
    *,
    timeout: float | None = None,
) -> ChordHeader: ...
@overload
def chord(
    header: Group[Any] | Canvas[Any, Any] | Iterable[Any],
    body: Canvas[R, H],
    *,
    timeout: float | None = None,
    **options: Any,
) -> Chord[R, H]: ...
def chord(
    header: Group[Any] | Canvas[Any, Any] | Iterable[Any],
    body: Canvas[Any, Any] | None = None,
    *,
    timeout: float | None = None,
    **options: Any,
) -> Chord[Any, Any] | ChordHeader:
    """``chord(group(...), tsum.s())``: the body gets the header's values once all finish.

    ``chord(header)`` alone waits for its body: ``await chord(header)(tsum.s())``.

    Args:
        header: the parallel members (a group, a list, a generator; a single signature).
        body: applied with the list of values prepended.
        timeout: seconds after which a chord with unfinished members fails (default: the
            app's ``chord_timeout``).
        options: as :meth:`Canvas.set`.
    """
    if body is None:
        return ChordHeader(header, timeout)
    made: Chord[Any, Any] = Chord(header, body, timeout=timeout)
    return made.set(**options) if options else made
