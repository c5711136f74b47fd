"""The canvas tests' tasks are used by the chord fault tests too."""

from ..workflows.conftest import calls, t

__all__ = ["calls", "t"]
