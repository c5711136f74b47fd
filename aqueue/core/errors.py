"""Every error aqueue raises, as one tree.

::

    AqueueError
    ├── ConfigurationError        bad settings, bad URL, missing extra
    │   └── RoutingError          a route that cannot be followed (undeclared queue or
    │                             exchange, or what only RabbitMQ's exchanges can do)
    ├── OptionError               a bad call option (also a TypeError and a ValueError)
    ├── NotRegistered             a task name the app does not know
    ├── BrokerError               the broker failed or could not be reached
    │   ├── PublishTimeout        a publish did not complete within its deadline
    │   ├── IndeterminatePublish  the connection died before the broker confirmed
    │   └── BulkPublishError      a bulk publish failed part-way; says what was stored
    ├── BackendError              the result backend failed or could not be reached
    ├── MessageError              a message that cannot be accepted
    │   ├── MessageTooLarge       payload over ``max_message_bytes``
    │   ├── ResultTooLarge        a result record over ``max_result_bytes`` (stored or read)
    │   ├── DecodeError           bytes that are not a valid aqueue message
    │   ├── SignatureError        signing is on and a message or record is unsigned,
    │   │                         signed with an unknown key, tampered with or too old
    │   └── EncodeError           a value (arguments, a result) the serializer cannot encode
    ├── ArgumentError             arguments that do not fit the task's signature
    ├── AsyncUsageError           a Celery idiom used without ``await`` (also a TypeError):
    │                             the message names the async spelling
    ├── SyncUsageError            the blocking API (``.sync``) called inside a running event
    │                             loop (also a RuntimeError): the message names the async
    │                             spelling
    ├── TaskFailed                the remote task ended in FAILURE
    ├── TaskRevoked               the task was revoked or expired
    ├── Unsupported               a Celery feature aqueue deliberately does not have (also
    │                             a NotImplementedError): the message names what to use
    ├── Retry                     raised by ``self.retry()`` to ask for another attempt
    ├── Replace                   raised by ``self.replace()``: the task's result is the
    │                             replacement's
    ├── MaxRetriesExceededError   ``retry()`` called with no retries left and no ``exc``
    ├── SoftTimeLimitExceeded     raised inside a task when its soft time limit passes
    ├── TimeLimitExceeded         the task ran past its hard time limit and was stopped
    ├── RemoteError               (offload_wire) an exception of a type that cannot cross
    │                             the process boundary; keeps its name, message, traceback
    └── WorkerLostError           (offload_wire) an offload child process died mid-call

``TimeoutError`` (the builtin) is raised by ``wait(timeout=...)`` when the deadline passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .nodes import Node
    from .result import AsyncResult


class AqueueError(Exception):
    """Base class of every error aqueue raises."""


class ConfigurationError(AqueueError):
    """Settings, a URL or an installed extra do not allow what was asked."""


class RoutingError(ConfigurationError):
    """A message cannot go where its routing sends it: a queue missing from ``task_queues``
    (with ``task_create_missing_queues`` off), an exchange declared nowhere, a routing key no
    queue is bound to, or a copy to several queues on a broker without exchanges."""


class OptionError(AqueueError, TypeError, ValueError):
    """A call option that is unknown, of the wrong type or out of range.

    The same option gets the same error from every way of sending (``apply_async``,
    ``options()``, signatures, ``send_many``, workflow steps...).
    """


class NotRegistered(AqueueError, KeyError):
    """No task with this name is registered on the app."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class BrokerError(AqueueError):
    """The broker failed or could not be reached."""


class SubscriptionClosed(BrokerError):
    """A topic subscription was read after it was closed (by its reader, or by its broker
    closing): nothing more will come from it."""


class PublishTimeout(BrokerError):
    """A publish did not complete within its deadline; it may or may not have been stored."""


class IndeterminatePublish(BrokerError):
    """The connection died after a publish was sent and before it was confirmed.

    Re-sending with the same ``task_id`` is safe: the broker de-duplicates by id.
    """


class BulkPublishError(BrokerError):
    """A bulk publish (``delay_many``, ``apply_many``, ``send_many``) failed part-way.

    Messages are published in chunks, in order, and the call stops at the first chunk that
    fails. ``results`` holds a handle for every message of the call, in order:

    * ``results[:published]`` were stored by the broker, for certain;
    * the next ``uncertain`` ones (the failed chunk) may or may not have been stored;
    * the rest were never sent.

    The broker's own error is the ``__cause__``. Sending a message again with the same
    task id is safe (the broker de-duplicates ids): ``add.s(*args).set(task_id=r.id)``.
    """

    def __init__(
        self, message: str, *, published: int, uncertain: int, results: list[AsyncResult[Any]]
    ) -> None:
        super().__init__(message)
        self.published = published
        self.uncertain = uncertain
        self.results = results


