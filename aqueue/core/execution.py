"""Running one delivery: decode, validate, call, store the result, settle.

The worker never dies of a message: undecodable bytes, unknown task names, arguments that do
not fit and messages past ``max_deliveries`` are dead-lettered with a reason (and, where the
task id is known, a FAILURE is stored so waiters are told).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
import traceback
from concurrent.futures import Executor as PoolExecutor
from typing import TYPE_CHECKING, Any

import msgspec

from . import context, limits, retry, states
from .errors import ArgumentError, DecodeError, Retry
from .message import ErrorInfo, MessageIn, ResultOut, decode_message
from .protocols import Delivery
from .serialization import SerializerName, encode, format_of

if TYPE_CHECKING:
    from .app import App
    from .task import Task

log = logging.getLogger("aqueue.worker")


class Executor:
    """Runs deliveries for one worker."""

    def __init__(self, app: App, hostname: str, pool: PoolExecutor) -> None:
        self.app = app
        self.hostname = hostname
        self.pool = pool
        self.conf = app.conf
        self.succeeded = 0
        self.failed = 0
        self.dead_lettered = 0
        self.retried = 0

    async def execute(self, delivery: Delivery) -> None:
        """Handle one delivery to the end; raises only ``CancelledError``."""
        try:
            msg = decode_message(delivery.body, self.conf.max_message_bytes)
        except DecodeError as exc:
            await self._dead_letter(delivery, "decode_error", str(exc))
            return
        serializer = format_of(delivery.body)
        attempt = msg.prior_attempts + delivery.delivery_count
        task = self.app.tasks.get(msg.task)
        if task is None:
            await self._refuse(
                delivery,
                msg,
                attempt,
                serializer,
                "unknown_task",
                "NotRegistered",
                f"no task named {msg.task!r} is registered on this worker",
            )
            return
        if delivery.delivery_count > self.conf.max_deliveries:
            await self._refuse(
                delivery,
                msg,
                attempt,
                serializer,
                "max_deliveries",
                "WorkerLostError",
                f"delivered {delivery.delivery_count - 1} times without completing "
                f"(max_deliveries={self.conf.max_deliveries}); the worker running it died",
            )
            return
        if msg.expires is not None and time.time() >= msg.expires:
            await self._store(
                msg,
                attempt,
                serializer,
                states.REVOKED,
                error=ErrorInfo(type="TaskRevoked", message="expired", reason="expired"),
            )
            await delivery.ack()
            return
        try:
            args, kwargs = task.spec.decode(msg.args, msg.kwargs, serializer)
        except ArgumentError as exc:
            await self._refuse(
                delivery, msg, attempt, serializer, "bad_arguments", "ArgumentError", str(exc)
            )
            return
        await self._run(delivery, task, msg, attempt, serializer, args, kwargs)

    async def _run(
        self,
        delivery: Delivery,
        task: Task[Any, Any],
        msg: MessageIn,
        attempt: int,
        serializer: SerializerName,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        conf = self.conf
        acks_late = conf.task_acks_late if task.acks_late is None else task.acks_late
        if not acks_late:
            await delivery.ack()  # at-most-once, by the task's choice
        started = time.time()
        track = conf.task_track_started if task.track_started is None else task.track_started
        if track and not msg.ignore_result:
            await self._store(msg, attempt, serializer, states.STARTED, date_started=started)
        hard = _first(msg.time_limit, task.time_limit, conf.task_time_limit)
        soft = _first(msg.soft_time_limit, task.soft_time_limit, conf.task_soft_time_limit)
        request = context.Request(
            id=msg.id,
            task=msg.task,
            args=args,
            kwargs=kwargs,
            queue=msg.queue,
            attempt=attempt,
            retries=msg.retries,
            headers=msg.headers,
            hostname=self.hostname,
            eta=msg.eta,
            expires=msg.expires,
            priority=msg.priority,
            parent_id=msg.parent_id,
            root_id=msg.root_id,
            group_id=msg.group_id,
            delivery_count=delivery.delivery_count,
        )
        token = context.enter(task, request)
        try:
            if task.is_async:
                value = task(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await limits.run_coroutine(_as_coroutine(value), soft=soft, hard=hard)
            else:
                call = functools.partial(contextvars.copy_context().run, task, *args, **kwargs)
                value = await limits.run_in_thread(self.pool, call, soft=soft, hard=hard)
        except Retry as signal:
            await self._retry(
                delivery, task, msg, attempt, serializer, args, kwargs, signal, request
            )
            return
        except Exception as exc:
            auto = retry.autoretry(task, request, exc)
            if auto is not None:
                await self._retry(
                    delivery, task, msg, attempt, serializer, args, kwargs, auto, request
                )
                return
            await self._failed(
                delivery, task, msg, attempt, serializer, args, kwargs, exc, acks_late, started
            )
            return
        finally:
            context.leave(token)
        self.succeeded += 1
        if log.isEnabledFor(logging.INFO):
            log.info(
                "Task %s[%s] succeeded in %.3fs (attempt %d)",
                msg.task,
                msg.id,
                time.time() - started,
                attempt,
            )
        if not msg.ignore_result:
            await self._store(
                msg, attempt, serializer, states.SUCCESS, value=value, date_started=started
            )
        await _hook(task.on_success, value, msg.id, args, kwargs)
        await _hook(task.after_return, states.SUCCESS, value, msg.id, args, kwargs, None)
        if acks_late and not await delivery.ack():
            log.warning(
                "Task %s[%s]: lease lost before ack; a newer attempt owns it", msg.task, msg.id
            )

    async def _retry(
        self,
        delivery: Delivery,
        task: Task[Any, Any],
        msg: MessageIn,
        attempt: int,
        serializer: SerializerName,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        signal: Retry,
        request: context.Request,
    ) -> None:
        """Re-enqueue the same task id as a new attempt, due after the countdown."""
        now = time.time()
        if signal.when is not None:
            eta: float | None = signal.when
        else:
            eta = now + (signal.countdown if signal.countdown is not None else 0.0)
        if eta is not None and eta <= now:
            eta = None
        max_retries = signal.max_retries if signal.max_retries is not None else msg.max_retries
        again = msgspec.structs.replace(
            msg,
            retries=msg.retries + 1,
            prior_attempts=attempt,
            eta=eta,
            max_retries=max_retries,
        )
        exc = signal.exc if signal.exc is not None else signal
        tb = "".join(traceback.format_exception(exc))
        self.retried += 1
        log.warning(
            "Task %s[%s] retry %d in %.1fs: %s",
            msg.task,
            msg.id,
            msg.retries + 1,
            max((eta or now) - now, 0.0),
            type(exc).__qualname__,
        )
        if not msg.ignore_result:
            await self._store(
                msg,
                attempt,
                serializer,
                states.RETRY,
                error=ErrorInfo(type=type(exc).__qualname__, message=str(exc), traceback=tb),
            )
        await _hook(task.on_retry, exc, msg.id, args, kwargs, tb)
        if not await delivery.requeue(encode(again, serializer), eta=eta):
            log.warning(
                "Task %s[%s]: lease lost before the retry was queued; a newer attempt owns it",
                msg.task,
                msg.id,
            )

    async def _failed(
        self,
        delivery: Delivery,
        task: Task[Any, Any],
        msg: MessageIn,
        attempt: int,
        serializer: SerializerName,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: Exception,
        acks_late: bool,
        started: float,
    ) -> None:
        self.failed += 1
        tb = "".join(traceback.format_exception(exc))
        log.error(
            "Task %s[%s] raised %s (attempt %d)", msg.task, msg.id, type(exc).__qualname__, attempt
        )
        error = ErrorInfo(type=type(exc).__qualname__, message=str(exc), traceback=tb)
        if not msg.ignore_result:
            await self._store(
                msg, attempt, serializer, states.FAILURE, error=error, date_started=started
            )
        await _hook(task.on_failure, exc, msg.id, args, kwargs, tb)
        await _hook(task.after_return, states.FAILURE, exc, msg.id, args, kwargs, tb)
        if acks_late:
            await delivery.ack()

    async def _refuse(
        self,
        delivery: Delivery,
        msg: MessageIn,
        attempt: int,
        serializer: SerializerName,
        reason: str,
        exc_type: str,
        text: str,
    ) -> None:
        """Fail the task without running it and dead-letter the message."""
        await self._store(
            msg,
            attempt,
            serializer,
            states.FAILURE,
            error=ErrorInfo(type=exc_type, message=text, reason=reason),
        )
        await self._dead_letter(delivery, reason, text, task=msg.task)

    async def _dead_letter(
        self, delivery: Delivery, reason: str, text: str, task: str | None = None
    ) -> None:
        self.dead_lettered += 1
        log.error(
            "dead-lettering message %s from queue %s (%s): %s%s",
            delivery.id,
            delivery.queue,
            reason,
            text[:200],
            f" [task {task}]" if task else "",
        )
        await delivery.dead_letter(reason)

    async def _store(
        self,
        msg: MessageIn,
        attempt: int,
        serializer: SerializerName,
        state: str,
        *,
        value: Any = None,
        error: ErrorInfo | None = None,
        date_started: float | None = None,
    ) -> None:
        backend = self.app._backend
        if backend is None:
            return
        now = time.time()
        record = ResultOut(
            id=msg.id,
            state=state,
            task=msg.task,
            value=value,
            error=error,
            attempt=attempt,
            retries=msg.retries,
            worker=self.hostname,
            date_started=date_started,
            date_done=now if state in states.READY_STATES else None,
            parent_id=msg.parent_id,
            root_id=msg.root_id,
            group_id=msg.group_id,
        )
        try:
            body = encode(record, serializer)
        except (TypeError, ValueError) as exc:  # a return value msgspec cannot encode
            record = ResultOut(
                id=msg.id,
                state=states.FAILURE,
                task=msg.task,
                attempt=attempt,
                worker=self.hostname,
                date_done=now,
                error=ErrorInfo(
                    type="EncodeError",
                    message=f"result not serializable: {exc}",
                    reason="encode_error",
                ),
            )
            state = states.FAILURE
            body = encode(record, serializer)
        stored = await backend.store(
            msg.id, body, state=state, attempt=attempt, ttl=self.conf.result_expires
        )
        if not stored:
            log.warning(
                "Task %s[%s]: %s from attempt %d refused; a newer attempt wrote first",
                msg.task,
                msg.id,
                state,
                attempt,
            )


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


async def _as_coroutine(awaitable: Any) -> Any:
    """Wrap any awaitable (a custom ``__call__`` may return one) as a coroutine."""
    return await awaitable


async def _hook(hook: Any, *args: Any) -> None:
    """Call a task hook, sync or async; a hook's error is logged, never fatal."""
    try:
        value = hook(*args)
        if inspect.isawaitable(value):
            await value
    except Exception:
        log.exception("task hook %s raised", getattr(hook, "__name__", hook))
