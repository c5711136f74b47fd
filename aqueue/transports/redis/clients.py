"""The clients a Redis broker or backend holds: the asyncio one, connected once (the one
``connect`` both roles use), and a blocking one for calls made off the event loop. For a
``redis+cluster://`` URL both are redis-py's Redis Cluster clients."""

from __future__ import annotations

import threading

from aqueue.core.errors import AqueueError

from .guard import guarded
from .redispy import AsyncClient, SyncClient
from .scripts import command
from .settings import RedisSettings

__all__ = ["LazySyncClient", "Link"]


class Link:
    """The pooled asyncio client of one broker or backend, shared by all its calls.

    Args:
        settings: where it connects.
        error: what a failed connect raises (``BrokerError`` or ``BackendError``).
    """

    __slots__ = ("_client", "_error", "_settings")

    def __init__(self, settings: RedisSettings, error: type[AqueueError]) -> None:
        self._settings = settings
        self._error = error
        self._client: AsyncClient | None = None

    @property
    def client(self) -> AsyncClient | None:
        """The client while connected; ``None`` before :meth:`connect` and after :meth:`close`."""
        return self._client

    async def connect(self) -> None:
        """Create the connection pool and check the server answers; idempotent."""
        if self._client is not None:
            return
        settings = self._settings
        client = settings.async_cluster_client() if settings.cluster else settings.async_client()
        try:
            await guarded(
                self._settings, "connect", lambda: command(client, "PING"), error=self._error
            )
        except BaseException:
            await client.aclose()
            raise
        if self._client is None:
            self._client = client
        else:  # a concurrent connect() won
            await client.aclose()

    async def get(self) -> AsyncClient:
        """The client, connecting first if needed."""
        client = self._client
        if client is None:
            await self.connect()
            client = self._client
            assert client is not None
        return client

    async def close(self) -> None:
        """Close the pool's connections; idempotent. A later call connects again."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class LazySyncClient:
    """A blocking client created on first use, safe to share between threads."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._client: SyncClient | None = None

    def get(self) -> SyncClient:
        """The client, created under a lock the first time."""
        with self._lock:
            if self._client is None:
                settings = self._settings
                cluster = settings.cluster
                self._client = settings.sync_cluster_client() if cluster else settings.sync_client()
            return self._client

    def close(self) -> None:
        """Close the client's connections; a later ``get()`` makes a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
