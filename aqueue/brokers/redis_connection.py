"""Redis plumbing shared by the Redis broker and the Redis result backend.

Deadlines and error mapping (``guarded``), Lua script execution with one round trip per
batch, and a small coalescer that turns many concurrent calls into one batched call. The
URL, options and client factories are in :mod:`aqueue.brokers.redis_settings`.

Nothing here does I/O at import time, and nothing here ever formats a password: every
message goes through :meth:`RedisSettings.scrub` or uses :attr:`RedisSettings.redacted`.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aqueue.core.errors import AqueueError

from .redis_settings import RedisSettings, tls_failure

T = TypeVar("T")
R = TypeVar("R")


def command(target: Any, *args: Any) -> Any:
    """``target.execute_command(*args)``: a client, a pipeline, async or blocking.

    redis-py's typed command wrappers return ``Awaitable[T] | T`` unions and add a Python
    call layer per command; the raw form is both cheaper and simpler to type.
    """
    return target.execute_command(*args)


def pack_fields(fields: Sequence[bytes | str]) -> tuple[bytes, bytes]:
    """Pack many script arguments into two: big-endian u32 lengths, and the joined bytes.

    redis-py encodes and frames every argument in Python (microseconds each, and its
    asyncio framing re-copies a growing buffer); a batch of a thousand settlements would
    spend more time there than in Redis. The scripts split the pair back (``split``).
    """
    encoded = [f if isinstance(f, bytes) else f.encode() for f in fields]
    return struct.pack(f">{len(encoded)}I", *map(len, encoded)), b"".join(encoded)


def pack_command(*args: str | bytes | int | float) -> bytes:
    """One command in the Redis protocol (RESP), framed in one pass.

    redis-py's ``pack_command`` costs tens of microseconds for a script call of a dozen
    arguments (an encoder call and several buffer copies per argument); on the paths that
    send one command per task (a lone ``delay()``), that was a fifth of the publish.
    Strings are UTF-8, numbers as redis-py formats them (``repr`` of a float).
    """
    return b"*%d\r\n%s" % (len(args), _frame(args))


def _frame(args: Sequence[str | bytes | int | float]) -> bytes:
    parts: list[bytes] = []
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


class Script:
    """A Lua script run by SHA, loaded on first ``NOSCRIPT`` (e.g. after a restart)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


#: one script invocation: (script, keys, args)
ScriptCall = tuple[Script, Sequence[str | bytes], Sequence[str | bytes | int | float]]

#: framed "EVALSHA <sha> <numkeys> <keys...>" per script and key set (one per queue, in
#: practice), so a call frames only its arguments
_HEADS: dict[tuple[str, tuple[str | bytes, ...]], bytes] = {}


def pack_script_call(call: ScriptCall) -> bytes:
    """``EVALSHA`` of one script call, framed (see :func:`pack_command`)."""
    script, keys, args = call
    key = (script.sha, tuple(keys))
    head = _HEADS.get(key)
    if head is None:
        head = _frame(["EVALSHA", script.sha, len(keys), *keys])
        if len(_HEADS) < 4096:
            _HEADS[key] = head
    return b"*%d\r\n%s%s" % (3 + len(keys) + len(args), head, _frame(args))


