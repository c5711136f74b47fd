"""``AsyncResult[R]``: a handle on a sent task (``await handle.wait()`` returns an ``R``), and
``GroupResult[R]``: the handles of a group's members (``await group.wait()``: ``list[R]``).

Reading the result backend is I/O, so where Celery has a value aqueue has a coroutine
method: ``await result.state()``, ``await result.ready()``... These are queries
(:mod:`aqueue.core.awaiting`): ``result.state == "PENDING"`` or ``if result.ready():``
raise :class:`~aqueue.core.errors.AsyncUsageError` naming the async spelling instead of
quietly giving a wrong answer. ``status``, ``result``, ``name``, ``date_done``... are what
the last read saw, and raise the same error before anything was read.

Results form a tree, as in Celery: a chain step's ``parent`` is the step before it (its
``children`` the step after), a chord body's ``parent`` is the header's ``GroupResult``.
``as_tuple()`` / :func:`result_from_tuple` store and rebuild the whole tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, overload

import msgspec

from . import states
from .awaiting import query
from .context import current_task
from .errors import AsyncUsageError, ConfigurationError, DecodeError, TaskFailed, TaskRevoked
from .message import ResultIn, ResultOut, decode_result, raw_is_empty
from .serialization import SerializerName, check_serializer, decode, encode, format_of

if TYPE_CHECKING:
    from .app import App
    from .blocking import SyncGroupResult, SyncResult
    from .task import Task

R = TypeVar("R")

#: what ``_record`` holds before any read (``None`` is a read that found nothing)
_UNREAD: Final[Any] = object()
#: seconds a timed-out wait spends, at most, asking the broker how long the queue is
_SIZE_TIMEOUT: Final = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class StateChange:
    """One state a task went through, as ``events()`` yields it."""

    state: str
    #: the result for SUCCESS, the error for FAILURE, the meta of a custom state
    info: Any
    attempt: int


def _app_for(app: App | None) -> App:
    """``app``, or inside a running task that task's app (Celery's ``AsyncResult(id)``)."""
    if app is not None:
        return app
    task = current_task()
    if task is not None:
        return task.app
    raise ConfigurationError(
        "AsyncResult(id) needs its app outside a task: AsyncResult(id, app=app), "
        "app.AsyncResult(id) or task.AsyncResult(id)"
    )


class AsyncResult(Generic[R]):
    """A task's result, state and error, read from the result backend.

    ``AsyncResult(id, app=app)`` (Celery's spelling; inside a task the app may be left
    out), ``app.AsyncResult(id)`` or ``add.AsyncResult(id)`` (typed by the task).
    """

    @overload
    def __init__(
        self,
        app: App,
        id: str,
        /,
        *,
        result_type: Any = ...,
        task: Task[Any, R] | None = ...,
        parent: AsyncResult[Any] | GroupResult[Any] | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: AsyncResult[Any],
        id: str,
        /,
        *,
        app: App | None = ...,
        parent: AsyncResult[Any] | GroupResult[Any] | None = ...,
    ) -> None: ...
    def __init__(
        self,
        first: Any,
        id: Any = None,
        /,
        *,
        app: App | None = None,
        result_type: Any = Any,
        task: Task[Any, R] | None = None,
        parent: AsyncResult[Any] | GroupResult[Any] | None = None,
    ) -> None:
        if type(first) is str:  # Celery's order: AsyncResult(id, app=app)
            if id is not None:
                raise TypeError("AsyncResult(id, app=app) or AsyncResult(app, id)")
            app, id = _app_for(app), first
        else:
            app = first
        self.app: App = app
        self.id: str = id
        self._result_type = result_type
        self._task = task
        self._record: ResultIn | None = _UNREAD
        self._format: SerializerName = "msgpack"
        #: the previous step's result when this is a step of a chain (or a chord's header)
        self.parent: AsyncResult[Any] | GroupResult[Any] | None = parent
        self._children: list[AsyncResult[Any] | GroupResult[Any]] = []
        #: every task id of the workflow this result ends, when it came from one
        self.workflow_ids: list[str] | None = None
        #: the queue the task was sent to, when this handle comes from sending it (a wait
        #: that times out says how many messages wait there)
        self.queue: str | None = None

    def __repr__(self) -> str:
        record = self._record
        seen = "(not read)" if record is _UNREAD else record.state if record else states.PENDING
        return f"<AsyncResult {self.id} {seen}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):  # Celery compares results with ids
            return other == self.id
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def sync(self) -> SyncResult[R]:
        """The blocking view (``result.sync.get(timeout=10)``) for code outside any loop."""
        from .blocking import SyncResult

        return SyncResult(self)

    @property
    def task_id(self) -> str:
        """The task id (Celery's other name for ``id``)."""
        return self.id

    @property
    def children(self) -> list[AsyncResult[Any] | GroupResult[Any]]:
        """The results of what this task started (Celery's ``children``).

        The next step of its workflow, known when the handle came from applying one; then
        the tasks, chains, groups and chords the task sent while it ran (Celery's
        ``trail``), stored with its result, so known once a read saw it finished. Before
        any read, a handle that knows no next step raises :class:`AsyncUsageError`.
        """
        record = self._record
        if record is _UNREAD:
            if not self._children:
                self._seen("children")
            return list(self._children)
        if record is None or raw_is_empty(record.children):
            return list(self._children)
        sent = decode(record.children, list[Any], self._format)
        return [*self._children, *(_from_tuple(self.app, t) for t in sent)]

    @children.setter
    def children(self, results: list[AsyncResult[Any] | GroupResult[Any]]) -> None:
        self._children = list(results)

    # -- what the last read saw -----------------------------------------------------------

    def _seen(self, what: str) -> ResultIn | None:
        record = self._record
        if record is _UNREAD:
            raise AsyncUsageError(
                f"result.{what} is what the last read of the result backend saw, and nothing "
                "was read yet: `await result.state()` or `await result.wait()` reads it"
            )
        return record

    @property
    def status(self) -> str:
        """The state the last read saw (PENDING: no record). See ``await result.state()``."""
        record = self._seen("status")
        return record.state if record is not None else states.PENDING

    @property
    def result(self) -> Any:
        """Return value (SUCCESS), :class:`TaskFailed` (FAILURE) or meta (custom states)."""
        record = self._seen("result")
        if record is None:
            return None
        if record.state == states.SUCCESS:
            return self._value(record)
        if record.error is not None:
            return self._error(record)
        return self._meta(record)

    @property
    def info(self) -> Any:
        """The same as ``result`` (Celery's name for a custom state's meta)."""
        self._seen("info")
        return self.result

    @property
    def traceback(self) -> str | None:
        """The remote traceback text of a FAILURE."""
        record = self._seen("traceback")
        return record.error.traceback if record is not None and record.error else None

    @property
    def name(self) -> str | None:
        """The task's name."""
        record = self._seen("name")
        return record.task if record is not None else None

    @property
    def args(self) -> tuple[Any, ...] | None:
        """The task's positional arguments: stored with ``result_extended=True``, else None."""
        record = self._seen("args")
        if record is None or raw_is_empty(record.args):
            return None
        return tuple(decode(record.args, list[Any], self._format))

    @property
    def kwargs(self) -> dict[str, Any] | None:
        """The task's keyword arguments: stored with ``result_extended=True``, else None."""
        record = self._seen("kwargs")
        if record is None or raw_is_empty(record.kwargs):
            return None
        return dict(decode(record.kwargs, dict[str, Any], self._format))

    @property
    def date_done(self) -> dt.datetime | None:
        """When the task finished (UTC)."""
        record = self._seen("date_done")
        done = record.date_done if record is not None else None
        return dt.datetime.fromtimestamp(done, dt.UTC) if done is not None else None

    @property
    def retries(self) -> int:
        """Times the task was retried."""
        record = self._seen("retries")
        return record.retries if record is not None else 0

    @property
    def worker(self) -> str | None:
        """The worker that wrote the record."""
        record = self._seen("worker")
        return record.worker if record is not None else None

    @property
    def attempt(self) -> int:
        """The attempt the record came from (0: no record)."""
        record = self._seen("attempt")
        return record.attempt if record is not None else 0

    # -- reads (queries: await them) ------------------------------------------------------

    async def _fetch(self) -> ResultIn | None:
        """Read the task's record once (``None``: none yet), keeping it and its format.

        A hook a subclass may override to read records kept elsewhere (the Celery bridge's
        ``CeleryResult`` does): every query reads through it.
        """
        backend = await self.app.result_backend()
        raw = await backend.get(self.id)
        if raw is None:
            if self._record is _UNREAD:
                self._record = None
        else:
            self._record = decode_result(raw, self.app.conf.max_result_bytes)
            self._format = format_of(raw)
        return self._record

    @query
    async def state(self) -> str:
        """Read and return the current state (Celery's ``result.state``)."""
        record = await self._fetch()
        return record.state if record is not None else states.PENDING

    @query
    async def ready(self) -> bool:
        """Whether the task finished (SUCCESS, FAILURE or REVOKED)."""
        return await self.state() in states.READY_STATES

    @query
    async def successful(self) -> bool:
        """Whether the task finished with SUCCESS."""
        return await self.state() == states.SUCCESS

    @query
    async def failed(self) -> bool:
        """Whether the task finished with FAILURE."""
        return await self.state() == states.FAILURE

    @query
    async def revoke(self, *, terminate: bool = False) -> None:
        """Revoke this task, or every node of the workflow it ends (``app.control.revoke``)."""
        await self.app.control.revoke(self.workflow_ids or self.id, terminate=terminate)

    @query
    async def forget(self) -> None:
        """Delete the stored result."""
        backend = await self.app.result_backend()
        await backend.forget(self.id)
        self._record = _UNREAD

    @query
    async def wait(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the task to finish and return its result (Celery's ``get()``).

        Push-based where the backend pushes; never a polling loop in the caller.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            TaskFailed: FAILURE (when ``propagate``; else the error is returned).
            TaskRevoked: revoked or expired (when ``propagate``).
        """
        self._check_waitable()
        record: ResultIn | None = None
        try:
            async with asyncio.timeout(timeout):
                async for record in self._records():
                    if record.state in states.READY_STATES:
                        break
        except TimeoutError:
            if timeout is None:  # not our deadline: an operation inside timed out
                raise
            raise await self._not_ready(timeout) from None
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

    async def collect(
        self, timeout: float | None = None
    ) -> AsyncIterator[tuple[AsyncResult[Any] | GroupResult[Any], Any]]:
        """Yield ``(result, value)`` for this result, then for its children, depth first.

        Celery's ``collect()``: the children are the next step of the workflow the handle
        came from, and what the task sent while it ran (see :attr:`children`), each
        waited for in turn.
        """
        yield self, await self.wait(timeout=timeout)
        for child in self.children:
            async for pair in child.collect(timeout=timeout):
                yield pair

    async def _records(self) -> AsyncIterator[ResultIn]:
        """The task's records as they change, keeping each and its format.

        A hook a subclass may override, with :meth:`_fetch`: waits and event streams read
        through it.
        """
        backend = await self.app.result_backend()
        seen: bytes | None = None
        async with contextlib.aclosing(backend.watch(self.id)) as stream:
            async for raw in stream:
                if raw == seen:
                    continue
                seen = raw
                self._record = decode_result(raw, self.app.conf.max_result_bytes)
                self._format = format_of(raw)
                yield self._record

    async def _not_ready(self, timeout: float | None) -> TimeoutError:
        """The error of a wait that timed out: the task's state, and for a task still
        PENDING the queue it was sent to and how many messages wait there (none consumed
        usually means no worker consumes that queue)."""
        record = self._record if self._record is not _UNREAD else None
        state = record.state if record is not None else states.PENDING
        name = self._task.name if self._task is not None else (record.task if record else None)
        text = f"task {name or '?'}[{self.id}] was not ready within {timeout}s: it is {state}"
        if record is not None and record.worker and state not in states.READY_STATES:
            text += f" on worker {record.worker}"
        queue = self.queue
        if state == states.PENDING and queue is not None:
            try:
                async with asyncio.timeout(_SIZE_TIMEOUT):
                    broker = await self.app.connected_broker()
                    waiting = await broker.size(queue)
            except Exception as exc:  # the message must not hide the timeout
                text += f"; it was sent to queue {queue!r} (its length is unknown: {exc!r})"
            else:
                text += f"; queue {queue!r} holds {waiting} message(s)"
                if waiting:
                    text += (
                        f": is a worker consuming {queue!r}? (aqueue worker -Q {queue}; "
                        "the worker log names the queues it consumes)"
                    )
        return TimeoutError(text)

    def _check_waitable(self) -> None:
        if self._task is not None and self._task.ignore_result:
            raise ConfigurationError(
                f"task {self._task.name} has ignore_result=True: there is no result to wait for"
            )

    def as_tuple(self) -> ResultTuple:
        """Celery's tuple form ``((id, parent_tuple), None)``; see :func:`result_from_tuple`."""
        return ((self.id, self.parent.as_tuple() if self.parent is not None else None), None)

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


# -- sets and groups -----------------------------------------------------------------------

_GROUP_META = "group-meta:"
#: Celery's tuple form of a result: ``((id, parent), None)`` or ``((id, parent), [members])``
ResultTuple = tuple[Any, ...]


class ResultSet(Generic[R]):
    """Results read together (Celery's ``ResultSet``); ``await wait()`` returns ``list[R]``.

    Any results, from anywhere: ``ResultSet([h1, h2])``, then ``add``, ``remove``,
    ``discard``, ``update``, ``clear``. Reads are queries, as on a single result:
    ``await rs.completed_count()``, ``ready()``, ``successful()``, ``failed()``,
    ``waiting()``; ``await rs.wait()`` (``get``, ``join``, ``join_native``) gives the values
    in order, ``async for result, value in rs.as_completed()`` as they finish. A member's
    state is read for every member in one round trip. :class:`GroupResult` is the set a
    group returns (it adds an id, ``save`` and ``restore``).
    """

    def __init__(
        self,
        results: Iterable[AsyncResult[R] | GroupResult[Any]] = (),
        *,
        app: App | None = None,
    ) -> None:
        self.results: list[AsyncResult[Any] | GroupResult[Any]] = list(results)
        self._app = app

    @property
    def app(self) -> App:
        """The app: the one given, else the first member's (inside a task: the task's)."""
        if self._app is not None:
            return self._app
        if self.results:
            return self.results[0].app
        return _app_for(None)

    @app.setter
    def app(self, app: App) -> None:
        self._app = app

    def __repr__(self) -> str:
        return f"<ResultSet [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any] | GroupResult[Any]]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any] | GroupResult[Any]:
        return self.results[index]

    def __contains__(self, result: object) -> bool:
        return result in self.results

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResultSet) and other.results == self.results

    # -- membership (Celery's set API) --------------------------------------------------

    def add(self, result: AsyncResult[R] | GroupResult[Any]) -> None:
        """Add ``result`` unless it is already a member."""
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: AsyncResult[Any] | GroupResult[Any] | str) -> None:
        """Remove ``result`` (or the member with that id).

        Raises:
            KeyError: it is not a member.
        """
        try:
            self.results.remove(result)  # type: ignore[arg-type]  # members equal their id
        except ValueError:
            raise KeyError(result) from None

    def discard(self, result: AsyncResult[Any] | GroupResult[Any] | str) -> None:
        """Remove ``result`` if it is a member."""
        with contextlib.suppress(KeyError):
            self.remove(result)

    def update(self, results: Iterable[AsyncResult[R] | GroupResult[Any]]) -> None:
        """Add each of ``results`` that is not already a member."""
        for result in results:
            self.add(result)

    def clear(self) -> None:
        """Remove every member."""
        self.results.clear()

    @property
    def supports_native_join(self) -> bool:
        """Always ``True``: every backend pushes (or polls) for ``join`` (Celery's flag)."""
        return True

    # -- reads ----------------------------------------------------------------------------

    def _leaves(self) -> list[AsyncResult[Any]]:
        out: list[AsyncResult[Any]] = []
        for r in self.results:
            out += r._leaves() if isinstance(r, ResultSet) else [r]
        return out

    async def _member_states(self) -> list[str]:
        """Each member's state, read in one round trip (a nested group: its overall state)."""
        leaves = self._leaves()
        if not leaves:
            return []
        backend = await self.app.result_backend()
        raws = await backend.get_many([r.id for r in leaves])
        by_id: dict[str, str] = {}
        for leaf, raw in zip(leaves, raws, strict=True):
            if raw is not None:
                leaf._record, leaf._format = (
                    decode_result(raw, self.app.conf.max_result_bytes),
                    format_of(raw),
                )
            elif leaf._record is _UNREAD:
                leaf._record = None
            by_id[leaf.id] = (
                decode_result(raw, self.app.conf.max_result_bytes).state
                if raw is not None
                else states.PENDING
            )
        return [_overall(r, by_id) for r in self.results]

    @query
    async def wait(self, timeout: float | None = None, propagate: bool = True) -> list[R]:
        """Wait for every member; the list of their values in order.

        Raises:
            TimeoutError: not all finished within ``timeout``.
            TaskFailed: a member failed (when ``propagate``: the first failure seen;
                otherwise each failed member's error is in its place in the list).
        """
        try:
            async with asyncio.timeout(timeout):
                waits = (r.wait(propagate=propagate) for r in self.results)
                return list(await asyncio.gather(*waits))
        except TimeoutError:
            if timeout is None:
                raise
            raise await self._not_ready(timeout) from None

    get = join = join_native = wait

    def _label(self) -> str:
        return f"result set of {len(self.results)}"

    async def _not_ready(self, timeout: float | None) -> TimeoutError:
        """The error of a wait that timed out: how many members are not ready, and why the
        first of them is not (see :meth:`AsyncResult.wait`)."""
        leaves = self._leaves()
        text = f"{self._label()} was not ready within {timeout}s"
        try:
            async with asyncio.timeout(_SIZE_TIMEOUT):
                backend = await self.app.result_backend()
                raws = await backend.get_many([r.id for r in leaves])
        except Exception as exc:  # the message must not hide the timeout
            return TimeoutError(f"{text} (its members' states are unknown: {exc!r})")
        waiting = [
            leaf
            for leaf, raw in zip(leaves, raws, strict=True)
            if raw is None
            or decode_result(raw, self.app.conf.max_result_bytes).state not in states.READY_STATES
        ]
        if not waiting:
            return TimeoutError(text)
        first = await waiting[0]._not_ready(timeout)
        return TimeoutError(
            f"{text}: {len(waiting)} of {len(leaves)} not ready; the first: {first}"
        )

    async def as_completed(
        self, timeout: float | None = None, propagate: bool = True
    ) -> AsyncIterator[tuple[AsyncResult[Any] | GroupResult[Any], Any]]:
        """Yield ``(member, value)`` as each member finishes (Celery's ``iter_native``).

        Raises:
            TimeoutError: not all finished within ``timeout`` (what finished was yielded).
            TaskFailed: a member failed (when ``propagate``; else its error is the value).
        """

        async def one(
            member: AsyncResult[Any] | GroupResult[Any],
        ) -> tuple[AsyncResult[Any] | GroupResult[Any], Any]:
            return member, await member.wait(propagate=propagate)

        pending = {asyncio.ensure_future(one(m)) for m in self.results}
        try:
            async with asyncio.timeout(timeout):
                while pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for finished in done:
                        yield finished.result()
        finally:
            for waiter in pending:
                waiter.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    @query
    async def completed_count(self) -> int:
        """Members that ended in SUCCESS (Celery's count)."""
        return sum(s == states.SUCCESS for s in await self._member_states())

    @query
    async def ready(self) -> bool:
        """Whether every member finished."""
        return all(s in states.READY_STATES for s in await self._member_states())

    @query
    async def successful(self) -> bool:
        """Whether every member ended in SUCCESS."""
        return all(s == states.SUCCESS for s in await self._member_states())

    @query
    async def failed(self) -> bool:
        """Whether any member ended in FAILURE."""
        return any(s == states.FAILURE for s in await self._member_states())

    @query
    async def waiting(self) -> bool:
        """Whether any member has not finished."""
        return not all(s in states.READY_STATES for s in await self._member_states())

    @query
    async def maybe_throw(self, propagate: bool = True) -> None:
        """Raise the error of the first member (in order) that failed or was revoked."""
        await self._member_states()
        for leaf in self._leaves():
            record = leaf._record
            if propagate and record and record.state in states.PROPAGATE_STATES:
                raise leaf._error(record)

    maybe_reraise = maybe_throw

    @query
    async def revoke(self, *, terminate: bool = False) -> None:
        """Revoke every member."""
        ids = [r.id for r in self._leaves()]
        if ids:
            await self.app.control.revoke(ids, terminate=terminate)

    @query
    async def forget(self) -> None:
        """Delete every member's stored result."""
        if not self.results:
            return
        backend = await self.app.result_backend()
        for r in self._leaves():
            await backend.forget(r.id)


class GroupResult(ResultSet[R]):
    """The results of a group's members, in order; ``await wait()`` returns ``list[R]``.

    A member is an :class:`AsyncResult`, or a ``GroupResult`` for a member that ends in a
    group (its value is a list). Everything :class:`ResultSet` has, and an id: ``save()``
    it, ``await app.GroupResult.restore(id)`` it anywhere.
    """

    def __init__(
        self,
        app: App,
        id: str,
        results: Sequence[AsyncResult[Any] | GroupResult[Any]],
        *,
        parent: AsyncResult[Any] | GroupResult[Any] | None = None,
    ) -> None:
        super().__init__(results, app=app)
        self.id = id
        self.parent: AsyncResult[Any] | GroupResult[Any] | None = parent
        #: every task id of the workflow this group ends, when it came from one
        self.workflow_ids: list[str] | None = None

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{len(self.results)}]>"

    def _label(self) -> str:
        return f"group {self.id}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self.id
        return isinstance(other, GroupResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def children(self) -> list[AsyncResult[Any] | GroupResult[Any]]:
        """The members' results (Celery's name)."""
        return self.results

    @property
    def sync(self) -> SyncGroupResult[R]:
        """The blocking view (``group_result.sync.get(timeout=10)``)."""
        from .blocking import SyncGroupResult

        return SyncGroupResult(self)

    @query
    async def revoke(self, *, terminate: bool = False) -> None:
        """Revoke every member (every node of the workflow this group ends, if it ends one)."""
        ids = self.workflow_ids or [r.id for r in self._leaves()]
        if ids:
            await self.app.control.revoke(ids, terminate=terminate)

    @query
    async def forget(self) -> None:
        """Delete every member's stored result and the saved group."""
        backend = await self.app.result_backend()
        for r in self._leaves():
            await backend.forget(r.id)
        await backend.forget(_GROUP_META + self.id)

    @query
    async def save(self) -> None:
        """Store the group (members, nesting, parents) for ``app.GroupResult.restore(id)``."""
        backend = await self.app.result_backend()
        fmt = check_serializer(self.app.conf.task_serializer)
        record = ResultOut(id=self.id, state="META", value=self.as_tuple())
        await backend.store(
            _GROUP_META + self.id,
            encode(record, fmt),
            state="META",
            attempt=0,
            ttl=self.app.conf.result_expires,
        )

    async def collect(
        self, timeout: float | None = None
    ) -> AsyncIterator[tuple[AsyncResult[Any] | GroupResult[Any], Any]]:
        """Yield ``(result, value)`` for each member, depth first, then for the group."""
        for member in self.results:
            async for pair in member.collect(timeout=timeout):
                yield pair
        yield self, await self.wait(timeout=timeout)

    def as_tuple(self) -> ResultTuple:
        """Celery's tuple form: ``((id, parent_tuple), [member tuples])``."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return ((self.id, parent), [r.as_tuple() for r in self.results])


def _overall(result: AsyncResult[Any] | GroupResult[Any], by_id: dict[str, str]) -> str:
    """A member's state; a nested group is SUCCESS, the first failure, or not ready."""
    if isinstance(result, AsyncResult):
        return by_id[result.id]
    inner = [_overall(r, by_id) for r in result.results]
    unready = [s for s in inner if s not in states.READY_STATES]
    if unready:
        return unready[0]
    return next((s for s in inner if s != states.SUCCESS), states.SUCCESS)


class GroupResults:
    """``app.GroupResult``: build one (``app.GroupResult(id, results)``) or restore a saved one."""

    def __init__(self, app: App) -> None:
        self.app = app

    def __call__(
        self,
        id: str,
        results: Sequence[AsyncResult[Any] | GroupResult[Any]],
        *,
        parent: AsyncResult[Any] | GroupResult[Any] | None = None,
    ) -> GroupResult[Any]:
        return GroupResult(self.app, id, results, parent=parent)

    async def restore(self, group_id: str) -> GroupResult[Any]:
        """A group saved with ``save()``, from any process (an empty group too)."""
        backend = await self.app.result_backend()
        raw = await backend.get(_GROUP_META + group_id)
        if raw is None:
            raise ConfigurationError(f"no saved group {group_id} (never saved, or expired)")
        saved = decode(
            decode_result(raw, self.app.conf.max_result_bytes).value, Any, format_of(raw)
        )
        group = result_from_tuple(self.app, saved)
        if not isinstance(group, GroupResult):
            raise DecodeError(f"saved group {group_id} is not a group")
        return group


@overload
def result_from_tuple(
    app: App, value: ResultTuple | list[Any], /
) -> AsyncResult[Any] | GroupResult[Any]: ...
@overload
def result_from_tuple(
    value: ResultTuple | list[Any], /, *, app: App
) -> AsyncResult[Any] | GroupResult[Any]: ...
def result_from_tuple(*given: Any, app: App | None = None) -> AsyncResult[Any] | GroupResult[Any]:
    """Rebuild a result tree from ``as_tuple()`` (e.g. after JSON), parents included.

    ``result_from_tuple(app, t)``, or Celery's ``result_from_tuple(t, app=app)``. Tuples
    written by Celery's ``as_tuple()`` are read too.
    """
    if app is None:
        if len(given) != 2:
            raise TypeError("result_from_tuple(app, value) or result_from_tuple(value, app=app)")
        app, value = given
    else:
        [value] = given
    return _from_tuple(app, value)


def _from_tuple(app: App, value: Any) -> AsyncResult[Any] | GroupResult[Any]:
    head, members = value
    task_id, parent = (head, None) if isinstance(head, str) else head
    parent_result = _from_tuple(app, parent) if parent else None
    if members is not None:
        return GroupResult(
            app, task_id, [_from_tuple(app, m) for m in members], parent=parent_result
        )
    return AsyncResult(app, task_id, parent=parent_result)
