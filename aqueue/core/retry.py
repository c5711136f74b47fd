"""Retry policy: when a failed attempt is tried again, and how long it waits.

Celery's options and defaults: ``max_retries=3``, ``default_retry_delay=180``,
``autoretry_for``, ``dont_autoretry_for``, ``retry_backoff`` (``True`` means a 1 s base,
a number is the base), ``retry_backoff_max=600``, ``retry_jitter=True`` ("full jitter": a
uniform delay between 0 and the backoff).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from .errors import Retry

if TYPE_CHECKING:
    from .context import Request
    from .task import Task


def retries_left(task: Task[Any, Any], request: Request, override: int | None = None) -> bool:
    """Whether another retry is allowed (``None`` as a limit means no limit)."""
    if override is not None:
        limit: int | None = override
    elif request.max_retries is not None:
        limit = request.max_retries
    else:
        limit = task.max_retries
    return limit is None or request.retries < limit


def backoff_delay(task: Task[Any, Any], retries: int, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``retries + 1``."""
    if not task.retry_backoff:
        return float(task.default_retry_delay)
    base = 1.0 if task.retry_backoff is True else float(task.retry_backoff)
    delay = min(float(task.retry_backoff_max), base * (2.0**retries))
    if task.retry_jitter:
        delay = rng.uniform(0, delay) if rng is not None else random.uniform(0, delay)
    return delay


def autoretry(task: Task[Any, Any], request: Request, exc: Exception) -> Retry | None:
    """The Retry an exception calls for under ``autoretry_for``, or ``None``."""
    if not task.autoretry_for or not isinstance(exc, task.autoretry_for):
        return None
    if task.dont_autoretry_for and isinstance(exc, task.dont_autoretry_for):
        return None
    limit = task.retry_kwargs.get("max_retries")
    if not retries_left(task, request, limit):
        return None
    countdown = task.retry_kwargs.get("countdown")
    if countdown is None:
        countdown = backoff_delay(task, request.retries)
    return Retry(
        f"autoretry for {type(exc).__name__}",
        exc=exc,
        countdown=float(countdown),
        max_retries=limit,
    )
