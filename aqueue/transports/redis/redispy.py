"""Everything aqueue relies on of redis-py beyond its documented client API, in one place.

Also what is version-dependent about redis-py's options: which keywords its connection
classes take, and how it reads a URL query's text.

The hot paths write commands on connections they hold themselves: a lone publish on a
connection of its own (no pool checkout), bulk publishes written exactly once (redis-py's
retry would re-send them), the blocking claim (``BLPOP`` and the claim script in one write,
replies read one by one), the result pub/sub connection. They frame commands here, in one
pass (redis-py's framing costs tens of microseconds per script call), and take, use and
give back connections only through the functions below. The TLS connection classes, which
do the handshake as a step of its own so that a failed one is never retried, are here too:
they override redis-py methods that are not part of its API.

Redis Sentinel: the clients come from redis-py's ``Sentinel.master_for`` (its documented
API), on a pool class that also queues callers; a connection of its own (pub/sub, topics)
is a ``SentinelManagedConnection`` given a small stand-in for its pool, which asks the
sentinels for the master on every connect (the attributes it reads of its pool,
``is_master``, ``check_connection`` and ``get_master_address``, are the same from
redis-py 5.1 to 8). :func:`demoted` knows how a demoted master's ``READONLY`` reaches us.

Version guard: :data:`REDIS_PY` is the installed version, checked against :data:`OLDEST`
(pyproject.toml's floor) at import; where redis-py's internals differ between the versions
allowed, the difference is handled here and nowhere else (``tests/brokers/test_redis.py``
pins both, and ``make test-lowest`` runs the suite on the oldest).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, Final, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster as synccluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.backoff import FullJitterBackoff, NoBackoff
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel

from aqueue.core.errors import ConfigurationError
from aqueue.transports import tls as tls_errors

from .sentinel import SentinelTarget

__all__ = [
    "OLDEST",
    "REDIS_PY",
    "AsyncClient",
    "AsyncRedisCluster",
    "AsyncTLSConnection",
    "Connection",
    "SyncClient",
    "SyncRedisCluster",
    "TLSConnection",
    "TLSHandshakeFailed",
    "async_client",
    "async_cluster_client",
    "async_retry",
    "connect",
    "connection_keywords",
    "demoted",
    "drop",
    "frame",
    "give_back",
    "make_usable",
    "new_connection",
    "pack_command",
    "read_message",
    "read_reply",
    "send",
    "sentinel_async_client",
    "sentinel_sync_client",
    "sentinel_unpooled_connection",
    "sync_client",
    "sync_cluster_client",
    "sync_retry",
    "take",
    "tls_failure",
    "unpooled_connection",
    "url_parser",
]

#: redis-py's asyncio connection class, the type of every connection handed out here
Connection = aioredis.Connection
#: redis-py's Redis Cluster clients
AsyncRedisCluster = aiocluster.RedisCluster
SyncRedisCluster = synccluster.RedisCluster
#: what a broker or backend sends commands through: one server, or a cluster
AsyncClient = aioredis.Redis | aiocluster.RedisCluster
#: the blocking twin of :data:`AsyncClient`
SyncClient = redis.Redis | synccluster.RedisCluster


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:  # a build without a release number: assume it is recent
        return (99, 0)
    return int(match[1]), int(match[2])


#: the installed redis-py, (major, minor)
REDIS_PY: Final = _version(redis.__version__)
#: the oldest redis-py this module supports: the floor in pyproject.toml's ``redis`` extra
OLDEST: Final = (5, 1)

if REDIS_PY < OLDEST:
    raise ConfigurationError(
        f"aqueue needs redis-py >= {OLDEST[0]}.{OLDEST[1]}, found {redis.__version__}: "
        'pip install -U "aqueue[redis]"'
    )

#: redis-py < 5.3 requires a command name for a pool checkout (unused by the pools); later
#: versions take none, and redis-py 6 warns when one is given
_CHECKOUT_ARGS: Final[tuple[str, ...]] = ("_",) if REDIS_PY < (5, 3) else ()


# -- framing -------------------------------------------------------------------------------


def pack_command(*args: str | bytes | int | float) -> bytes:
    """One command in the Redis protocol (RESP), framed in one pass.

    redis-py's ``pack_command`` costs tens of microseconds for a script call of a dozen
    arguments (an encoder call and several buffer copies per argument); on the paths that
    send one command per task (a lone ``delay()``), that was a fifth of the publish.
    Strings are UTF-8, numbers as redis-py formats them (``repr`` of a float).
    """
    return b"*%d\r\n%s" % (len(args), frame(args))


def frame(args: Sequence[str | bytes | int | float]) -> bytes:
    """The arguments of a command, framed, without the leading count (``*<n>``)."""
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


# -- options -------------------------------------------------------------------------------


@cache
def connection_keywords(scheme: str) -> frozenset[str]:
    """Keyword names both of redis-py's connection classes (blocking and asyncio) for
    ``scheme`` (``redis``, ``rediss``, ``unix``) accept, in the installed version.

    Options are checked against this, so a name the installed redis-py does not know (an
    older version) is refused when the URL is parsed instead of at the first connect.
    """
    classes = {
        "redis": (redis.Connection, aioredis.Connection),
        "rediss": (redis.SSLConnection, aioredis.SSLConnection),
        "unix": (redis.UnixDomainSocketConnection, aioredis.UnixDomainSocketConnection),
    }[scheme]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    found: list[set[str]] = []
    for cls in classes:
        names: set[str] = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None and klass is not object:
                params = inspect.signature(init).parameters.values()
                names |= {p.name for p in params if p.kind in kinds}
        found.append(names)
    return frozenset(set.intersection(*found))


def url_parser(name: str) -> Callable[[str], Any] | None:
    """How redis-py reads option ``name``'s text in a URL query (``None``: it keeps the text)."""
    # typed as a mapping to object by redis-py
    return cast("Callable[[str], Any] | None", URL_QUERY_ARGUMENT_PARSERS.get(name))


