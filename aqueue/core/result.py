"""``AsyncResult[R]``: a handle on a sent task; ``await handle.wait()`` returns an ``R``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from . import states
from .errors import ConfigurationError, DecodeError, TaskFailed, TaskRevoked
from .message import ResultIn, decode_result, raw_is_empty
from .serialization import SerializerName, decode, format_of

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
        backend = await self.app._result_backend()
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
        backend = await self.app._result_backend()
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
        backend = await self.app._result_backend()
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
