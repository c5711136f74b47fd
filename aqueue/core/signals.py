"""Signals with Celery's names: connect receivers, sync or async, to observe tasks and workers.

>>> from aqueue.signals import task_success
>>> @task_success.connect
... def on_success(sender, **kw): ...

Receivers get the sender (a task or a worker) positionally and the signal's arguments as
keywords. A receiver's error is logged and never breaks the task or the worker. Sending costs
nothing when no receiver is connected.

| signal | sender | keywords |
|---|---|---|
| ``task_prerun`` | task | ``task_id``, ``args``, ``kwargs``, ``request`` |
| ``task_postrun`` | task | ``task_id``, ``args``, ``kwargs``, ``retval``, ``state`` |
| ``task_success`` | task | ``result``, ``request`` |
| ``task_failure`` | task | ``task_id``, ``exception``, ``traceback``, ``request`` |
| ``task_retry`` | task | ``request``, ``reason``, ``countdown`` |
| ``task_revoked`` | task or None | ``task_id``, ``terminated``, ``expired`` |
| ``task_rejected`` | None | ``task_id``, ``task`` (name or None), ``queue``, ``reason`` |
| ``worker_ready`` | worker | |
| ``worker_shutdown`` | worker | |
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("aqueue.signals")

F = TypeVar("F", bound=Callable[..., Any])


class Signal:
    """A named hook: ``connect`` receivers, ``send`` calls them in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: list[Callable[..., Any]] = []

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self.receivers)} receiver(s)>"

    def connect(self, receiver: F) -> F:
        """Add a receiver (usable as a decorator); connecting twice is a no-op."""
        if receiver not in self.receivers:
            self.receivers.append(receiver)
        return receiver

    def disconnect(self, receiver: Callable[..., Any]) -> None:
        """Remove a receiver if connected."""
        if receiver in self.receivers:
            self.receivers.remove(receiver)

    async def send(self, sender: Any, **kwargs: Any) -> None:
        """Call every receiver; await the ones that return awaitables; log their errors."""
        for receiver in list(self.receivers):
            try:
                value = receiver(sender, **kwargs)
                if inspect.isawaitable(value):
                    await value
            except Exception:
                log.exception("receiver %r of signal %s raised", receiver, self.name)


task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
#: a message dead-lettered by the worker (Celery's name; its keywords are aqueue's)
task_rejected = Signal("task_rejected")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