# -- connections ---------------------------------------------------------------------------
# redis-py's pools and connections are unannotated: typed Any inside these functions only.


async def take(client: AsyncClient) -> Connection:
    """Check a connection out of ``client``'s pool, connected and health-checked.

    Raises:
        redis.exceptions.ConnectionError, TimeoutError, OSError: none could be made usable;
            nothing was sent on it.
    """
    pool: Any = client.connection_pool  # type: ignore[union-attr]  # one server's client
    conn: Connection = await pool.get_connection(*_CHECKOUT_ARGS)
    return conn


async def give_back(client: AsyncClient, conn: Connection) -> None:
    """Return a connection from :func:`take`. One whose call failed or was cancelled was
    disconnected by redis-py; the pool reconnects it before its next use."""
    pool: Any = client.connection_pool  # type: ignore[union-attr]  # one server's client
    await pool.release(conn)


def new_connection(client: AsyncClient) -> Connection:
    """A connection of its own, configured like ``client``'s, outside its pool (not
    connected yet: see :func:`make_usable`); its owner disconnects it."""
    pool: Any = client.connection_pool  # type: ignore[union-attr]  # one server's client
    conn: Connection = pool.make_connection()
    return conn


def unpooled_connection(url: str, **options: Any) -> Connection:
    """One connection for ``url`` and redis-py ``options``, belonging to no pool; its owner
    connects, reconnects and disconnects it."""
    pool: Any = _pool(aioredis.ConnectionPool, aioredis.connection.parse_url, url, options)
    conn: Connection = pool.make_connection()
    return conn


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """A client on a bounded pool that queues callers (``max_connections`` in ``options``)
    instead of raising when it is full (a burst of concurrent calls would hit that)."""
    pool = _pool(aioredis.BlockingConnectionPool, aioredis.connection.parse_url, url, options)
    return aioredis.Redis.from_pool(pool)


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client on its own pool (thread-safe), closed with the client."""
    pool = _pool(redis.ConnectionPool, redis.connection.parse_url, url, options)
    return redis.Redis.from_pool(pool)


# -- Redis Sentinel ------------------------------------------------------------------------
# The master's address comes from redis-py's Sentinel client (``Sentinel.master_for``): its
# SentinelManagedConnection asks the sentinels on every connect, and turns a READONLY reply
# (the server it is on was demoted) into a ConnectionError after disconnecting, so the
# next connect finds the new master.


class _BlockingSentinelPool(AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """redis-py's Sentinel pool, queueing callers when full like :func:`async_client`'s."""


class _SentinelRedis(aioredis.Redis):
    """A master's client that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool: Any = self.connection_pool
        try:
            await super().aclose(close_connection_pool)
        finally:
            for client in pool.sentinel_manager.sentinels:
                await client.aclose()


class _SyncSentinelRedis(redis.Redis):
    """The blocking twin of :class:`_SentinelRedis`."""

    def close(self) -> None:
        pool: Any = self.connection_pool
        try:
            super().close()
        finally:
            for client in pool.sentinel_manager.sentinels:
                client.close()


