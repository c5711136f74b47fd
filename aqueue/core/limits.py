"""Time limits: a soft one raised inside the task, a hard one that stops it.

``async def`` tasks: the soft limit raises :class:`SoftTimeLimitExceeded` *inside* the
coroutine at its current ``await`` (so ``except SoftTimeLimitExceeded:`` can clean up); the
hard limit cancels it and the task fails with :class:`TimeLimitExceeded`.

``def`` tasks in threads: the soft limit raises :class:`SoftTimeLimitExceeded` in the thread
at its next Python bytecode (not inside a blocking C call); at the hard limit the worker
stops waiting, fails the task and frees the slot, but a thread cannot be killed: a task
that must be killable uses ``offload="process"``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any

from .errors import SoftTimeLimitExceeded, TimeLimitExceeded


class _Interruptible:
    """Drives a coroutine step by step so a pending exception can replace a cancellation.

    asyncio cancels a task by throwing ``CancelledError`` at its current ``await``. When the
    soft limit fires we cancel the running task and, as that ``CancelledError`` passes
    through here, throw ``SoftTimeLimitExceeded`` into the coroutine instead.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self.pending: BaseException | None = None

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is not None:
                    exc, error = error, None
                    yielded = coro.throw(exc)
                else:
                    yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value
            try:
                value = yield yielded
            except BaseException as exc:
                value = None
                if isinstance(exc, asyncio.CancelledError) and self.pending is not None:
                    replacement, self.pending = self.pending, None
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    error = replacement
                else:
                    error = exc


async def run_coroutine(
    coro: Coroutine[Any, Any, Any], *, soft: float | None, hard: float | None
) -> Any:
    """Await ``coro`` under the limits (seconds; ``None`` for none)."""
    if soft is None and hard is None:
        return await coro
    driver = _Interruptible(coro)
    task = asyncio.current_task()
    assert task is not None
    timer: asyncio.TimerHandle | None = None
    if soft is not None and (hard is None or soft < hard):

        def fire() -> None:
            driver.pending = SoftTimeLimitExceeded(f"soft time limit ({soft}s) exceeded")
            task.cancel()

        timer = asyncio.get_running_loop().call_later(soft, fire)
    try:
        async with asyncio.timeout(hard):
            return await driver
    except TimeoutError:
        raise TimeLimitExceeded(f"time limit ({hard}s) exceeded") from None
    finally:
        if timer is not None:
            timer.cancel()


def _raise_in_thread(ident: int, exc_type: type[BaseException]) -> None:
    import ctypes  # only here: it costs every worker ~0.4 MiB otherwise

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def run_in_thread(
    pool: Executor, call: Callable[[], Any], *, soft: float | None, hard: float | None
) -> Any:
    """Run ``call`` in ``pool`` under the limits (see the module docstring)."""
    loop = asyncio.get_running_loop()
    if soft is None and hard is None:
        return await loop.run_in_executor(pool, call)
    ident: list[int] = []
    finished = threading.Event()

    def target() -> Any:
        ident.append(threading.get_ident())
        try:
            return call()
        finally:
            finished.set()

    future = loop.run_in_executor(pool, target)
    timer: asyncio.TimerHandle | None = None
    if soft is not None and (hard is None or soft < hard):

        def fire() -> None:
            if ident and not finished.is_set():
                _raise_in_thread(ident[0], SoftTimeLimitExceeded)

        timer = loop.call_later(soft, fire)
    try:
        async with asyncio.timeout(hard):
            return await asyncio.shield(future)
    except TimeoutError:
        # abandoned: whatever the thread ends with (TimeLimitExceeded raised into it, or its
        # own outcome) is never awaited, so consume it, or asyncio logs "Future exception
        # was never retrieved" when the future is collected
        future.add_done_callback(_consume_outcome)
        if ident and not finished.is_set():
            _raise_in_thread(ident[0], TimeLimitExceeded)  # best effort: stops Python code
        raise TimeLimitExceeded(f"time limit ({hard}s) exceeded") from None
    finally:
        if timer is not None:
            timer.cancel()
