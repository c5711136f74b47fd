"""The canvas, Celery's vocabulary for task calls as data: signature, chain, group, chord.

These are plain data with one operation, :meth:`Canvas.freeze`, which assigns task ids and
returns the wire form (``nodes.py``). Applying one is the workflow engine's business
(``aqueue.workflows``), which core reaches through ``app.workflows`` (the
:class:`~aqueue.core.protocols.Workflows` protocol) and never imports. A lone signature is
sent by core itself, exactly as ``app.send_many`` sends it.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, overload

from .errors import ConfigurationError
from .nodes import ChainNode, ChordNode, GroupNode, Node, TaskNode
from .options import check_options

if TYPE_CHECKING:
    from .app import App
    from .result import AsyncResult, GroupResult
    from .task import Task

R = TypeVar("R")
S = TypeVar("S")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")

#: built-in tasks the canvas refers to by name (``aqueue.workflows`` registers them)
MAP_TASK: Final = "aqueue.map"
STARMAP_TASK: Final = "aqueue.starmap"


def new_id() -> str:
    """A fresh task id."""
    return str(uuid.uuid4())


class Canvas(Generic[R]):
    """Anything that can be applied: a signature, chain, group or chord."""

    app: App | None

    def freeze(self) -> Node:
        """The node to send, with fresh task ids assigned."""
        raise NotImplementedError

    def __or__(self, other: Canvas[S]) -> Chain[S]:
        return Chain(self, other)

    def _require_app(self) -> App:
        if self.app is None:
            raise ConfigurationError(
                "this signature has no app: build it with task.s(...), app.signature(...) "
                "or signature(name, app=app)"
            )
        return self.app


class Signature(Canvas[R]):
    """A task name with arguments and options, applied later or inside a workflow.

    ``add.s(2, 2)`` (or ``add.signature((2, 2), countdown=5)``) builds one; ``add.si(...)``
    an immutable one (the parent's result is not prepended in a chain). Partial: ``add.s(2)``
    then ``await sig.delay(4)`` appends ``4``. Options are Celery's call options, checked
    as ``apply_async`` checks them (:mod:`aqueue.core.options`).
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
        self.app = app
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.immutable = immutable
        self.options: dict[str, Any] = {}
        self.links: list[Canvas[Any]] = []
        self.errbacks: list[Canvas[Any]] = []
        self.set(**options)

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.name}{'si' if self.immutable else 's'}({args})"

    def set(self, **options: Any) -> Signature[R]:
        """Set call options (Celery's names); returns the signature itself.

        ``link`` / ``link_error`` add callbacks, as :meth:`link` and :meth:`link_error` do.
        """
        checked = check_options(options)
        self.links += checked.pop("link", ())
        self.errbacks += checked.pop("link_error", ())
        if "eta" in checked:
            self.options.pop("countdown", None)
        elif "countdown" in checked:
            self.options.pop("eta", None)
        if "expires" in checked or "expires_at" in checked:
            self.options.pop("expires", None)
            self.options.pop("expires_at", None)
        self.options.update(checked)
        return self

    def clone(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature[R]:
        """A copy with ``args`` appended, ``kwargs`` merged and options set."""
        twin = copy.copy(self)
        twin.args = (*self.args, *args)
        twin.kwargs = {**self.kwargs, **(kwargs or {})}
        twin.options = dict(self.options)
        twin.links, twin.errbacks = list(self.links), list(self.errbacks)
        return twin.set(**options)

    def link(self, callback: Canvas[Any]) -> Signature[R]:
        """Apply ``callback`` with this task's result when it succeeds."""
        self.links.append(callback)
        return self

    def link_error(self, errback: Canvas[Any]) -> Signature[R]:
        """Apply ``errback`` with ``(task_id, error)`` when this task fails."""
        self.errbacks.append(errback)
        return self

    on_error = link_error

    def freeze(self) -> TaskNode:
        options = {k: v for k, v in self.options.items() if k != "task_id"}
        return TaskNode(
            id=self.options.get("task_id") or new_id(),
            task=self.name,
            args=self.args,
            kwargs=self.kwargs,
            options=options,
            immutable=self.immutable,
            link=tuple(c.freeze() for c in self.links),
            link_error=tuple(c.freeze() for c in self.errbacks),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-representable when the arguments are)."""
        return {
            "task": self.name,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": self.options,
            "immutable": self.immutable,
        }

    async def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """Apply with extra arguments (partial application)."""
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[R]:
        """Apply with extra arguments and options: the message ``app.send_many`` sends."""
        sig = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        [result] = await sig._require_app().send_many([sig])
        return result

    async def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """Celery's ``sig()``: the same as ``delay``."""
        return await self.delay(*args, **kwargs)


def signature(
    task: str | Task[Any, R],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    app: App | None = None,
    immutable: bool = False,
    **options: Any,
) -> Signature[R]:
    """A signature by task name (``signature("proj.tasks.add", args=(2, 2), app=app)``)."""
    return Signature(task, args, kwargs, app=app, immutable=immutable, **options)


def _app_of(parts: Iterable[Canvas[Any]]) -> App | None:
    return next((p.app for p in parts if p.app is not None), None)


class Chain(Canvas[R]):
    """Steps run in order; each step's result is prepended to the next step's arguments."""

    def __init__(self, *steps: Canvas[Any]) -> None:
        flat: list[Canvas[Any]] = []
        for step in steps:
            if isinstance(step, Chain):
                flat.extend(step.steps)
            else:
                flat.append(step)
        if not flat:
            raise ValueError("a chain needs at least one step")
        self.steps: list[Canvas[Any]] = flat
        self.app = _app_of(flat)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.steps))

    def __or__(self, other: Canvas[S]) -> Chain[S]:
        return Chain(*self.steps, other)

    def freeze(self) -> Node:
        if len(self.steps) == 1:
            return self.steps[0].freeze()
        return ChainNode(steps=tuple(s.freeze() for s in self.steps))

    async def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """Apply the chain; ``args`` are added to its first step."""
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> AsyncResult[R]:
        """Apply the chain; the result is the last step's, with ``parent`` links back."""
        first = self.steps[0]
        if (args or kwargs) and isinstance(first, Signature):
            steps = [first.clone(args, kwargs), *self.steps[1:]]
        else:
            steps = self.steps
        result: AsyncResult[R] = await self._require_app().workflows.apply(Chain(*steps))
        return result


