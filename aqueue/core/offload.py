"""CPU-bound work in a recycled process pool: ``offload="process"`` and ``await offload(...)``.

A :class:`ProcessPool` keeps ``size`` child interpreters (started fresh, as ``spawn`` does:
forking a process that runs an event loop and threads is unsafe) and runs one call at a time
in each. Nothing is pickled (see :mod:`aqueue.core.offload_wire`): a function travels as its
module and qualified name, arguments and results as msgpack, decoded against the function's
annotations on each side so a ``msgspec.Struct`` or a tuple arrives as one.

Limits match :mod:`aqueue.core.limits`: at the soft limit the child gets ``SIGUSR1``, which
raises :class:`SoftTimeLimitExceeded` inside the running function; at the hard limit the
child is killed (``SIGKILL``) and replaced, and the call raises :class:`TimeLimitExceeded`.
Both are counted from when a child takes the call. A child that dies mid-call fails that call
with :class:`WorkerLostError` and is replaced. Children are recycled between calls after
``max_tasks_per_child`` calls or when their resident memory passes ``max_memory_per_child``
KiB.

Exceptions from a child keep their type name, message and traceback text: builtin exceptions
and aqueue errors are rebuilt as the same type, anything else as a :class:`RemoteError`
subclass named like the original; ``exc.__cause__`` is a :class:`RemoteTraceback`.

POSIX only (signals, ``/proc``). A pool belongs to the event loop it is first used on.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import logging
import os
import signal
import sys
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast

import msgspec

from .errors import ConfigurationError, SoftTimeLimitExceeded, TimeLimitExceeded
from .offload_child import BOOTSTRAP, PATH_ENV
from .offload_wire import (
    HEADER,
    MAX_FRAME,
    Call,
    Ready,
    RemoteError,
    RemoteTraceback,
    Reply,
    WorkerLostError,
    decode_result,
    encoder,
    rebuild_exception,
    reference,
)

__all__ = [
    "ProcessPool",
    "RemoteError",
    "RemoteTraceback",
    "WorkerLostError",
    "close_default_pool",
    "current_pool",
    "offload",
    "reset_current_pool",
    "set_current_pool",
]

log = logging.getLogger("aqueue.offload")

P = ParamSpec("P")
R = TypeVar("R")

#: seconds a new child may take to import aqueue and say it is ready
START_TIMEOUT: Final = 60.0
#: seconds an exiting child gets before it is killed
_EXIT_GRACE: Final = 5.0

_frame_decoder: msgspec.msgpack.Decoder[Ready | Reply] = msgspec.msgpack.Decoder(Ready | Reply)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _Child:
    """One child process: its pipes, its call count, and whether it is mid-call."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.calls = 0
        self.busy = False
        self._interrupted = False

    def signal(self, signum: int) -> None:
        # os.kill, not proc.send_signal: Popen.send_signal polls with waitpid and can steal
        # the exit status from asyncio's child watcher.
        if self.proc.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def close_input(self) -> None:
        """EOF on the child's input: an idle child exits cleanly."""
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    def interrupt(self) -> None:
        """Deliver the soft time limit, once per call."""
        if not self._interrupted:
            self._interrupted = True
            self.signal(signal.SIGUSR1)

    async def read_frame(self) -> Ready | Reply:
        stdout = self.proc.stdout
        assert stdout is not None
        header = await stdout.readexactly(HEADER.size)
        body = await stdout.readexactly(HEADER.unpack(header)[0])
        return _frame_decoder.decode(body)

    async def _exchange(self, frame: bytes) -> Reply:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(frame)
        await stdin.drain()
        reply = await self.read_frame()
        if not isinstance(reply, Reply):
            raise EOFError("pool process sent a second Ready frame")
        return reply

    async def call(self, frame: bytes, soft: float | None, hard: float | None) -> Reply:
        """Send one call and wait for its reply, applying the limits.

        Raises:
            TimeoutError: the hard limit passed (the child is still running).
            EOFError: the child died (``ConnectionError`` if it died before reading).
        """
        self._interrupted = False
        timer: asyncio.TimerHandle | None = None
        if soft is not None and (hard is None or soft < hard):
            timer = asyncio.get_running_loop().call_later(soft, self.interrupt)
        exchange = asyncio.ensure_future(self._exchange(frame))
        try:
            async with asyncio.timeout(hard):
                while True:
                    try:
                        return await asyncio.shield(exchange)
                    except SoftTimeLimitExceeded:
                        # The awaiting task's own soft limit (``offload()`` inside an async
                        # task) was thrown here: pass it on to the function doing the work.
                        self.interrupt()
        finally:
            if timer is not None:
                timer.cancel()
            if not exchange.done():
                exchange.cancel()
            elif not exchange.cancelled():
                exchange.exception()  # retrieved, so asyncio does not log it as lost


