"""pytest for the example's tasks, with aqueue's plugin: the project's app on a memory://
store, run by drain() (no worker process, no broker file). Django's own tests (against a
live worker) are in workflows/tests.py: ``python manage.py test workflows``."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import django
import pytest_asyncio

# before the project's app is imported: its broker is this store (AQUEUE_BROKER_URL beats
# the settings module, as it would in a deployment)
os.environ["AQUEUE_BROKER_URL"] = f"memory://celery101-{uuid.uuid4().hex[:8]}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "celery101.settings")
django.setup()

from celery101.aqueue import app  # noqa: E402

from aqueue import App  # noqa: E402

pytest_plugins = ["aqueue.testing"]


@pytest_asyncio.fixture
async def aqueue_app() -> AsyncIterator[App]:
    """The plugin's fixture, overridden: the project's own app (on the memory store)."""
    app.import_includes()
    async with app:
        yield app