class Group(Canvas[list[R]]):
    """Members run in parallel; the result is the list of their results, in order."""

    def __init__(
        self, *members: Canvas[Any] | Iterable[Canvas[Any]], app: App | None = None
    ) -> None:
        flat: list[Canvas[Any]] = []
        for m in members:
            flat += [m] if isinstance(m, Canvas) else list(m)
        self.members = flat
        self.app = app or _app_of(flat)

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.members))})"

    def __len__(self) -> int:
        return len(self.members)

    def __or__(self, other: Canvas[S]) -> Chain[S]:
        return Chain(self, other)

    def freeze(self) -> GroupNode:
        return GroupNode(id=new_id(), members=tuple(m.freeze() for m in self.members))

    async def delay(self, *args: Any, **kwargs: Any) -> GroupResult[R]:
        """Apply every member; ``args`` are added to each."""
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> GroupResult[R]:
        members = [
            m.clone(args, kwargs) if (args or kwargs) and isinstance(m, Signature) else m
            for m in self.members
        ]
        app = self._require_app()
        return await app.workflows.apply_group(Group(members, app=self.app))


class Chord(Canvas[R]):
    """A group whose results, in order, are passed as a list to ``body`` once all succeed."""

    def __init__(
        self,
        header: Group[Any] | Iterable[Canvas[Any]],
        body: Canvas[R],
        *,
        timeout: float | None = None,
    ) -> None:
        self.header = header if isinstance(header, Group) else Group(header)
        self.body = body
        self.timeout = timeout
        self.app = _app_of([*self.header.members, body])

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def freeze(self) -> ChordNode:
        return ChordNode(
            id=new_id(),
            header=tuple(m.freeze() for m in self.header.members),
            body=self.body.freeze(),
            timeout=self.timeout,
        )

    async def delay(self) -> AsyncResult[R]:
        """Apply the chord; the result is the body's."""
        return await self.apply_async()

    async def apply_async(self) -> AsyncResult[R]:
        result: AsyncResult[R] = await self._require_app().workflows.apply(self)
        return result


@overload
def chain(s1: Canvas[T1], /) -> Chain[T1]: ...
@overload
def chain(s1: Canvas[Any], s2: Canvas[T2], /) -> Chain[T2]: ...
@overload
def chain(s1: Canvas[Any], s2: Canvas[Any], s3: Canvas[T3], /) -> Chain[T3]: ...
@overload
def chain(s1: Canvas[Any], s2: Canvas[Any], s3: Canvas[Any], s4: Canvas[T4], /) -> Chain[T4]: ...
@overload
def chain(*steps: Canvas[Any]) -> Chain[Any]: ...
def chain(*steps: Canvas[Any]) -> Chain[Any]:
    """Steps in order: ``chain(add.s(2, 2), mul.s(4))``, the same as ``add.s(2, 2) | mul.s(4)``."""
    return Chain(*steps)


def group(*members: Canvas[R] | Iterable[Canvas[R]], app: App | None = None) -> Group[R]:
    """Parallel members: ``group(add.s(i, i) for i in range(10))`` or ``group(a.s(), b.s())``.

    ``app`` is only needed for a group with no members.
    """
    return Group(*members, app=app)


def chord(
    header: Group[Any] | Iterable[Canvas[Any]], body: Canvas[R], *, timeout: float | None = None
) -> Chord[R]:
    """``chord(group(...), tsum.s())``: the body gets the header's results once all finish.

    Args:
        header: the parallel members.
        body: applied with the list of results prepended.
        timeout: seconds after which a chord with unfinished members fails (default: the
            app's ``chord_timeout``).
    """
    return Chord(header, body, timeout=timeout)
