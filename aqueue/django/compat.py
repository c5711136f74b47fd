"""Where Django's tasks framework lives: ``django.tasks`` (Django 6), else ``django_tasks``.

The backport is the implementation Django 6 merged, with the same names; only the module
differs. Everything else in :mod:`aqueue.django` imports these names from here.
"""

from __future__ import annotations

from typing import Any

try:  # Django >= 6.0
    from django.tasks import (  # type: ignore[import-not-found,unused-ignore]
        TaskContext,
        TaskResult,
        TaskResultStatus,
    )
    from django.tasks.backends.base import (  # type: ignore[import-not-found,unused-ignore]
        BaseTaskBackend,
    )
    from django.tasks.base import (  # type: ignore[import-not-found,unused-ignore]
        TaskError,
    )
    from django.tasks.exceptions import (  # type: ignore[import-not-found,unused-ignore]
        TaskResultDoesNotExist,
    )

    FRAMEWORK = "django.tasks"
except ImportError:  # the django-tasks backport on Django 5.x
    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist

    FRAMEWORK = "django_tasks"

#: the framework's priority bounds (both implementations: -100..100, default 0)
MIN_PRIORITY = -100
MAX_PRIORITY = 100

__all__ = [
    "FRAMEWORK",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "BaseTaskBackend",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
]


def task_result(**fields: Any) -> Any:
    """A ``TaskResult`` (a frozen dataclass whose return value is set after construction)."""
    value = fields.pop("return_value", None)
    result = TaskResult(**fields)
    object.__setattr__(result, "_return_value", value)
    return result