def sentinel_async_client(
    target: SentinelTarget, sentinel_options: dict[str, Any], **options: Any
) -> aioredis.Redis:
    """A client of ``target``'s master on a bounded pool that queues callers, as
    :func:`async_client`; ``sentinel_options`` are the connections to the sentinels'."""
    manager = AsyncSentinel(list(target.nodes), sentinel_kwargs=sentinel_options)
    client: aioredis.Redis = manager.master_for(
        target.master,
        redis_class=_SentinelRedis,
        connection_pool_class=_BlockingSentinelPool,
        **options,
    )
    return client


def sentinel_sync_client(
    target: SentinelTarget, sentinel_options: dict[str, Any], **options: Any
) -> redis.Redis:
    """A blocking client of ``target``'s master (thread-safe), as :func:`sync_client`."""
    manager = SyncSentinel(list(target.nodes), sentinel_kwargs=sentinel_options)
    client: redis.Redis = manager.master_for(
        target.master, redis_class=_SyncSentinelRedis, **options
    )
    return client


class _Discovery:
    """What a SentinelManagedConnection asks its pool (the master's address), for a
    connection that belongs to no pool: each connect asks the sentinels afresh, on
    connections closed at once."""

    is_master = True
    check_connection = False

    def __init__(self, target: SentinelTarget, sentinel_options: dict[str, Any]) -> None:
        self._target = target
        self._options = sentinel_options

    async def get_master_address(self) -> tuple[str, int]:
        manager = AsyncSentinel(list(self._target.nodes), sentinel_kwargs=self._options)
        try:
            address: tuple[str, int] = await manager.discover_master(self._target.master)
            return address
        finally:
            for client in manager.sentinels:
                await client.aclose()


def sentinel_unpooled_connection(
    target: SentinelTarget, sentinel_options: dict[str, Any], **options: Any
) -> Connection:
    """One connection to ``target``'s master, belonging to no pool (as
    :func:`unpooled_connection`); every (re)connect asks the sentinels where it is."""
    discovery: Any = _Discovery(target, sentinel_options)
    managed: Any = SentinelManagedConnection
    conn: Connection = managed(connection_pool=discovery, **options)
    return conn


def demoted(exc: BaseException) -> bool:
    """Whether ``exc`` says the server was a replica, not the master, when it read the
    command: a failover moved the master away, and the command did not run.

    redis-py's Sentinel connection raises ``READONLY`` (and a blocked command's
    ``UNBLOCKED``) as a ConnectionError, after disconnecting; a plain connection returns
    the ``ReadOnlyError`` itself.
    """
    if isinstance(exc, ReadOnlyError):
        return True
    if isinstance(exc, RedisConnectionError):
        cause = exc.__cause__ or exc.__context__
        return isinstance(cause, ReadOnlyError) or (
            isinstance(cause, ResponseError) and str(cause).startswith("UNBLOCKED")
        )
    return False


# -- Redis Cluster -------------------------------------------------------------------------


def async_cluster_client(
    nodes: Sequence[tuple[str, int]], **options: Any
) -> aiocluster.RedisCluster:
    """A Redis Cluster client that discovers the cluster from ``nodes`` (``(host, port)``).

    ``max_connections`` in ``options`` is per node. redis-py routes each command by its
    keys' slot (a script by its ``KEYS``, which must share one slot), follows ``MOVED`` and
    ``ASK`` and refreshes its slot map after a failover, within ``retry``.
    """
    startup = [aiocluster.ClusterNode(host, port) for host, port in nodes]
    return aiocluster.RedisCluster(startup_nodes=startup, **options)


def sync_cluster_client(
    nodes: Sequence[tuple[str, int]], **options: Any
) -> synccluster.RedisCluster:
    """The blocking twin of :func:`async_cluster_client` (thread-safe)."""
    node: Any = synccluster.ClusterNode  # unannotated in redis-py
    startup = [node(host, port) for host, port in nodes]
    return synccluster.RedisCluster(startup_nodes=startup, **options)


def _pool(cls: Any, parse_url: Any, url: str, options: dict[str, Any]) -> Any:
    """``cls.from_url(url, **options)`` as redis-py >= 8.2 does it on every version: the
    URL's options win, except ``connection_class`` (before 8.2, ``rediss://`` replaced
    ours with redis-py's own TLS class)."""
    kwargs = {**options, **parse_url(url)}
    if "connection_class" in options:
        kwargs["connection_class"] = options["connection_class"]
    return cls(**kwargs)


async def make_usable(conn: Connection) -> None:
    """(Re)connect ``conn`` if needed and ``PING`` it if it sat idle too long.

    Raises:
        redis.exceptions.ConnectionError, TimeoutError, OSError: it could not be made
            usable; nothing of the caller's was written.
    """
    raw: Any = conn
    if not raw.is_connected:
        await raw.connect()
    await raw.check_health()


