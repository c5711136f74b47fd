"""``Signature[R]``: a task call as data (``add.s(2, 2)``), and the canvas base class."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..core.canvas import Node, TaskNode
from ..core.errors import ConfigurationError

if TYPE_CHECKING:
    from ..core.app import App
    from ..core.result import AsyncResult
    from ..core.task import Task
    from .primitives import Chain

R = TypeVar("R")
S = TypeVar("S")

#: options a signature accepts (Celery's names); times are stored as unix seconds
SIGNATURE_OPTIONS = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "queue",
        "priority",
        "task_id",
        "headers",
        "serializer",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
    }
)


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
        from .primitives import Chain

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
    then ``await sig.delay(4)`` appends ``4``.
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
        """Set call options (Celery's names); returns the signature itself."""
        unknown = set(options) - SIGNATURE_OPTIONS
        if unknown:
            raise TypeError(f"unknown signature option(s): {', '.join(sorted(unknown))}")
        if isinstance(options.get("eta"), datetime):
            options["eta"] = _timestamp(options["eta"])
        if "expires" in options:
            # a datetime is absolute; a number is seconds from when the task is sent
            expires = options.pop("expires")
            if isinstance(expires, datetime):
                options["expires_at"] = _timestamp(expires)
            else:
                options["expires"] = float(expires)
        self.options.update(options)
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
        """Apply with extra arguments and options."""
        from .apply import apply

        sig = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        result: AsyncResult[R] = await apply(sig._require_app(), sig)
        return result

    async def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """Celery's ``sig()``: the same as ``delay``."""
        return await self.delay(*args, **kwargs)


def _timestamp(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


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
