"""Results of workflows: ``GroupResult``, and the result tree of a chain."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..core import states
from ..core.errors import ConfigurationError
from ..core.message import ResultOut
from ..core.result import AsyncResult
from ..core.serialization import check_serializer, decode, encode, format_of

if TYPE_CHECKING:
    from ..core.app import App

R = TypeVar("R")

_GROUP_META = "group-meta:"
ResultTuple = tuple[Any, ...]


class GroupResult(Generic[R]):
    """The results of a group's members, in order; ``await wait()`` returns ``list[R]``."""

    def __init__(self, app: App, id: str, results: Sequence[AsyncResult[R]]) -> None:
        self.app = app
        self.id = id
        self.results = list(results)
        self.parent: AsyncResult[Any] | GroupResult[Any] | None = None

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{len(self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Any:
        return iter(self.results)

    @property
    def children(self) -> list[AsyncResult[R]]:
        """The members' results (Celery's name)."""
        return self.results

    async def wait(self, timeout: float | None = None, propagate: bool = True) -> list[R]:
        """Wait for every member; the list of results in order.

        Raises:
            TimeoutError: not all finished within ``timeout``.
            TaskFailed: a member failed (when ``propagate``; the first in order).
        """
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*(r.wait(propagate=propagate) for r in self.results)))

    get = join = wait

    async def _states(self) -> list[str]:
        backend = await self.app._result_backend()
        records = await backend.get_many([r.id for r in self.results])
        out: list[str] = []
        for r, raw in zip(self.results, records, strict=True):
            out.append(await r.state() if raw is not None else states.PENDING)
        return out

    async def completed_count(self) -> int:
        """Members that ended in SUCCESS."""
        return sum(s == states.SUCCESS for s in await self._states())

    async def ready(self) -> bool:
        """Whether every member finished."""
        return all(s in states.READY_STATES for s in await self._states())

    async def successful(self) -> bool:
        """Whether every member ended in SUCCESS."""
        return all(s == states.SUCCESS for s in await self._states())

    async def failed(self) -> bool:
        """Whether any member ended in FAILURE."""
        return any(s == states.FAILURE for s in await self._states())

    async def waiting(self) -> bool:
        """Whether any member has not finished."""
        return not await self.ready()

    async def revoke(self, *, terminate: bool = False) -> None:
        """Revoke every member."""
        await self.app.control.revoke([r.id for r in self.results], terminate=terminate)

    async def save(self) -> None:
        """Store the member ids under the group id, for ``app.GroupResult.restore(id)``."""
        backend = await self.app._result_backend()
        fmt = check_serializer(self.app.conf.task_serializer)
        record = ResultOut(id=self.id, state="META", value=[r.id for r in self.results])
        await backend.store(
            _GROUP_META + self.id,
            encode(record, fmt),
            state="META",
            attempt=0,
            ttl=self.app.conf.result_expires,
        )

    def as_tuple(self) -> ResultTuple:
        """Celery's tuple form: ``((id, parent), [member tuples])``."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return ((self.id, parent), [r.as_tuple() for r in self.results])


class GroupResults:
    """``app.GroupResult``: build one (``app.GroupResult(id, results)``) or restore a saved one."""

    def __init__(self, app: App) -> None:
        self.app = app

    def __call__(self, id: str, results: Sequence[AsyncResult[Any]]) -> GroupResult[Any]:
        return GroupResult(self.app, id, results)

    async def restore(self, group_id: str) -> GroupResult[Any]:
        """A group saved with ``save()``, from any process."""
        backend = await self.app._result_backend()
        raw = await backend.get(_GROUP_META + group_id)
        if raw is None:
            raise ConfigurationError(f"no saved group {group_id} (never saved, or expired)")
        from ..core.message import decode_result

        ids = decode(decode_result(raw).value, list[str], format_of(raw))
        return GroupResult(self.app, group_id, [self.app.AsyncResult(i) for i in ids])


def result_from_tuple(
    app: App, value: ResultTuple | list[Any]
) -> AsyncResult[Any] | GroupResult[Any]:
    """Rebuild a result tree from ``as_tuple()`` (e.g. after JSON or msgpack)."""
    head, rest = value[0], value[1]
    if not isinstance(head, str):  # a group: ((id, parent), [members]), lists after JSON
        group_id, parent = head
        group = GroupResult(
            app,
            group_id,
            [r for r in (result_from_tuple(app, t) for t in rest) if isinstance(r, AsyncResult)],
        )
        group.parent = result_from_tuple(app, parent) if parent else None
        return group
    result: AsyncResult[Any] = app.AsyncResult(head)
    result.parent = result_from_tuple(app, rest) if rest else None
    return result
