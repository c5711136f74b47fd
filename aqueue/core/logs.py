"""Task-aware logging: every record logged inside a task carries its id, name, attempt, queue.

``get_task_logger(__name__)`` returns a logger whose records have ``task_id``,
``task_name``, ``attempt`` and ``queue`` attributes (``"-"`` outside a task), read from the
running task's contextvar, so they are right for concurrent coroutines and threads. Use them
in a format string: ``"%(task_name)s[%(task_id)s] %(message)s"``. To add them to records of
any logger, attach :class:`TaskContextFilter` to your handler. structlog users add
:func:`structlog_processor` to their processors.

:class:`TaskFormatter` (what ``aqueue worker`` logs with, Celery's
``worker_task_log_format``) formats a record logged inside a task with a second format
that names the task, whatever logger it came from: the context is read only when a record
is actually emitted, so nothing is added to a task that logs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from .context import current_request

_FILTER_ATTR = "_aqueue_task_filter"
_OWN = "aqueue."


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


class TaskFormatter(logging.Formatter):
    """Formats records logged inside a task with ``task_fmt``, others with ``fmt``.

    ``task_fmt`` may use ``%(task_name)s``, ``%(task_id)s``, ``%(attempt)s`` and
    ``%(queue)s``; a record that already has them (a :class:`TaskContextFilter` ran) keeps
    its own. aqueue's own records (``aqueue.*`` loggers) always use ``fmt``: those about a
    task name it in their message (``Task proj.add[id] succeeded in ...``).
    """

    def __init__(self, fmt: str, task_fmt: str, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._in_task = logging.Formatter(task_fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        req = current_request()
        if req is None or record.name.startswith(_OWN):  # aqueue's lines name the task
            return super().format(record)
        if not hasattr(record, "task_id"):
            record.task_id = req.id
            record.task_name = req.task
            record.attempt = req.attempt
            record.queue = req.queue
        return self._in_task.format(record)
