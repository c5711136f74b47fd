"""The workflow engine: used by core, owned by ``aqueue.workflows``, never imported here.

Core calls the engine through the :class:`~aqueue.core.protocols.Workflows` protocol
(``app.workflows``): to apply a chain, group or chord, and, in the worker, to start what
follows a step that ended. ``aqueue.workflows`` registers its factory when it is imported,
and ``aqueue/__init__.py`` imports it, so every :class:`~aqueue.App` has an engine: Python
runs ``aqueue/__init__.py`` before any ``aqueue.*`` module can be used.

(Brokers and result backends are found by URL scheme instead: see ``urls.py``.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .app import App
    from .protocols import Workflows

WorkflowsFactory = Callable[["App"], "Workflows"]

_workflows: WorkflowsFactory | None = None


def register_workflows(factory: WorkflowsFactory) -> None:
    """Make ``factory(app)`` the workflow engine of every app created from now on."""
    global _workflows
    _workflows = factory


def workflows_for(app: App) -> Workflows:
    """A workflow engine for ``app``."""
    if _workflows is None:  # only if aqueue/__init__.py did not run, which Python prevents
        raise ConfigurationError("no workflow engine registered: import aqueue first")
    return _workflows(app)
