"""Settings of the celery101 example: a SQLite database, aqueue on the embedded SQLite broker.

``CELERY101_DB`` (the database file) and ``AQUEUE_BROKER_URL`` (the broker, read by aqueue
itself) let the tests point a worker subprocess at their own files.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "celery101-example-not-secret"  # noqa: S105 (an example, never deployed)
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "celery101.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_tasks",  # Django 5.x with the backport; on Django 6 `django.tasks` is built in
    "workflows",
]

_DB = os.environ.get("CELERY101_DB", str(BASE_DIR / "db.sqlite3"))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _DB,
        # a file, not :memory:, so that a worker process sees what the tests commit
        "TEST": {"NAME": os.environ.get("CELERY101_TEST_DB", str(BASE_DIR / "test-db.sqlite3"))},
    }
}

TASKS = {
    "default": {
        "BACKEND": "aqueue.django.AqueueBackend",
        "QUEUES": ["default", "held"],  # "held": a queue no worker of the example consumes
        "OPTIONS": {"APP": "celery101.aqueue:app"},
    }
}

# Celery's convention, read by celery101/aqueue.py: app.config_from_object(..., "CELERY")
CELERY_TASK_TRACK_STARTED = True
CELERY_RESULT_EXTENDED = True  # TaskResult.refresh() needs the task's arguments stored
