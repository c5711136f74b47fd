"""``app.control``: revoking tasks, queued or running.

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
from .message import ErrorInfo, ResultOut
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
