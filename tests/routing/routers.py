"""Router functions that tests name by dotted path (as Celery's task_routes allows)."""

from __future__ import annotations

from typing import Any


def by_first_argument(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any], task: Any
) -> dict[str, Any] | None:
    """Tasks named ``r.pick`` go to the queue their first argument names."""
    if name == "r.pick" and args:
        return {"queue": str(args[0])}
    return None


NOT_CALLABLE = {"queue": "x"}
