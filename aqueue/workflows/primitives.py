"""``chain``, ``group`` and ``chord``: canvases that compose signatures, awaitable when applied."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ..core.canvas import ChainNode, ChordNode, GroupNode, Node
from .signature import Canvas, Signature, new_id

if TYPE_CHECKING:
    from ..core.app import App
    from ..core.result import AsyncResult
    from .results import GroupResult

R = TypeVar("R")
S = TypeVar("S")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")


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
        from .apply import apply

        first = self.steps[0]
        if (args or kwargs) and isinstance(first, Signature):
            steps = [first.clone(args, kwargs), *self.steps[1:]]
        else:
            steps = self.steps
        result: AsyncResult[R] = await apply(self._require_app(), Chain(*steps))
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
        from .apply import apply_group

        members = [
            m.clone(args, kwargs) if (args or kwargs) and isinstance(m, Signature) else m
            for m in self.members
        ]
        return await apply_group(self._require_app(), Group(members, app=self.app))


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
        from .apply import apply

        result: AsyncResult[R] = await apply(self._require_app(), self)
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
