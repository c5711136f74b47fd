"""``app.control``: revoking tasks, queued or running; the workers of the fleet.

A revocation is a REVOKED record stored in the result backend (with the result TTL) under a
fencing attempt no execution can reach, so it survives with no worker online, nothing can
overwrite it, and waiters see it at once. Workers check each claimed batch against the
stored records before running anything; running tasks revoked with ``terminate=True`` are
found by a check every second and cancelled (a coroutine is cancelled, an offloaded process
is killed; a thread cannot be stopped and is abandoned).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import states
from .deadletters import DeadLetters
from .errors import ConfigurationError
from .message import ErrorInfo, ResultOut
from .presence import WorkerStatus, pick_registry, status_of
from .protocols import WorkerRegistry
from .serialization import check_serializer, encode

if TYPE_CHECKING:
    from .app import App

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

        Args:
            task_id: one id or several.
            terminate: also stop a task that is already running.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
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
