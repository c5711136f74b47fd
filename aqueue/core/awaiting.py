"""What aqueue's Celery-named calls return, so that the synchronous Celery idiom fails loudly.

Celery's ``add.delay(2, 2)`` sends at once and ``result.state`` is a value; in aqueue both
need ``await``. Without it Python only warns (if anyone reads warnings), and ``if
result.ready():`` or ``result.state == "PENDING"`` quietly give a wrong answer. So:

* sending calls (``delay``, ``apply_async``, ``send_task``, a canvas's ``delay``...) return an
  :class:`Awaiting`: a coroutine that, if it is dropped without being awaited, is logged at
  ERROR on ``aqueue.app`` with the line that made it (nothing was sent);
* reads of the result backend (``result.state()``, ``ready()``, ``successful()``,
  ``failed()``, ``wait()``...) are :func:`query` methods: the method itself refuses to be
  compared or tested for truth (``result.state == "PENDING"``, ``if result.ready:``), and
  the :class:`Awaiting` it returns refuses to be tested for truth or compared (``if
  result.ready():``). Each raises :class:`~aqueue.core.errors.AsyncUsageError` naming the
  async spelling.

The cost on ``delay()``'s path is one small object (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Concatenate, Final, Generic, NoReturn, ParamSpec, TypeVar

from .errors import AsyncUsageError

T = TypeVar("T")
P = ParamSpec("P")
S = TypeVar("S")

log = logging.getLogger("aqueue.app")

#: what ``Awaiting._method`` becomes once it is awaited (or driven, or closed)
_AWAITED: Final = "\0awaited"


class Awaiting(Coroutine[Any, Any, T]):
    """A call that does nothing until awaited: ``await add.delay(2, 2)``.

    A coroutine (``asyncio.create_task`` and ``gather`` take it). Dropped without being
    awaited, it is logged at ERROR with the line where it was dropped (for ``add.delay(2,
    2)`` as a statement: that line). It cannot be tested for truth or compared: ``if
    result.ready():`` would always be true.
    """

    # kept to three slots and no frame lookup: this is on every delay()'s path
    __slots__ = ("_coro", "_method", "_owner")

    def __init__(
        self, coro: Coroutine[Any, Any, T], owner: object = None, method: str = ""
    ) -> None:
        self._coro = coro
        # named only when an error is reported: no string formatting on delay()'s path
        self._owner = owner
        self._method = method

    def __await__(self) -> Generator[Any, None, T]:
        self._method = _AWAITED
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        self._method = _AWAITED
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        self._method = _AWAITED
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - the legacy 3-arg form

    def close(self) -> None:
        self._method = _AWAITED
        self._coro.close()

    def __bool__(self) -> NoReturn:
        what = self._what()
        self.close()
        raise AsyncUsageError(f"{what} is a coroutine, always true: test `await {what}` instead")

    def __eq__(self, other: object) -> NoReturn:
        what = self._what()
        self.close()
        raise AsyncUsageError(f"{what} is a coroutine: compare `await {what}`")

    __hash__ = object.__hash__  # asyncio.gather keys a dict by its awaitables

    def _what(self) -> str:
        if self._method and self._method is not _AWAITED:
            return f"{_spelled(self._owner)}.{self._method}(...)"
        return getattr(self._coro, "__qualname__", "the call") + "(...)"

    def __repr__(self) -> str:
        return f"<Awaiting {self._what()}>"

    def __del__(self) -> None:
        if self._method is _AWAITED:
            return
        self._coro.close()  # no "never awaited" RuntimeWarning on top of this log
        with contextlib.suppress(Exception):  # at interpreter shutdown logging may be gone
            try:
                dropped_at = sys._getframe(1)  # where the last reference went: that line
                where = f"{dropped_at.f_code.co_filename}:{dropped_at.f_lineno}"
            except ValueError:  # collected with no Python frame running
                where = "unknown"
            log.error(
                "%s was never awaited (dropped at %s): it did nothing; write `await %s`",
                self._what(),
                where,
                self._what(),
            )


def _spelled(owner: object) -> str:
    """How the docs would write the object a call was made on."""
    kind = type(owner).__name__
    if kind in _KINDS:
        return _KINDS[kind]
    name = getattr(owner, "name", None)  # a task or a signature: its task name
    return name if isinstance(name, str) else kind.lower()


_KINDS = {
    "AsyncResult": "result",
    "GroupResult": "group_result",
    "ResultSet": "result_set",
    "App": "app",
    "Chain": "chain",
    "Group": "group",
    "Chord": "chord",
    "ChordHeader": "chord(header)",
}


def awaiting(coro: Coroutine[Any, Any, T], owner: object, method: str) -> Awaiting[T]:
    """Wrap ``coro``, the call ``owner.method(...)``."""
    return Awaiting(coro, owner, method)


class _Query(Generic[S, T]):
    """The descriptor :func:`query` makes (see the module docstring)."""

    def __init__(self, read: Callable[..., Coroutine[Any, Any, T]]) -> None:
        self.read = read
        self.name = read.__name__
        self.__doc__ = read.__doc__

    def __get__(self, obj: S | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return _BoundQuery(self, obj)


class _BoundQuery:
    """``result.state``: call and await it; anything else is a mistake and says so."""

    __slots__ = ("_obj", "_query")

    def __init__(self, query: _Query[Any, Any], obj: Any) -> None:
        self._query = query
        self._obj = obj

    def __call__(self, *args: Any, **kwargs: Any) -> Awaiting[Any]:
        return Awaiting(self._query.read(self._obj, *args, **kwargs), self._obj, self._query.name)

    def _refuse(self, use: str) -> NoReturn:
        spelled = f"{_spelled(self._obj)}.{self._query.name}"
        raise AsyncUsageError(
            f"{use}: in aqueue {spelled} reads the result backend, so it is a coroutine "
            f"method: write `await {spelled}()`"
        )

    def __eq__(self, other: object) -> NoReturn:
        self._refuse(f"comparing {_spelled(self._obj)}.{self._query.name} with {other!r}")

    def __ne__(self, other: object) -> NoReturn:
        self._refuse(f"comparing {_spelled(self._obj)}.{self._query.name} with {other!r}")

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> NoReturn:
        self._refuse(f"testing {_spelled(self._obj)}.{self._query.name} for truth")

    def __str__(self) -> NoReturn:
        self._refuse(f"formatting {_spelled(self._obj)}.{self._query.name}")

    def __format__(self, spec: str) -> NoReturn:
        self._refuse(f"formatting {_spelled(self._obj)}.{self._query.name}")

    def __repr__(self) -> str:
        return f"<query {_spelled(self._obj)}.{self._query.name}: await it>"


def query(
    read: Callable[Concatenate[S, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[S, P], Awaiting[T]]:
    """Make an ``async def`` method of a result a query (see the module docstring).

    To mypy it stays a method, so ``result.state == "PENDING"`` is a comparison-overlap
    error and ``if result.ready:`` a truthy-function error there too.
    """
    return _Query(read)  # type: ignore[return-value]
