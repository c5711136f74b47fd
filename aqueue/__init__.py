"""aqueue: an asyncio-native distributed task queue with Celery's vocabulary.

>>> from aqueue import App
>>> app = App("proj")                       # embedded SQLite broker and results
>>> @app.task
... async def add(x: int, y: int) -> int:
...     return x + y
>>> # h = await add.delay(2, 2); await h.wait() -> 4
"""

from . import workflows as workflows  # registers the workflow engine of every App
from .__about__ import __version__
from .core import states
from .core.app import App
from .core.awaiting import Awaiting
from .core.blocking import SyncGroupResult, SyncResult
from .core.canvas import (
    Chain,
    Chord,
    ChordHeader,
    Group,
    Signature,
    chain,
    chord,
    group,
    signature,
)
from .core.config import Settings
from .core.context import Request, current_task
from .core.errors import (
    AqueueError,
    ArgumentError,
    AsyncUsageError,
    BackendError,
    BrokerError,
    BulkPublishError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    IndeterminatePublish,
    MaxRetriesExceededError,
    MessageError,
    MessageTooLarge,
    NotRegistered,
    OptionError,
    PublishTimeout,
    Replace,
    ResultTooLarge,
    Retry,
    RoutingError,
    SignatureError,
    SoftTimeLimitExceeded,
    SubscriptionClosed,
    SyncUsageError,
    TaskFailed,
    TaskRevoked,
    TimeLimitExceeded,
    Unsupported,
)
from .core.logs import get_task_logger
from .core.message import ErrorInfo
from .core.middleware import Middleware
from .core.offload import ProcessPool, offload
from .core.offload_wire import RemoteError, WorkerLostError
from .core.options import CallOptions
from .core.result import AsyncResult, GroupResult, ResultSet, StateChange, result_from_tuple
from .core.routing import Broadcast, Exchange, Queue
from .core.task import Task, TaskCall
from .core.worker import Worker

__all__ = [
    "App",
    "AqueueError",
    "ArgumentError",
    "AsyncResult",
    "AsyncUsageError",
    "Awaiting",
    "BackendError",
    "Broadcast",
    "BrokerError",
    "BulkPublishError",
    "CallOptions",
    "Chain",
    "Chord",
    "ChordHeader",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "ErrorInfo",
    "Exchange",
    "Group",
    "GroupResult",
    "IndeterminatePublish",
    "MaxRetriesExceededError",
    "MessageError",
    "MessageTooLarge",
    "Middleware",
    "NotRegistered",
    "OptionError",
    "ProcessPool",
    "PublishTimeout",
    "Queue",
    "RemoteError",
    "Replace",
    "Request",
    "ResultSet",
    "ResultTooLarge",
    "Retry",
    "RoutingError",
    "Settings",
    "Signature",
    "SignatureError",
    "SoftTimeLimitExceeded",
    "StateChange",
    "SubscriptionClosed",
    "SyncGroupResult",
    "SyncResult",
    "SyncUsageError",
    "Task",
    "TaskCall",
    "TaskFailed",
    "TaskRevoked",
    "TimeLimitExceeded",
    "Unsupported",
    "Worker",
    "WorkerLostError",
    "__version__",
    "chain",
    "chord",
    "current_task",
    "get_task_logger",
    "group",
    "offload",
    "result_from_tuple",
    "signature",
    "states",
]
