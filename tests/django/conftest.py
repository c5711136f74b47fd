"""Django configured once for this process (tests/django only): an SQLite database in a
file, the aqueue backend as "default" and an on-commit one as "oncommit"."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

django = pytest.importorskip("django")
pytest.importorskip("django_tasks")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        USE_TZ=True,
        INSTALLED_APPS=["django_tasks"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(Path(tempfile.mkdtemp(prefix="aqueue-django-db-")) / "db.sqlite3"),
            }
        },
        TASKS={
            "default": {
                "BACKEND": "aqueue.django.AqueueBackend",
                "QUEUES": ["default", "held"],
                "OPTIONS": {"APP": "tests.django.jobs:app"},
            },
            "oncommit": {
                "BACKEND": "aqueue.django.AqueueBackend",
                "QUEUES": ["default", "held"],
                "OPTIONS": {"APP": "tests.django.jobs:app", "ENQUEUE_ON_COMMIT": True},
            },
            # the worker's own app: Django tasks that enqueue Django tasks on the worker
            "worker": {
                "BACKEND": "aqueue.django.AqueueBackend",
                "OPTIONS": {"APP": "tests.django.jobs:worker_app"},
            },
        },
    )
    django.setup()
