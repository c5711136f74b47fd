"""Workflows: signatures, chain, group, chord (Celery's canvas), awaitable and durable."""

from .primitives import Chain, Chord, Group, chain, chord, group
from .results import GroupResult, result_from_tuple
from .signature import Canvas, Signature, signature

__all__ = [
    "Canvas",
    "Chain",
    "Chord",
    "Group",
    "GroupResult",
    "Signature",
    "chain",
    "chord",
    "group",
    "result_from_tuple",
    "signature",
]
