"""``app.control``: revoking tasks, queued or running; the workers of the fleet.

A revocation is a REVOKED record stored in the result backend (with the result TTL) under a
fencing attempt no execution can reach, so it survives with no worker online, nothing can
overwrite it, and waiters see it at once. Workers check each claimed batch against the
stored records before running anything; running tasks revoked with ``terminate=True`` are
found by a check every second and cancelled (a coroutine is cancelled, an offloaded process
is killed; a thread cannot be stopped and is abandoned).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from . import states
from .admission import rate_setting
from .config import keyring_of
from .deadletters import DeadLetters
from .errors import ConfigurationError
from .message import ErrorInfo, ResultOut
from .presence import WorkerStatus, pick_registry, status_of
from .protocols import REPLY_TOPIC_PREFIX, KeepsTopics, Topics, WorkerRegistry
from .remote import (
    CONTROL_CAP,
    CONTROL_TOPIC,
    INSPECT_COMMANDS,
    REQUEST_CONTEXT,
    ControlReply,
    ControlRequest,
    decode_reply,
)
from .serialization import check_serializer, encode

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("aqueue.control")

#: seconds a command stays valid beyond its caller's timeout (clocks of hosts differ)
_EXPIRY_MARGIN = 10.0

#: the attempt revocations are stored under: above any real attempt, so they are final
REVOKE_FENCE = 2**62
TERMINATE = "terminate"


class Control:
    """Remote control of tasks (Celery's ``app.control``)."""

    def __init__(self, app: App) -> None:
        self.app = app
        #: list, show, replay and purge dead letters (``aqueue dlq``)
        self.dead_letters = DeadLetters(app)

    async def revoke(self, task_id: str | Sequence[str], *, terminate: bool = False) -> None:
        """Revoke tasks: queued ones never run; running ones stop if ``terminate``.

        The revocation is stored (it holds with no worker online), then broadcast, so a
        worker holding the task stops it at once (one claimed but not started yet never
        starts; a running one is cancelled with ``terminate``).

        Args:
            task_id: one id or several.
            terminate: also stop a task that is already running.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        await self.store_revocations(ids, terminate=terminate)
        try:
            await self.broadcast("revoke", {"task_id": ids, "terminate": terminate})
        except Exception as exc:  # the stored records still hold: workers check them
            log.warning("could not broadcast the revocation (%s: %s)", type(exc).__name__, exc)

    async def store_revocations(self, ids: Sequence[str], *, terminate: bool) -> None:
        """Store REVOKED records for ``ids`` (what :meth:`revoke` does before it broadcasts)."""
        backend = await self.app.result_backend()
        fmt = check_serializer(self.app.conf.task_serializer)
        now = time.time()
        reason = TERMINATE if terminate else "revoked"
        for tid in ids:
            record = ResultOut(
                id=tid,
                state=states.REVOKED,
                date_done=now,
                error=ErrorInfo(type="TaskRevoked", message="revoked", reason=reason),
            )
            await backend.store(
                tid,
                encode(record, fmt),
                state=states.REVOKED,
                attempt=REVOKE_FENCE,
                ttl=self.app.conf.result_expires,
            )

    async def revoke_by_name(
        self,
        pattern: str,
        *,
        terminate: bool = False,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Revoke the tasks the fleet holds whose name matches ``pattern`` (a glob:
        ``"proj.tasks.*"``): those waiting for a slot, and running ones with ``terminate``.
        Messages still in the queue are not read: revoke those by id."""
        return await self.broadcast(
            "revoke_by_name",
            {"pattern": pattern, "terminate": terminate},
            destination=destination,
            reply=True,
            timeout=timeout,
            limit=limit,
        )

    # -- broadcast commands (aqueue/core/remote.py runs them in each worker) -----------

    async def broadcast(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Send ``command`` to every worker (or those ``destination`` names: node names or
        worker ids); with ``reply``, collect answers for up to ``timeout`` seconds.

        Returns Celery's shape, one ``{node name: value}`` per worker that answered (a
        failed command's value is ``{"error": message}``). Collecting ends early once
        every live worker of the registry (matching ``destination``) answered, or
        ``limit`` did.

        Raises:
            ConfigurationError: the broker carries no control topic.
        """
        topics = await self._topics()
        dest = tuple(destination) if destination else None
        request_id = secrets.token_hex(8)
        reply_to = f"{REPLY_TOPIC_PREFIX}{request_id}" if reply else None
        request = ControlRequest(
            id=request_id,
            command=command,
            arguments=dict(arguments or {}),
            reply_to=reply_to,
            destination=dest,
            expires=time.time() + max(timeout, 1.0) + _EXPIRY_MARGIN,
        )
        body = msgspec.json.encode(request)
        keyring = keyring_of(self.app.conf)
        if keyring is not None:
            body = keyring.sign(body, context=REQUEST_CONTEXT)
        if reply_to is None:
            await topics.publish(CONTROL_TOPIC, [body], cap=CONTROL_CAP)
            return []
        expected = limit if limit is not None else await self._expected(dest)
        sub = await topics.subscribe(reply_to)
        replies: list[ControlReply] = []
        try:
            await topics.publish(CONTROL_TOPIC, [body], cap=CONTROL_CAP)
            deadline = time.monotonic() + timeout
            while expected is None or len(replies) < expected:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for raw in await sub.get(left):
                    answer = decode_reply(raw, keyring)
                    if answer is not None and answer.request == request_id:
                        replies.append(answer)
        finally:
            await sub.close()
        return _by_node(replies)

    async def _topics(self) -> Topics:
        broker = await self.app.connected_broker()
        if not isinstance(broker, KeepsTopics):
            raise ConfigurationError(
                f"the broker {type(broker).__name__} has no control topic: remote control "
                "and inspection need one (every built-in broker has it)"
            )
        return broker.topics

    async def _expected(self, destination: tuple[str, ...] | None) -> int | None:
        """How many workers should answer: the live ones the registry lists (``None``: no
        registry, so collect until the timeout)."""
        registry = await registry_of(self.app)
        if registry is None:
            return None
        try:
            live = [
                w
                for w in status_of(await registry.workers(), self.app.conf.worker_lost_timeout)
                if not w.missing
            ]
        except Exception as exc:
            log.debug("could not read the worker registry (%s)", type(exc).__name__)
            return None
        if destination:
            live = [w for w in live if w.info.hostname in destination or w.info.id in destination]
        return len(live) or None

    def inspect(
        self,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> Inspect:
        """Read-only commands to the fleet: ``await app.control.inspect().active()``.
        ``limit``: stop collecting after that many replies."""
        return Inspect(self, destination, timeout, limit)

    async def ping(
        self,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """``[{node: {"ok": "pong"}}, ...]`` from every worker that answered in time."""
        return await self.broadcast(
            "ping", destination=destination, reply=True, timeout=timeout, limit=limit
        )

    async def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Set a task's rate limit in running workers (``"10/m"``, a number of tasks per
        second, or ``None`` / ``0`` for none). Where limits are shared (Redis), the new rate
        holds for the whole fleet from the next task. Not kept across a restart."""
        return await self.broadcast(
            "rate_limit",
            {"task_name": task_name, "rate_limit": rate_setting(rate_limit)},
            destination=destination,
            reply=reply,
            timeout=timeout,
            limit=limit,
        )

    async def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Set a task's soft and hard time limits (seconds; ``None``: none) in running
        workers, for tasks started from now on."""
        return await self.broadcast(
            "time_limit",
            {"task_name": task_name, "soft": soft, "hard": hard},
            destination=destination,
            reply=reply,
            timeout=timeout,
            limit=limit,
        )

    async def add_consumer(
        self,
        queue: str,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Make running workers consume ``queue`` too."""
        return await self.broadcast(
            "add_consumer",
            {"queue": queue},
            destination=destination,
            reply=reply,
            timeout=timeout,
            limit=limit,
        )

    async def cancel_consumer(
        self,
        queue: str,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Make running workers stop consuming ``queue`` (what they claimed from it runs)."""
        return await self.broadcast(
            "cancel_consumer",
            {"queue": queue},
            destination=destination,
            reply=reply,
            timeout=timeout,
            limit=limit,
        )

    async def shutdown(
        self,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stop workers gracefully (as SIGTERM: running tasks finish within the shutdown
        timeout, what has not started goes back to the queue)."""
        return await self.broadcast(
            "shutdown", destination=destination, reply=reply, timeout=timeout, limit=limit
        )

    async def pool_grow(
        self,
        n: int = 1,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Let workers run ``n`` more tasks at once."""
        return await self.broadcast(
            "pool_grow",
            {"n": n},
            destination=destination,
            reply=reply,
            timeout=timeout,
            limit=limit,
        )

    async def pool_shrink(
        self,
        n: int = 1,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Let workers run ``n`` fewer tasks at once (running ones finish)."""
        return await self.broadcast(
            "pool_shrink",
            {"n": n},
            destination=destination,
            reply=reply,
            timeout=timeout,
            limit=limit,
        )

    async def enable_events(
        self,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Make workers send task events (as ``-E``)."""
        return await self.broadcast(
            "enable_events", destination=destination, reply=reply, timeout=timeout, limit=limit
        )

    async def disable_events(
        self,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Make workers stop sending task events."""
        return await self.broadcast(
            "disable_events", destination=destination, reply=reply, timeout=timeout, limit=limit
        )

    async def workers(self) -> list[WorkerStatus]:
        """The workers in the broker's registry: live ones first, then missing ones.

        A worker is missing when it has not beaten for ``worker_lost_timeout`` seconds
        (killed, frozen, cut off); its entry stays listed for a while after. A worker that
        stopped gracefully is gone from the list. See docs/fleet.md.

        Raises:
            ConfigurationError: neither the broker nor the result backend keeps a worker
                registry (RabbitMQ with ``rpc://`` results).
        """
        registry = await registry_of(self.app)
        if registry is None:
            raise ConfigurationError(
                f"the broker {type(self.app.broker).__name__} keeps no worker registry, nor "
                "does the result backend (memory://, redis:// and sqlite:// brokers do; with "
                "amqp://, a redis:// or sqlite:// result backend does)"
            )
        return status_of(await registry.workers(), self.app.conf.worker_lost_timeout)


async def registry_of(app: App) -> WorkerRegistry | None:
    """Where the app's workers register: the broker, else the result backend, else nowhere.

    Only the broker can hand back a lost worker's leases; a registry in the backend serves a
    broker whose connection is the lease (RabbitMQ), so it only lists workers.
    """
    broker = await app.connected_broker()
    return pick_registry(broker, app.backend)


def _by_node(replies: Sequence[ControlReply]) -> list[dict[str, Any]]:
    """Celery's reply shape: ``[{node name: value}]``; a node name two workers share is
    told apart by the second one's worker id."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in replies:
        key = r.hostname if r.hostname not in seen else f"{r.hostname} ({r.worker_id})"
        seen.add(key)
        out.append({key: r.value if r.ok else {"error": r.error}})
    return out


class Inspect:
    """Read-only commands, each returning ``{node name: value}`` for the workers that
    answered within the timeout (Celery's ``app.control.inspect()``)."""

    def __init__(
        self,
        control: Control,
        destination: Sequence[str] | None,
        timeout: float,
        limit: int | None = None,
    ) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.limit = limit

    async def _call(self, command: str, **arguments: Any) -> dict[str, Any]:
        assert command in INSPECT_COMMANDS
        replies = await self.control.broadcast(
            command,
            arguments,
            destination=self.destination,
            reply=True,
            timeout=self.timeout,
            limit=self.limit,
        )
        merged: dict[str, Any] = {}
        for one in replies:
            merged.update(one)
        return merged

    async def ping(self) -> dict[str, Any]:
        """``{node: {"ok": "pong"}}``."""
        return await self._call("ping")

    async def active(self) -> dict[str, Any]:
        """Tasks running now, per worker."""
        return await self._call("active")

    async def reserved(self) -> dict[str, Any]:
        """Tasks claimed and waiting for a free slot, per worker."""
        return await self._call("reserved")

    async def scheduled(self) -> dict[str, Any]:
        """Tasks waiting for their ETA in each worker's queues (on the broker)."""
        return await self._call("scheduled")

    async def registered(self, *taskinfoitems: str) -> dict[str, Any]:
        """The task names each worker knows (with ``taskinfoitems`` such as
        ``"rate_limit"``: those attributes too)."""
        return await self._call("registered", taskinfoitems=list(taskinfoitems) or None)

    async def stats(self) -> dict[str, Any]:
        """Counts, uptime, pool, resource usage and broker of each worker."""
        return await self._call("stats")

    async def active_queues(self) -> dict[str, Any]:
        """The queues each worker consumes."""
        return await self._call("active_queues")

    async def conf(self, with_defaults: bool = False) -> dict[str, Any]:
        """Each worker's settings (secrets redacted); only those set unless
        ``with_defaults``."""
        return await self._call("conf", with_defaults=with_defaults)

    async def revoked(self) -> dict[str, Any]:
        """The task ids each worker was told were revoked."""
        return await self._call("revoked")
