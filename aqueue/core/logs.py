"""Task-aware logging: every record logged inside a task carries its id, name, attempt, queue.

``get_task_logger(__name__)`` returns a logger whose records have ``task_id``,
``task_name``, ``attempt`` and ``queue`` attributes (``"-"`` outside a task), read from the
running task's contextvar, so they are right for concurrent coroutines and threads. Use them
in a format string: ``"%(task_name)s[%(task_id)s] %(message)s"``. To add them to records of
any logger, attach :class:`TaskContextFilter` to your handler. structlog users add
:func:`structlog_processor` to their processors.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from .context import current_request

_FILTER_ATTR = "_aqueue_task_filter"


class TaskContextFilter(logging.Filter):
    """Adds ``task_id``, ``task_name``, ``attempt`` and ``queue`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        req = current_request()
        if req is None:
            record.task_id = record.task_name = record.queue = "-"
            record.attempt = 0
        else:
            record.task_id = req.id
            record.task_name = req.task
            record.attempt = req.attempt
            record.queue = req.queue
        return True


def get_task_logger(name: str) -> logging.Logger:
    """A logger (named ``name``) whose records carry the running task's context."""
    logger = logging.getLogger(name)
    if not getattr(logger, _FILTER_ATTR, False):
        logger.addFilter(TaskContextFilter())
        setattr(logger, _FILTER_ATTR, True)
    return logger


def structlog_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor adding the running task's context to the event dict."""
    req = current_request()
    if req is not None:
        event_dict.setdefault("task_id", req.id)
        event_dict.setdefault("task_name", req.task)
        event_dict.setdefault("attempt", req.attempt)
        event_dict.setdefault("queue", req.queue)
    return event_dict