async def connect(conn: Connection) -> None:
    """Connect ``conn`` (with the connection's own retries)."""
    raw: Any = conn
    await raw.connect()


async def drop(conn: Connection) -> None:
    """Disconnect ``conn`` at once, without waiting for the peer."""
    raw: Any = conn
    await raw.disconnect(nowait=True)


async def disconnect(conn: Connection) -> None:
    """Disconnect ``conn`` cleanly."""
    raw: Any = conn
    await raw.disconnect()


async def send(
    conn: Connection, packed: bytes | list[bytes], *, check_health: bool = False
) -> None:
    """Write framed commands (:func:`pack_command`) as they are.

    Args:
        check_health: ``PING`` first if the connection sat idle longer than its health
            check interval (and reconnect if that fails: nothing of ``packed`` was sent).
    """
    raw: Any = conn
    await raw.send_packed_command(packed, check_health=check_health)


async def read_reply(conn: Connection) -> Any:
    """Read the next reply; an error reply is returned as its ``ResponseError``, not raised,
    so a caller that reads one reply per command sent keeps the connection in step.

    Any other failure (the connection broke, the read was cancelled) disconnects it and
    is raised.
    """
    raw: Any = conn
    try:
        return await raw.read_response()
    except ResponseError as exc:
        return exc


async def read_message(conn: Connection, timeout: float) -> Any:
    """The next reply or pushed message, or ``None`` if none came within ``timeout``."""
    raw: Any = conn
    return await raw.read_response(timeout=timeout)


# -- retries -------------------------------------------------------------------------------


def _backoff() -> FullJitterBackoff:
    # 50 ms doubling per failure, capped at 1 s, each wait drawn uniformly below that
    return FullJitterBackoff(cap=1.0, base=0.05)


def sync_retry(retries: int) -> SyncRetry:
    """redis-py's retry for the blocking client: ``retries`` attempts with jittered backoff,
    except that a failed TLS handshake is final."""
    return _SyncRetry(_backoff(), retries)


def async_retry(retries: int) -> AsyncRetry:
    """The asyncio twin of :func:`sync_retry` (``retries=0``: none at all, no backoff)."""
    return _AsyncRetry(_backoff() if retries else NoBackoff(), retries)


class _SyncRetry(SyncRetry):
    """redis-py's retry, except that a failed TLS handshake is final."""

    def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        def once() -> Any:
            try:
                return do()
            except RedisError as exc:
                _raise_tls_failure(exc)
                raise

        return super().call_with_retry(once, fail, *args, **kwargs)


class _AsyncRetry(AsyncRetry):
    """redis-py's asyncio retry, except that a failed TLS handshake is final.

    redis-py wraps whatever a connect raised in a ``ConnectionError`` and retries the whole
    connect; unwrapped again here, the failure is not an error redis-py retries.
    """

    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        async def once() -> Any:
            try:
                return await do()
            except RedisError as exc:
                _raise_tls_failure(exc)
                raise

        return await super().call_with_retry(once, fail, *args, **kwargs)


# -- TLS -----------------------------------------------------------------------------------

#: seconds a TLS handshake may go unanswered before the server is asked, on a connection of
#: its own, whether it speaks plaintext Redis (see AsyncTLSConnection)
_PROBE_AFTER = 0.25


class TLSHandshakeFailed(RedisError):
    """The TLS handshake with the server failed; the server may not speak TLS.

    A :class:`~redis.exceptions.RedisError` but neither a connection error nor a timeout,
    so redis-py's retries do not retry it (the asyncio client wraps it in a
    ``ConnectionError``: see :func:`tls_failure`).
    """


