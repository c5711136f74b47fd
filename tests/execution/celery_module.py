"""A task module written for Celery; only the import lines differ.

# from celery import Celery, Task
# from celery.utils.log import get_task_logger
# from celery.exceptions import SoftTimeLimitExceeded
"""

from __future__ import annotations

import time

from aqueue import App as Celery
from aqueue import SoftTimeLimitExceeded, Task, get_task_logger

app = Celery("proj", broker="memory://celery-module", include=[])
app.conf.update(result_expires=3600, task_track_started=True)

logger = get_task_logger(__name__)
attempts: dict[str, int] = {}


class DebugTask(Task):  # type: ignore[type-arg]
    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        logger.info("TASK STARTING: %s[%s]", self.name, self.request.id)
        return self.run(*args, **kwargs)

    def on_failure(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        logger.info("failed: %s", type(exc).__name__)


@app.task
def add(x, y):  # type: ignore[no-untyped-def]
    return x + y


@app.task(bind=True, base=DebugTask, max_retries=3, default_retry_delay=0)
def fetch(self, url):  # type: ignore[no-untyped-def]
    attempts[url] = attempts.get(url, 0) + 1
    try:
        if attempts[url] < 3:
            raise OSError("connection reset")
        return f"<html>{url}</html>"
    except OSError as exc:
        raise self.retry(exc=exc, countdown=0)


@app.task(
    autoretry_for=(OSError,), retry_kwargs={"max_retries": 2, "countdown": 0}, retry_backoff=True
)
def flaky(key):  # type: ignore[no-untyped-def]
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] < 2:
        raise OSError("transient")
    return attempts[key]


@app.task(
    bind=True,
    soft_time_limit=0.2,
    time_limit=5,
    acks_late=True,
    rate_limit="100/s",
    serializer="json",
    queue="celery",
    ignore_result=False,
    track_started=True,
)
def long_job(self, n):  # type: ignore[no-untyped-def]
    try:
        for i in range(n):
            self.update_state(state="PROGRESS", meta={"current": i, "total": n})
            time.sleep(0.05)
    except SoftTimeLimitExceeded:
        return "stopped early"
    return "finished"


@app.task(throws=(KeyError,), store_errors_even_if_ignored=True, ignore_result=True)
def lookup(key):  # type: ignore[no-untyped-def]
    raise KeyError(key)


@app.task(expires=0.001)
def stale():  # type: ignore[no-untyped-def]
    return "never"
