"""Integrations with other libraries, each behind its extra: ``aqueue.contrib.prometheus``
(``aqueue[prometheus]``), ``aqueue.contrib.otel`` (``aqueue[otel]``) and
``aqueue.contrib.asgi`` (the FastAPI / Starlette lifespan; imports no framework).

Nothing here is imported by ``import aqueue``, and the core never imports these: a program
that does not import a module of this package pays nothing for it (docs/observability.md,
docs/sync.md).
"""
