"""Celery-style signals (``from aqueue.signals import task_success``); see aqueue.core.signals."""

from .core.signals import (
    Signal,
    task_failure,
    task_postrun,
    task_prerun,
    task_rejected,
    task_retry,
    task_revoked,
    task_success,
    worker_ready,
    worker_shutdown,
)

__all__ = [
    "Signal",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "worker_ready",
    "worker_shutdown",
]
