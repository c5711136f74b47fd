"""Integrations with other libraries, each behind its extra: ``aqueue.contrib.prometheus``
(``aqueue[prometheus]``) and ``aqueue.contrib.otel`` (``aqueue[otel]``).

Nothing here is imported by ``import aqueue``: a program that does not import a module of
this package pays nothing for it (docs/observability.md).
"""
