"""The workflow engine: used by core, owned by ``aqueue.workflows``, never imported here.

Core calls the engine through the :class:`~aqueue.core.protocols.Workflows` protocol
(``app.workflows``): to apply a chain, group or chord, and, in the worker, to start what
follows a step that ended. ``aqueue.workflows`` registers its factory when it is imported,
and ``aqueue/__init__.py`` imports it, so every :class:`~aqueue.App` has an engine: Python
runs ``aqueue/__init__.py`` before any ``aqueue.*`` module can be used.

(Brokers and result backends are found by URL scheme instead: see ``urls.py``.) The
periodic task scheduler (``app.beat()``) is registered by ``aqueue.beat`` the same way,
but that module is imported on first use only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .app import App
    from .protocols import BeatService, Workflows

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


# -- the periodic task scheduler -------------------------------------------------------------

BeatFactory = Callable[..., "BeatService"]
#: checks one entry as ``beat_schedule`` holds it: ``check(app, name, entry)``
BeatCheck = Callable[["App", str, Any], None]

#: the module that registers the scheduler when imported (by name: core never imports it)
BEAT_MODULE = "aqueue.beat"

_beat: tuple[BeatFactory, BeatCheck] | None = None


def register_beat(factory: BeatFactory, check: BeatCheck) -> None:
    """Make ``factory(app, **options)`` what ``app.beat()`` returns, and ``check`` what
    ``@app.periodic`` checks its entry with."""
    global _beat
    _beat = (factory, check)


def _registered_beat() -> tuple[BeatFactory, BeatCheck]:
    # aqueue.beat is imported on first use, by name, as urls.py imports brokers: an app
    # without periodic tasks never loads it
    if _beat is None:
        importlib.import_module(BEAT_MODULE)
    if _beat is None:  # pragma: no cover (the module registers itself)
        raise ConfigurationError(f"{BEAT_MODULE} did not register a scheduler")
    return _beat


def beat_for(app: App, **options: Any) -> BeatService:
    """The scheduler for ``app``."""
    return _registered_beat()[0](app, **options)


def check_beat_entry(app: App, name: str, entry: Any) -> None:
    """Check a periodic task entry now (``@app.periodic``), not when a scheduler starts.

    Raises:
        ConfigurationError: one line naming the entry and what is wrong.
    """
    _registered_beat()[1](app, name, entry)