class BackendError(AqueueError):
    """The result backend failed or could not be reached."""


class MessageError(AqueueError):
    """A message that cannot be accepted."""


class MessageTooLarge(MessageError):
    """The encoded message is larger than ``max_message_bytes``."""


class DecodeError(MessageError):
    """Bytes that are not a valid aqueue message."""


class SignatureError(MessageError):
    """A message or result record that fails signature verification (docs/security.md).

    ``reason`` says why, as dead letters name it: ``unsigned``, ``unknown_key``,
    ``bad_signature``, ``expired`` or ``malformed``.
    """

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


class EncodeError(MessageError):
    """A value (arguments, a result) the serializer cannot encode: an int beyond 64 bits,
    a self-referencing list, an object of an unsupported type."""


class ResultTooLarge(MessageError):
    """A result record over ``max_result_bytes``: refused when a worker stores it (the task
    fails, ``reason`` ``result_too_large``) and when a client reads one stored anyway."""


class ArgumentError(AqueueError, TypeError):
    """Arguments that do not fit the task's signature or annotations."""


class AsyncUsageError(AqueueError, TypeError):
    """A Celery idiom used the synchronous way where aqueue needs ``await``.

    Raised instead of a silently wrong answer: ``result.state == "PENDING"``, ``if
    result.ready:``, ``if result.ready():``, reading ``result.status`` before anything was
    read. The message names the async spelling (``await result.state()``).
    """


class SyncUsageError(AqueueError, RuntimeError):
    """The blocking API (``task.sync.delay()``, ``result.get()``...) called from inside a
    running event loop.

    Blocking there would stall every other coroutine of that loop (and, on the sync API's
    own loop, deadlock), so it is refused; the message names the ``await`` spelling.
    """


class TaskFailed(AqueueError):
    """The task ended in FAILURE; carries the remote error as text, never as an object."""

    def __init__(self, task_id: str, exc_type: str, message: str, traceback: str | None) -> None:
        super().__init__(f"{exc_type}: {message}" if message else exc_type)
        self.task_id = task_id
        self.exc_type = exc_type
        self.exc_message = message
        self.traceback = traceback


class TaskRevoked(AqueueError):
    """The task was revoked or expired before it ran."""

    def __init__(self, task_id: str, reason: str = "revoked") -> None:
        super().__init__(f"task {task_id} {reason}")
        self.task_id = task_id
        self.reason = reason


class Unsupported(AqueueError, NotImplementedError):
    """A Celery feature aqueue deliberately does not have; the message names what to use."""


#: why aqueue has no eager mode, and what to use instead (``task_always_eager``, ``apply()``)
EAGER_ALTERNATIVE = (
    "aqueue has no eager mode (it would skip the serialization, options and workflow "
    "engine a worker runs, so it tests something else): run it in-process with "
    "App(broker='memory://') and an embedded worker (async with app.worker(): "
    "await (await canvas.delay()).wait()); in pytest, aqueue.testing's drain(app) "
    "(docs/testing.md); or call the task's function directly (await add(2, 2))"
)


def eager_refused(call: str) -> Unsupported:
    """The error for Celery's eager ``call`` (``chain.apply()``, ``add.apply()``)."""
    return Unsupported(
        f"{call} (Celery's eager, in-process run) is not supported: {EAGER_ALTERNATIVE}"
    )


class Replace(AqueueError):
    """Raised by ``self.replace(canvas)``: the task's result is its replacement's.

    The worker applies the replacement (``node``, its ids derived from the task's id) in
    the task's place: what followed the task in its chain, its callbacks and its chord
    follow the replacement. Like :class:`Retry`, it must not be caught by the task.
    """

    def __init__(self, node: Node) -> None:
        super().__init__("replaced")
        self.node = node


class Retry(AqueueError):
    """Raised by ``self.retry()``: end this attempt and run the task again later."""

    def __init__(
        self,
        message: str = "retry",
        *,
        exc: BaseException | None = None,
        countdown: float | None = None,
        when: float | None = None,
        max_retries: int | None = None,
    ) -> None:
        super().__init__(message)
        self.exc = exc
        self.countdown = countdown
        self.when = when
        self.max_retries = max_retries


class MaxRetriesExceededError(AqueueError):
    """``retry()`` was called with no retries left and no ``exc`` to re-raise."""


class SoftTimeLimitExceeded(AqueueError):
    """Raised inside a running task when its ``soft_time_limit`` passes; catch it to clean up."""


class TimeLimitExceeded(AqueueError):
    """The task ran past its hard ``time_limit``: cancelled, or its process killed."""