class _Slot:
    """One of the pool's ``size`` places: the child in it, or the one being started."""

    __slots__ = ("child", "starting")

    def __init__(self) -> None:
        self.child: _Child | None = None
        self.starting: asyncio.Task[_Child] | None = None


class ProcessPool:
    """Runs functions in ``size`` child processes, one call per child at a time.

    Usable as ``async with ProcessPool(4) as pool: await pool.run(fn, (1,), {})``.

    Args:
        size: the number of children, and of calls running at once.
        max_tasks_per_child: replace a child after this many calls.
        max_memory_per_child: replace a child after a call that leaves its resident memory
            above this many KiB (Celery's ``worker_max_memory_per_child``).

    Raises:
        ConfigurationError: a size or maximum below 1.
    """

    def __init__(
        self,
        size: int,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
    ) -> None:
        for name, value in (
            ("size", size),
            ("max_tasks_per_child", max_tasks_per_child),
            ("max_memory_per_child", max_memory_per_child),
        ):
            if value is not None and value < 1:
                raise ConfigurationError(f"ProcessPool {name} must be at least 1, not {value}")
        self.size = size
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self._slots = [_Slot() for _ in range(size)]
        # last in, first out: a call takes the slot freed last, whose child is warm, so a
        # pool never started runs only as many children as calls have needed at once
        self._free: asyncio.LifoQueue[_Slot] = asyncio.LifoQueue()
        for slot in self._slots:
            self._free.put_nowait(slot)
        #: every child started and not yet reaped
        self._children: set[_Child] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<ProcessPool size={self.size} pids={self.pids}>"

    @property
    def pids(self) -> list[int]:
        """Process ids of the children alive now (including any being replaced)."""
        return sorted(c.pid for c in self._children if c.proc.returncode is None)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def __aenter__(self) -> ProcessPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every child now and wait until they are ready (idempotent).

        Optional: :meth:`run` starts a child on demand, so a pool never started only ever
        runs as many children as calls have needed at once.

        Raises:
            WorkerLostError: a child died or hung while starting (its stderr says why).
        """
        if self._closed:
            raise RuntimeError("this ProcessPool is closed")
        await asyncio.gather(
            *(self._await_fill(slot) for slot in self._slots if slot.child is None)
        )

    async def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        soft: float | None = None,
        hard: float | None = None,
    ) -> Any:
        """Call ``fn(*args, **kwargs)`` in a child; waits for a free child first.

        Args:
            fn: a module-level function, or an aqueue ``Task`` (the child runs its function).
            args: positional arguments, each encodable by msgspec.
            kwargs: keyword arguments, each encodable by msgspec.
            soft: seconds until ``SoftTimeLimitExceeded`` is raised inside ``fn``.
            hard: seconds until the child is killed.

        Returns:
            What ``fn`` returned, decoded against its return annotation.

        Raises:
            ConfigurationError: ``fn`` cannot be imported by name in a child.
            TypeError: an argument or the result cannot be encoded with msgpack.
            TimeLimitExceeded: the hard limit passed; the child was killed.
            WorkerLostError: the child died during the call.
            RuntimeError: the pool is closed.
            Exception: what ``fn`` raised, rebuilt (see the module docstring).
        """
        module, qualname, result_type = reference(fn)
        where = f"{module}.{qualname}"
        try:
            call = Call(
                module,
                qualname,
                msgspec.Raw(encoder.encode(args)),
                msgspec.Raw(encoder.encode(kwargs)),
                soft,
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(
                f"the arguments of {where} cannot be sent to a child process: msgpack cannot "
                f"encode them ({exc})"
            ) from None
        body = encoder.encode(call)
        if len(body) > MAX_FRAME:
            raise ValueError(f"the arguments of {where} are over 4 GiB encoded")
        if self._closed:
            raise RuntimeError("this ProcessPool is closed")
        slot = await self._free.get()
        try:
            if self._closed:
                raise RuntimeError("this ProcessPool is closed")
            child = slot.child
            if child is not None and child.proc.returncode is not None:
                self._discard(slot, child, kill=True)  # died while idle: replace, do not blame
                child = None
            if child is None:
                child = await self._await_fill(slot)
            reply = await self._call(slot, child, HEADER.pack(len(body)) + body, soft, hard, where)
        finally:
            self._free.put_nowait(slot)
        if reply.error is not None:
            raise rebuild_exception(reply.error)
        return decode_result(reply.value, result_type)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop every child and reap it; idempotent.

        Idle children are told to exit, children mid-call get ``SIGTERM`` (their calls fail
        with :class:`WorkerLostError`), and any still alive after ``timeout`` seconds are
        killed.
        """
        self._closed = True
        starting = [slot.starting for slot in self._slots if slot.starting is not None]
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        children = list(self._children)
        for child in children:
            if child.busy:
                child.signal(signal.SIGTERM)
            else:
                child.close_input()
        for slot in self._slots:
            slot.child = None
        if children:
            waits = [asyncio.ensure_future(child.proc.wait()) for child in children]
            await asyncio.wait(waits, timeout=timeout)
            for child in children:
                child.signal(signal.SIGKILL)
            await asyncio.gather(*waits)
            self._children.difference_update(children)
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def kill_now(self) -> None:
        """``SIGKILL`` every child without waiting (for interpreter exit; prefer close)."""
        self._closed = True
        for child in list(self._children):
            child.signal(signal.SIGKILL)

    # -- children -------------------------------------------------------------------------

    def _fill(self, slot: _Slot) -> asyncio.Task[_Child]:
        """The task starting this slot's child, started now if it is not already."""
        if slot.starting is None or slot.starting.done():  # done: cancelled before it ran
            slot.starting = asyncio.ensure_future(self._start_child(slot))
            slot.starting.add_done_callback(_log_start_failure)
        return slot.starting

    async def _await_fill(self, slot: _Slot) -> _Child:
        """Wait for the slot's child; a caller that gives up does not stop the start."""
        fill = self._fill(slot)
        try:
            return await asyncio.shield(fill)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if fill.cancelled() and self._closed and (task is None or not task.cancelling()):
                # close() stopped the start; this caller was not cancelled itself.
                raise RuntimeError("this ProcessPool was closed") from None
            raise

    async def _start_child(self, slot: _Slot) -> _Child:
        try:
            child = await self._spawn()
            slot.child = child
            return child
        finally:
            slot.starting = None

    async def _spawn(self) -> _Child:
        env = dict(os.environ)
        env[PATH_ENV] = json.dumps([p for p in sys.path if isinstance(p, str)])
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            BOOTSTRAP,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        child = _Child(proc)
        self._children.add(child)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                ready = await child.read_frame()
        except (EOFError, ConnectionError):
            code = await self._reap(child)
            raise WorkerLostError(
                f"pool process {child.pid} {_exit_text(code)} before it was ready "
                "(its stderr says why)",
                pid=child.pid,
                exitcode=code,
            ) from None
        except TimeoutError:
            self._discard(None, child, kill=True)
            raise WorkerLostError(
                f"pool process {child.pid} was not ready within {START_TIMEOUT}s",
                pid=child.pid,
                exitcode=None,
            ) from None
        except BaseException:
            self._discard(None, child, kill=True)
            raise
        if not isinstance(ready, Ready):
            self._discard(None, child, kill=True)
            raise WorkerLostError(
                f"pool process {child.pid} did not start properly", pid=child.pid, exitcode=None
            )
        log.debug("pool process %d started", child.pid)
        return child

    async def _reap(self, child: _Child) -> int:
        """Wait for ``child`` to exit (killing it after a grace period); its exit code."""
        try:
            async with asyncio.timeout(_EXIT_GRACE):
                code = await child.proc.wait()
        except TimeoutError:
            child.signal(signal.SIGKILL)
            code = await child.proc.wait()
        self._children.discard(child)
        return code

    def _discard(self, slot: _Slot | None, child: _Child, *, kill: bool) -> None:
        """Take ``child`` out of service (killed, or let exit), start its replacement."""
        if kill:
            child.signal(signal.SIGKILL)
        else:
            child.close_input()
        task = asyncio.ensure_future(self._reap(child))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if slot is not None and slot.child is child:
            slot.child = None
            if not self._closed:
                self._fill(slot)  # in the background, so the next call waits less

    async def _call(
        self,
        slot: _Slot,
        child: _Child,
        frame: bytes,
        soft: float | None,
        hard: float | None,
        where: str,
    ) -> Reply:
        child.busy = True
        try:
            reply = await child.call(frame, soft, hard)
        except TimeoutError:
            log.warning(
                "%s ran past its time limit (%ss): killing pool process %d", where, hard, child.pid
            )
            self._discard(slot, child, kill=True)
            await self._reap(child)
            raise TimeLimitExceeded(f"time limit ({hard}s) exceeded") from None
        except (EOFError, ConnectionError):
            self._discard(slot, child, kill=True)
            code = await self._reap(child)
            text = _exit_text(code)
            if self._closed:
                text += " (the pool was closed)"
            else:
                log.warning("pool process %d %s while running %s", child.pid, text, where)
            raise WorkerLostError(
                f"the process running {where} (pid {child.pid}) {text}",
                pid=child.pid,
                exitcode=code,
            ) from None
        except BaseException:
            # Cancelled mid-call: nobody will read the reply, so the child cannot be reused.
            self._discard(slot, child, kill=True)
            raise
        finally:
            child.busy = False
        child.calls += 1
        reason = self._recycle_reason(child, reply)
        if reason is not None:
            log.info("recycling pool process %d: %s", child.pid, reason)
            self._discard(slot, child, kill=False)
        return reply

    def _recycle_reason(self, child: _Child, reply: Reply) -> str | None:
        if self.max_tasks_per_child is not None and child.calls >= self.max_tasks_per_child:
            return f"{child.calls} calls (max_tasks_per_child)"
        if self.max_memory_per_child is not None and reply.rss_kib > self.max_memory_per_child:
            return (
                f"resident memory {reply.rss_kib} KiB > {self.max_memory_per_child} KiB "
                "(max_memory_per_child)"
            )
        return None


