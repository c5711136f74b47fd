"""``AsyncResult[R]``: a handle on a sent task (``await handle.wait()`` returns an ``R``), and
``GroupResult[R]``: the handles of a group's members (``await group.wait()``: ``list[R]``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from . import states
from .errors import ConfigurationError, DecodeError, TaskFailed, TaskRevoked
from .message import ResultIn, ResultOut, decode_result, raw_is_empty
from .serialization import SerializerName, check_serializer, decode, encode, format_of

if TYPE_CHECKING:
    from .app import App
    from .task import Task

R = TypeVar("R")


@dataclasses.dataclass(frozen=True, slots=True)
class StateChange:
    """One state a task went through, as ``events()`` yields it."""

    state: str
    #: the result for SUCCESS, the error for FAILURE, the meta of a custom state
    info: Any
    attempt: int


class AsyncResult(Generic[R]):
    """A task's result, state and error, read from the result backend.

    ``status``, ``result``, ``info`` and ``traceback`` are what the last read saw; the
    coroutines (``state()``, ``ready()``, ``wait()``, ...) read again.
    """

    def __init__(
        self,
        app: App,
        id: str,
        *,
        result_type: Any = Any,
        task: Task[Any, R] | None = None,
    ) -> None:
        self.app = app
        self.id = id
        self._result_type = result_type
        self._task = task
        self._record: ResultIn | None = None
        self._format: SerializerName = "msgpack"
        #: the previous step's result when this is a step of a chain (or a chord's header)
        self.parent: Any = None
        #: the next steps' results, when known (a chain's next step)
        self.children: list[Any] = []
        #: every task id of the workflow this result ends, when it came from one
        self.workflow_ids: list[str] | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- last seen ----------------------------------------------------------------------

    @property
    def status(self) -> str:
        """The state seen by the last read (PENDING before any)."""
        return self._record.state if self._record is not None else states.PENDING

    @property
    def result(self) -> Any:
        """Return value (SUCCESS), :class:`TaskFailed` (FAILURE) or meta (custom states)."""
        record = self._record
        if record is None:
            return None
        if record.state == states.SUCCESS:
            return self._value(record)
        if record.error is not None:
            return self._error(record)
        return self._meta(record)

    info = result

    @property
    def traceback(self) -> str | None:
        """The remote traceback text of a FAILURE."""
        record = self._record
        return record.error.traceback if record is not None and record.error else None

    @property
    def attempt(self) -> int:
        """The attempt the last read record came from (0 before any)."""
        return self._record.attempt if self._record is not None else 0

    # -- reads --------------------------------------------------------------------------

    async def _fetch(self) -> ResultIn | None:
        backend = await self.app.result_backend()
        raw = await backend.get(self.id)
        if raw is not None:
            self._record = decode_result(raw)
            self._format = format_of(raw)
        return self._record

    async def state(self) -> str:
        """Read and return the current state."""
        await self._fetch()
        return self.status

    async def ready(self) -> bool:
        """Whether the task finished (SUCCESS, FAILURE or REVOKED)."""
        return await self.state() in states.READY_STATES

    async def successful(self) -> bool:
        """Whether the task finished with SUCCESS."""
        return await self.state() == states.SUCCESS

    async def failed(self) -> bool:
        """Whether the task finished with FAILURE."""
        return await self.state() == states.FAILURE

    async def revoke(self, *, terminate: bool = False) -> None:
        """Revoke this task, or every node of the workflow it ends (``app.control.revoke``)."""
        await self.app.control.revoke(self.workflow_ids or self.id, terminate=terminate)

    def as_tuple(self) -> tuple[Any, ...]:
        """Celery's tuple form ``(id, parent_tuple)``; see ``result_from_tuple``."""
        return (self.id, self.parent.as_tuple() if self.parent is not None else None)

    async def forget(self) -> None:
        """Delete the stored result."""
        backend = await self.app.result_backend()
        await backend.forget(self.id)
        self._record = None

    async def wait(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the task to finish and return its result.

        Push-based where the backend pushes; never a polling loop in the caller.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            TaskFailed: FAILURE (when ``propagate``).
            TaskRevoked: revoked or expired (when ``propagate``).
        """
        self._check_waitable()
        record: ResultIn | None = None
        async with asyncio.timeout(timeout):
            async for record in self._records():
                if record.state in states.READY_STATES:
                    break
        assert record is not None
        if record.state == states.SUCCESS:
            value: R = self._value(record)
            return value
        if propagate:
            raise self._error(record)
        return self._error(record)  # type: ignore[return-value]

    get = wait

    async def events(self) -> AsyncIterator[StateChange]:
        """Yield each state the task goes through until it is ready (last one included)."""
        self._check_waitable()
        async for record in self._records():
            if record.state == states.SUCCESS:
                info: Any = self._value(record)
            elif record.error is not None:
                info = self._error(record)
            else:
                info = self._meta(record)
            yield StateChange(record.state, info, record.attempt)
            if record.state in states.READY_STATES:
                return

    async def _records(self) -> AsyncIterator[ResultIn]:
        backend = await self.app.result_backend()
        seen: bytes | None = None
        async with contextlib.aclosing(backend.watch(self.id)) as stream:
            async for raw in stream:
                if raw == seen:
                    continue
                seen = raw
                self._record = decode_result(raw)
                self._format = format_of(raw)
                yield self._record

    def _check_waitable(self) -> None:
        if self._task is not None and self._task.ignore_result:
            raise ConfigurationError(
                f"task {self._task.name} has ignore_result=True: there is no result to wait for"
            )

    # -- decoding -----------------------------------------------------------------------

    def _value(self, record: ResultIn) -> Any:
        if raw_is_empty(record.value):
            return None
        try:
            return decode(record.value, self._result_type, self._format)
        except msgspec.ValidationError as exc:
            raise DecodeError(
                f"result of task {self.id} does not match its annotation: {exc}"
            ) from None

    def _meta(self, record: ResultIn) -> Any:
        return None if raw_is_empty(record.meta) else decode(record.meta, Any, self._format)

    def _error(self, record: ResultIn) -> TaskFailed | TaskRevoked:
        err = record.error
        if record.state == states.REVOKED:
            return TaskRevoked(self.id, err.message if err else "revoked")
        if err is None:
            return TaskFailed(self.id, "UnknownError", "", None)
        return TaskFailed(self.id, err.type, err.message, err.traceback)


# -- groups --------------------------------------------------------------------------------

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
        backend = await self.app.result_backend()
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
        backend = await self.app.result_backend()
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
        backend = await self.app.result_backend()
        raw = await backend.get(_GROUP_META + group_id)
        if raw is None:
            raise ConfigurationError(f"no saved group {group_id} (never saved, or expired)")
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