async def run_scripts(client: aioredis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run script calls in one round trip (a pipeline when several), returning their replies.

    Raises the first error reply. Error text never includes the arguments (message bodies);
    redis-py's pipeline would add them, so errors are collected with ``raise_on_error=False``.
    """
    if len(calls) == 1:
        script, keys, args = calls[0]
        try:
            return [await command(client, "EVALSHA", script.sha, len(keys), *keys, *args)]
        except NoScriptError:
            await command(client, "SCRIPT", "LOAD", script.source)
            return [await command(client, "EVALSHA", script.sha, len(keys), *keys, *args)]
    results: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _ in range(2):
        pipe = client.pipeline(transaction=False)
        for i in todo:
            script, keys, args = calls[i]
            command(pipe, "EVALSHA", script.sha, len(keys), *keys, *args)
        replies = await pipe.execute(raise_on_error=False)
        missing: list[int] = []
        for i, reply in zip(todo, replies, strict=True):
            if isinstance(reply, NoScriptError):
                missing.append(i)
            elif isinstance(reply, Exception):
                raise reply
            else:
                results[i] = reply
        if not missing:
            return results
        # NOSCRIPT means the call did not run, so re-sending it cannot apply it twice.
        for source in {calls[i][0].source for i in missing}:
            await command(client, "SCRIPT", "LOAD", source)
        todo = missing
    raise RedisError("scripts could not be loaded")


class NotSent(RedisError):
    """No connection could be made for a call: nothing of it was sent, so it did not run."""


async def run_scripts_once(client: aioredis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """:func:`run_scripts` for calls that must never be sent twice (publishes).

    redis-py's retry re-sends a command whose connection failed, whether or not the server
    had already run it. For a publish, that turns a lost reply into a silent second send
    (refused as a duplicate, or, with no dedupe window, enqueued twice). Here a connection
    is checked out first (connecting and health-checking with redis-py's retries: nothing
    of the call is on the wire yet), then the call is written exactly once; a connection
    error after that propagates, and the caller reports the outcome as unknown.

    Raises:
        NotSent: no usable connection could be made; the calls certainly did not run.
        redis.exceptions.ConnectionError: the connection failed after the calls were
            (maybe partly) written: they may or may not have run.
    """
    # typed Any: redis-py's pool and connection methods are unannotated
    pool: Any = client.connection_pool
    try:
        conn = await pool.get_connection()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise NotSent(f"could not connect, nothing was sent ({exc})") from exc
    try:
        return await run_scripts_on_checked(conn, calls)
    finally:
        # a connection whose call failed or was cancelled was disconnected by redis-py;
        # the pool reconnects it before its next use
        await pool.release(conn)


async def run_scripts_on_checked(conn: Any, calls: Sequence[ScriptCall]) -> list[Any]:
    """:func:`run_scripts_on` after (re)connecting ``conn`` and checking its health.

    Raises:
        NotSent: the connection could not be made usable; nothing was written.
    """
    try:
        if not conn.is_connected:
            await conn.connect()
        await conn.check_health()  # a PING if it sat idle too long: still ours unsent
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise NotSent(f"connection unusable, nothing was sent ({exc})") from exc
    return await run_scripts_on(conn, calls)


async def run_scripts_on(conn: Any, calls: Sequence[ScriptCall]) -> list[Any]:
    """Write script calls once on a connection the caller holds and read every reply.

    For calls that must not be re-sent (see :func:`run_scripts_once`): nothing here
    retries after the write, except a call the server refused unrun (``NOSCRIPT``).
    """
    results: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _ in range(2):
        packed = [pack_script_call(calls[i]) for i in todo]
        await conn.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        for _ in packed:  # every reply is read, so the connection stays in step
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        missing: list[int] = []
        failure: Exception | None = None
        for i, reply in zip(todo, replies, strict=True):
            if isinstance(reply, NoScriptError):
                missing.append(i)
            elif isinstance(reply, Exception):
                failure = failure or reply
            else:
                results[i] = reply
        if failure is not None:
            raise failure
        if not missing:
            return results
        # NOSCRIPT means the call did not run, so sending it again cannot apply it twice.
        for source in {calls[i][0].source for i in missing}:
            await conn.send_command("SCRIPT", "LOAD", source, check_health=False)
            await conn.read_response()
        todo = missing
    raise RedisError("scripts could not be loaded")


def run_scripts_sync(client: redis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """The blocking twin of :func:`run_scripts`."""
    results: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _ in range(2):
        pipe = client.pipeline(transaction=False)
        for i in todo:
            script, keys, args = calls[i]
            command(pipe, "EVALSHA", script.sha, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        missing: list[int] = []
        for i, reply in zip(todo, replies, strict=True):
            if isinstance(reply, NoScriptError):
                missing.append(i)
            elif isinstance(reply, Exception):
                raise reply
            else:
                results[i] = reply
        if not missing:
            return results
        for source in {calls[i][0].source for i in missing}:
            command(client, "SCRIPT", "LOAD", source)
        todo = missing
    raise RedisError("scripts could not be loaded")


class LazySyncClient:
    """A blocking client created on first use, safe to share between threads."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None

    def get(self) -> redis.Redis:
        """The client, created under a lock the first time."""
        with self._lock:
            if self._client is None:
                self._client = self._settings.sync_client()
            return self._client

    def close(self) -> None:
        """Close the client's connections; a later ``get()`` makes a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


async def guarded(
    settings: RedisSettings,
    what: str,
    call: Callable[[], Awaitable[T]],
    *,
    error: type[AqueueError],
    timeout_error: type[AqueueError] | None = None,
    connection_error: type[AqueueError] | None = None,
    deadline: float | None = None,
) -> T:
    """Await ``call()`` within the operation deadline, mapping failures to aqueue errors.

    The overall deadline bounds the whole call including redis-py's retries, so a frozen
    server fails the call at ``operation_timeout`` rather than after every retry's socket
    timeout. Cancelling the call disconnects the connection in use (see ``async_client``).

    Args:
        settings: where the call goes (for the deadline and for error text).
        what: the operation, for error text.
        call: makes the awaitable to run.
        error: raised for any other Redis failure (an error reply, a refused connection).
        timeout_error: raised when the deadline passes (default ``error``).
        connection_error: raised when the connection failed or timed out mid-call, after
            retries (default ``error``); a publish uses it to say the outcome is unknown.
        deadline: seconds, instead of ``settings.operation_timeout``.
    """
    limit = settings.operation_timeout if deadline is None else deadline
    try:
        async with asyncio.timeout(limit):
            return await call()
    except TimeoutError:
        cls = timeout_error or error
        raise cls(f"{what} on {settings.redacted} did not complete within {limit:g}s") from None
    except (RedisConnectionError, RedisTimeoutError) as exc:
        # a failed TLS handshake sent nothing: it is never "outcome unknown"
        cls = error if tls_failure(exc) else connection_error or error
        raise cls(f"{what} on {settings.redacted} failed: {settings.describe(exc)}") from None
    except RedisError as exc:
        raise error(f"{what} on {settings.redacted} failed: {settings.describe(exc)}") from None
    except OSError as exc:
        raise error(f"{what} on {settings.redacted} failed: {settings.describe(exc)}") from None


class Coalescer(Generic[T, R]):
    """Group calls made close together into one batched call (group commit).

    ``submit`` queues an item and returns a future. A single flusher task sends everything
    queued so far in one ``flush(items)`` call; items arriving while a flush is in flight
    go in the next one, so batches grow with load and a lone call pays one loop tick.
    An item is flushed even if its caller was cancelled meanwhile (an ack still happens).
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]], max_batch: int) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Nothing is queued or being flushed."""
        return self._task is None and not self._pending

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future resolves to its result or raises the batch's error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = loop.create_task(self._run())
        return future

    async def drain(self) -> None:
        """Wait until everything submitted so far has been flushed."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None