def _log_start_failure(task: asyncio.Task[_Child]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not start a pool process: %s", task.exception())


# -- the pool of the running task ---------------------------------------------------------

_current: contextvars.ContextVar[ProcessPool | None] = contextvars.ContextVar(
    "aqueue_process_pool", default=None
)
_default_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProcessPool] = (
    weakref.WeakKeyDictionary()
)


def current_pool() -> ProcessPool | None:
    """The pool :func:`offload` uses in this context (set by the worker), or ``None``."""
    return _current.get()


def set_current_pool(pool: ProcessPool | None) -> contextvars.Token[ProcessPool | None]:
    """Make ``pool`` the one :func:`offload` uses here; pass the token to the reset."""
    return _current.set(pool)


def reset_current_pool(token: contextvars.Token[ProcessPool | None]) -> None:
    """Undo :func:`set_current_pool`."""
    _current.reset(token)


def _default_pool() -> ProcessPool:
    loop = asyncio.get_running_loop()
    pool = _default_pools.get(loop)
    if pool is None or pool.closed:
        if not _default_pools:
            atexit.register(_kill_default_pools)
        pool = ProcessPool(os.cpu_count() or 1)
        _default_pools[loop] = pool
    return pool


def _kill_default_pools() -> None:
    for pool in list(_default_pools.values()):
        pool.kill_now()


async def close_default_pool(timeout: float = 5.0) -> None:
    """Close the default pool of the running event loop, if :func:`offload` made one."""
    pool = _default_pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close(timeout)


async def offload(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn(*args, **kwargs)`` in a child process and return its result.

    Inside a task run by a worker this uses the worker's pool, and the task's time limits
    apply: the soft limit is raised inside ``fn`` in the child, the hard limit kills the
    child. Elsewhere it uses a default pool for the running event loop (as many children as
    CPUs, each started on first need), killed at interpreter exit or closed earlier by
    :func:`close_default_pool`.

    ``fn`` must be importable by module and name (no lambdas, no nested functions), and its
    arguments and result encodable by msgspec; see :meth:`ProcessPool.run`.
    """
    pool = _current.get()
    if pool is None:
        pool = _default_pool()
    return cast(R, await pool.run(fn, args, kwargs))
