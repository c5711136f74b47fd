"""Workflows: the engine that runs Celery's canvas (chain, group, chord), durably.

The canvas itself (``Signature``, ``chain``, ``group``, ``chord``) is data and lives in
``aqueue.core.canvas``; it is re-exported here and from ``aqueue``. Importing this package
registers :class:`~aqueue.workflows.engine.Engine` as every app's ``app.workflows``.
"""

from ..core.canvas import Canvas, Chain, Chord, Group, Signature, chain, chord, group, signature
from ..core.plugins import register_workflows
from ..core.result import GroupResult, ResultSet, result_from_tuple
from .engine import Engine

register_workflows(Engine)

__all__ = [
    "Canvas",
    "Chain",
    "Chord",
    "Group",
    "GroupResult",
    "ResultSet",
    "Signature",
    "chain",
    "chord",
    "group",
    "result_from_tuple",
    "signature",
]
