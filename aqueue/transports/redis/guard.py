"""The guard around every asyncio call to Redis: one deadline, and aqueue's errors.

Nothing here ever formats a password: every message goes through
:meth:`RedisSettings.describe` or uses :attr:`RedisSettings.redacted`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aqueue.core.errors import AqueueError

from .redispy import tls_failure
from .settings import RedisSettings

__all__ = ["guarded"]

T = TypeVar("T")

#: seconds between tries when a cluster node's connections are all in use
_BUSY_WAIT = 0.002


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

    When a Redis Cluster node has no free connection (``MaxConnectionsError``), the whole
    call is made again after a short pause. A cluster pipeline may already have run on the
    other nodes by then, so their commands run a second time: that is safe only because
    publishes are de-duplicated by id (PUBLISH refuses an id still queued or within
    ``dedupe_ttl``: the second copy reports it as known), settlements are fenced by lease
    (SETTLE acts only while the lease's token holds the message, which the first run ended),
    result stores are fenced by attempt and state (STORE); the other calls that span nodes
    read, or delete dead letters (done twice, the count may miss the first run's).

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
            while True:
                try:
                    return await call()
                except MaxConnectionsError:
                    # a cluster node's connections are all in use (redis-py's cluster
                    # client refuses instead of queueing): wait, then send again within
                    # the deadline (why that is safe: the docstring)
                    await asyncio.sleep(_BUSY_WAIT)
    except TimeoutError:
        cls = timeout_error or error
        raise cls(f"{what} on {settings.redacted} did not complete within {limit:g}s") from None
    except (RedisConnectionError, RedisTimeoutError) as exc:
        # a failed TLS handshake sent nothing: it is never "outcome unknown"
        cls = error if tls_failure(exc) else connection_error or error
        raise cls(f"{what} on {settings.redacted} failed: {settings.describe(exc)}") from None
    except (RedisError, RedisClusterException) as exc:
        # RedisClusterException: a cluster with no reachable node, or a slot nobody serves
        raise error(f"{what} on {settings.redacted} failed: {settings.describe(exc)}") from None
    except OSError as exc:
        raise error(f"{what} on {settings.redacted} failed: {settings.describe(exc)}") from None
