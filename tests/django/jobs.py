"""Django tasks for tests/django: module-level functions, as the tasks framework requires.

The apps are on a SQLite file of their own: the backend sends from its loop thread, the
test's embedded worker (an app of its own, as in a worker process) claims on the test's
loop, and both see the same file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from aqueue import App
from aqueue.django import install
from aqueue.django.compat import FRAMEWORK

if FRAMEWORK == "django.tasks":  # pragma: no cover (Django 6 is not installable here)
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
else:
    from django_tasks import task

STORE = Path(tempfile.mkdtemp(prefix="aqueue-django-")) / "aqueue.db"
#: the app Django's backend sends with (connected on the backend's loop thread)
app = App("djangotests", broker=f"sqlite:///{STORE}", result_extended=True)
#: the worker's app, on the same file: as a worker process would have its own
worker_app = App("djangotests", broker=f"sqlite:///{STORE}", result_extended=True)
install(worker_app)


@task()
def multiply(x: int, y: int) -> int:
    return x * y


@task()
async def greet(name: str) -> str:
    return f"hello {name}"


@task()
def explode(message: str) -> None:
    raise KeyError(message)


@task(takes_context=True)
def attempt(context: Any) -> int:
    return int(context.attempt)


@task(queue_name="held")
def held(n: int) -> int:
    return n


@task(backend="worker")
def fan_out_sync(n: int) -> str:
    """Runs in a worker thread; its enqueue goes to the worker's loop, where worker_app is
    connected (not to the backend's loop thread, which would connect it a second time)."""
    return str(multiply.using(backend="worker").enqueue(n, 2).id)


@task(backend="worker")
async def fan_out_async(n: int) -> str:
    """Runs on the worker's loop: aenqueue awaits the send right there."""
    return str((await multiply.using(backend="worker").aenqueue(n, 3)).id)


@task(backend="worker")
async def enqueue_blocking_on_the_loop() -> None:
    """A sync enqueue on the worker's loop would block the loop it waits on: refused."""
    multiply.using(backend="worker").enqueue(1, 1)
