"""The app a separate worker process runs for the blocking-API tests (``aqueue worker -A
tests.sync.worker_app:app``); its broker comes from ``AQUEUE_BROKER_URL``."""

from __future__ import annotations

from aqueue import App

from .tasks import register

app = App("synctests")
register(app)
