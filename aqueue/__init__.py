"""aqueue: an asyncio-native distributed task queue with Celery's vocabulary.

>>> from aqueue import App
>>> app = App("proj")                       # embedded SQLite broker and results
>>> @app.task
... async def add(x: int, y: int) -> int:
...     return x + y
>>> # h = await add.delay(2, 2); await h.wait() -> 4
"""

from .__about__ import __version__
from .core import states
from .core.app import App
from .core.config import Settings
from .core.context import Request, current_task
from .core.errors import (
    AqueueError,
    ArgumentError,
    BackendError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    IndeterminatePublish,
    MessageError,
    MessageTooLarge,
    NotRegistered,
    PublishTimeout,
    Retry,
    TaskFailed,
    TaskRevoked,
)
from .core.result import AsyncResult, StateChange
from .core.task import CallOptions, Task, TaskCall
from .core.worker import Worker

__all__ = [
    "App",
    "AqueueError",
    "ArgumentError",
    "AsyncResult",
    "BackendError",
    "BrokerError",
    "CallOptions",
    "ConfigurationError",
    "DecodeError",
    "IndeterminatePublish",
    "MessageError",
    "MessageTooLarge",
    "NotRegistered",
    "PublishTimeout",
    "Request",
    "Retry",
    "Settings",
    "StateChange",
    "Task",
    "TaskCall",
    "TaskFailed",
    "TaskRevoked",
    "Worker",
    "__version__",
    "current_task",
    "states",
]