def tls_failure(exc: BaseException) -> TLSHandshakeFailed | None:
    """The :class:`TLSHandshakeFailed` that ``exc`` is or was caused by, if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, TLSHandshakeFailed):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _raise_tls_failure(exc: BaseException) -> None:
    tls = tls_failure(exc)
    if tls is not None and tls is not exc:
        raise tls from None
    if tls is None and tls_errors.ssl_error_in(exc) is not None:
        # an alert after the handshake (TLS 1.3 sends the server's verdict on the client's
        # certificate with its first reply): as final as a failed handshake
        why = tls_errors.explain(exc, TLS_OPTION_NAMES, {})
        if why is not None:
            raise TLSHandshakeFailed(f"TLS connection refused: {why}") from None


#: the URL options named in messages about TLS
TLS_OPTION_NAMES = tls_errors.TLSOptionNames(
    ca="ssl_ca_certs", cert="ssl_certfile", key="ssl_keyfile", insecure="ssl_cert_reqs=none"
)


def _tls_files(holder: Any) -> dict[str, object | None]:
    """The file options of a TLS connection (or its asyncio context), by URL option name."""
    return {
        "ssl_ca_certs": getattr(holder, "ca_certs", None),
        "ssl_certfile": getattr(holder, "certfile", None),
        "ssl_keyfile": getattr(holder, "keyfile", None),
    }


def _handshake_failed(host: str, port: int, why: str, *, hint: bool = True) -> TLSHandshakeFailed:
    tail = "; a server that does not speak TLS needs redis:// instead of rediss://" if hint else ""
    return TLSHandshakeFailed(f"TLS handshake with {host}:{port} failed ({why}){tail}")


def _handshake_error(
    host: str, port: int, exc: BaseException, files: Mapping[str, object | None]
) -> TLSHandshakeFailed:
    """The failure for ``exc`` raised by a handshake (an SSL error or a timeout), or by
    loading the TLS files."""
    if isinstance(exc, TimeoutError):
        return _handshake_failed(host, port, "no answer within the connect timeout")
    why = tls_errors.explain(exc, TLS_OPTION_NAMES, files)
    if why is not None:
        return TLSHandshakeFailed(f"TLS handshake with {host}:{port} failed: {why}")
    # a certificate the client refused: the server does speak TLS
    hint = not isinstance(exc, ssl.SSLCertVerificationError)
    return _handshake_failed(host, port, f"{type(exc).__name__}: {exc}", hint=hint)


class TLSConnection(redis.SSLConnection):
    """redis-py's blocking TLS connection, whose failed handshake is not retried."""

    def _wrap_socket_with_ssl(self, sock: Any) -> Any:
        try:
            return super()._wrap_socket_with_ssl(sock)  # type: ignore[no-untyped-call]
        except OSError as exc:  # ssl.SSLError and socket timeouts are OSErrors
            raise _handshake_error(self.host, self.port, exc, _tls_files(self)) from None


class AsyncTLSConnection(aioredis.SSLConnection):
    """redis-py's asyncio TLS connection, connecting in two steps: TCP, then TLS.

    A handshake that gets no answer within ``_PROBE_AFTER`` seconds makes this connection
    ask the server, on a second connection, for a plaintext ``PING``: a plaintext Redis
    answers at once (``+PONG`` or an error), so a ``rediss://`` URL pointing at one fails
    at once instead of after the connect timeout. A TLS server answers the probe with an
    alert or by closing; the handshake then goes on. Any failure raises
    :class:`TLSHandshakeFailed`.
    """

    def _connection_arguments(self) -> Mapping[str, Any]:
        try:  # builds the TLS context
            kwargs = dict(super()._connection_arguments())
        except OSError as exc:  # a TLS file missing or unusable: final, not retried
            files = _tls_files(self.ssl_context)
            raise _handshake_error(self.host, self.port, exc, files) from None
        kwargs.pop("ssl", None)  # plain TCP first: the handshake is done in _connect
        return kwargs

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        writer = self._writer
        assert writer is not None
        context = self.ssl_context.get()  # built (and cached) by _connection_arguments
        handshake = asyncio.ensure_future(writer.start_tls(context, server_hostname=self.host))
        try:
            async with asyncio.timeout(self.socket_connect_timeout):
                done, _ = await asyncio.wait([handshake], timeout=_PROBE_AFTER)
                if not done and await _answers_plaintext(self.host, self.port):
                    raise _handshake_failed(self.host, self.port, "the server answers in plaintext")
                await handshake
        except TLSHandshakeFailed:
            self._abandon(handshake, writer)
            raise
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self._abandon(handshake, writer)
            raise _handshake_error(
                self.host, self.port, exc, _tls_files(self.ssl_context)
            ) from None
        except BaseException:
            self._abandon(handshake, writer)
            raise

    def _abandon(self, handshake: asyncio.Future[None], writer: asyncio.StreamWriter) -> None:
        """Drop the half-made connection at once (closing it would wait for a TLS close)."""
        handshake.cancel()
        if not handshake.cancelled() and handshake.done():
            handshake.exception()  # retrieved: no "never retrieved" warning
        writer.transport.abort()
        self._reader = self._writer = None  # not connected: nothing for disconnect() to wait for


async def _answers_plaintext(host: str, port: int) -> bool:
    """Whether ``host:port`` answers a plaintext ``PING`` the way a Redis server does."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        first = await reader.read(1)  # "+PONG", or "-NOAUTH ..." / "-ERR ..."
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return first in (b"+", b"-")
