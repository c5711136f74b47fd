"""Django's tasks framework on aqueue.

``TASKS = {"default": {"BACKEND": "aqueue.django.AqueueBackend", "OPTIONS": {...}}}``.

A Django project keeps writing ``@task`` functions and ``my_task.enqueue(...)``; the backend
sends each call as one aqueue task, ``aqueue.django.run``, carrying the function's dotted
path and its arguments, and an aqueue worker runs it. Django 6's ``django.tasks`` is used
when it is installed, else the ``django_tasks`` backport (the reference implementation that
Django 6 merged): the same classes under another module name.

Nothing in aqueue's core imports this package, and this package imports Django only when
it is itself imported: a worker that never sees Django never loads it.

- :class:`AqueueBackend`: the backend (``aqueue.django.backend``).
- :func:`install`: registers ``aqueue.django.run`` on the app the worker runs.
- :func:`enqueue_on_commit`: enqueue once the current transaction commits.
- :func:`run_in_loop`: call aqueue from sync Django code, also inside a worker (elsewhere
  ``app.sync`` does the same).
"""

from __future__ import annotations

from .backend import AqueueBackend, enqueue_on_commit, run_in_loop
from .runner import RUN_TASK, install

__all__ = ["RUN_TASK", "AqueueBackend", "enqueue_on_commit", "install", "run_in_loop"]
