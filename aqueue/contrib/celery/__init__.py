"""Celery compatibility: aqueue and Celery on the same Redis or RabbitMQ, one task at a time.

``CeleryBridge(app, "redis://...", queues=["celery"])`` (or an ``amqp://`` broker URL) makes
every worker of ``app`` run the Celery-sent tasks of those queues it knows (and write
Celery's results), and gives ``bridge.send_task(...)`` for tasks that still live on Celery.
See docs/migrating-from-celery.md, "Migrating one task at a time".
"""

from .bridge import REFUSED_QUEUE, CeleryBridge, CeleryResult
from .protocol import Refused, signature

__all__ = ["REFUSED_QUEUE", "CeleryBridge", "CeleryResult", "Refused", "signature"]
