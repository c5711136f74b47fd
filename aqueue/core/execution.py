"""Running one delivery: decode, admit, call, store the result, settle.

The worker never dies of a message: undecodable bytes, unknown task names, arguments that do
not fit and messages past ``max_deliveries`` are dead-lettered with a reason (and, where the
task id is known, a FAILURE is stored so waiters are told).

Order of checks for a claimed delivery: decode → registered? → ``max_deliveries`` →
revoked? → expired? → arguments → rate limit → concurrency limit → run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor as PoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from . import context, limits, retry, signals, states
from .admission import RATE_SLOT_HEADER, LocalThrottle, parse_rate
from .config import keyring_of
from .control import TERMINATE
from .emitting import EventDispatcher
from .errors import (
    ArgumentError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    MessageError,
    Replace,
    ResultTooLarge,
    Retry,
    SignatureError,
)
from .message import (
    INTERNAL_HEADER_PREFIX,
    ErrorInfo,
    MessageIn,
    ResultOut,
    decode_message,
    decode_result,
    encode_result,
    peek_identity,
    raw_is_empty,
)
from .middleware import chain_execute
from .offload import ProcessPool
from .protocols import Delivery, RoutesResults, SharedThrottle
from .serialization import SerializerName, decode, encode, format_of
from .signed_results import underlying
from .signing import Keyring, is_signed
from .task import call_hook

if TYPE_CHECKING:
    from .app import App
    from .task import Task

log = logging.getLogger("aqueue.worker")

#: seconds a task blocked by its concurrency limit waits on the broker before another try
_CONCURRENCY_BACKOFF = 0.5

#: ``ErrorInfo.reason`` of a task that aqueue failed after it ran
_REASONS: dict[type[BaseException], str] = {
    EncodeError: "encode_error",
    ResultTooLarge: "result_too_large",
}


@dataclass(slots=True)
class Job:
    """One delivery on its way through the executor."""

    delivery: Delivery
    msg: MessageIn
    task: Task[Any, Any]
    attempt: int
    fmt: SerializerName
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    request: context.Request | None = None
    started: float = 0.0
    #: the concurrency slot it holds, if any: released when it ends
    slot: str | None = None


class Executor:
    """Runs deliveries for one worker."""

    def __init__(
        self,
        app: App,
        hostname: str,
        pool: PoolExecutor,
        throttle: SharedThrottle | None,
        processes: Callable[[], ProcessPool],
    ) -> None:
        self.app = app
        self.hostname = hostname
        self.pool = pool
        #: the worker's process pool (created on first use)
        self.processes = processes
        self.conf = app.conf
        self.throttle: SharedThrottle = throttle or LocalThrottle()
        self.slots_held: dict[str, tuple[str, str]] = {}  # task id -> (key, holder)
        self.succeeded = 0
        self.failed = 0
        self.dead_lettered = 0
        self.retried = 0
        #: tasks that replaced themselves (``self.replace()``)
        self.replaced = 0
        self.revoked = 0
        #: redelivered messages whose task had already finished (acked, not run again)
        self.duplicates = 0
        #: tasks received, by name (``inspect stats``' ``total``)
        self.counts: dict[str, int] = {}
        #: the jobs running now (admitted past rate and concurrency limits), by task id
        self.jobs: dict[str, Job] = {}
        #: signs what this worker sends and verifies what it receives (None: signing off)
        self._keyring = keyring_of(app.conf)
        backend = underlying(app.backend)
        self._observe = backend.observe if isinstance(backend, RoutesResults) else None
        #: store each task's arguments in its records (``result_extended``)
        self._extended = app.conf.result_extended
        self._max_result_bytes = app.conf.max_result_bytes
        #: called with the task id when a task's body has returned or raised, before its
        #: result is stored and its message settled (the worker claims more meanwhile)
        self.on_ran: Callable[[str], None] | None = None
        #: monitoring events (``events.py``): the worker sets its own; each call site
        #: checks ``enabled`` first, all they cost when off
        self.events = EventDispatcher(app, hostname, enabled=False)

    # -- admission ----------------------------------------------------------------------

    async def execute(self, delivery: Delivery, *, prior: bytes | None = None) -> None:
        """Handle one delivery to the end; raises only ``CancelledError``.

        Args:
            delivery: the claimed message.
            prior: the record stored for its task id when it was claimed, if any.
        """
        body = delivery.body
        keyring = self._keyring
        if keyring is not None:  # nothing of a message is read before it is verified
            try:
                body = self._verified(keyring, body)
            except SignatureError as exc:
                await self._refuse_unverified(delivery, exc)
                return
        try:
            msg = decode_message(body, self.conf.max_message_bytes)
        except DecodeError as exc:
            await self._refuse_undecodable(delivery, "decode_error", str(exc))
            return
        if keyring is not None:
            if msg.id != delivery.id:
                # published under another id, past the broker's de-duplication: the
                # record of the task it names decides whether it was handled before
                prior = await self._stored(msg.id)
            if prior is not None:
                prior = self._trusted_record(keyring, msg.id, prior)
        observe = self._observe
        if observe is not None:  # learn where this task's records are pushed
            observe(msg.id, msg.headers)
        fmt = format_of(body)
        attempt = msg.prior_attempts + delivery.delivery_count
        task = self.app.tasks.get(msg.task)
        if task is None:
            await self._refuse(
                delivery,
                msg,
                attempt,
                fmt,
                "unknown_task",
                "NotRegistered",
                f"no task named {msg.task!r} is registered on this worker",
            )
            return
        if log.isEnabledFor(logging.INFO):
            log.info("Task %s[%s] received", msg.task, msg.id)
        counts = self.counts
        counts[msg.task] = counts.get(msg.task, 0) + 1
        if self.events.enabled:
            self.events.received(msg, fmt)
        job = Job(delivery, msg, task, attempt, fmt)
        if prior is not None and await self._settled_before(job, prior):
            return
        if delivery.delivery_count > self.conf.max_deliveries:
            await self._refuse(
                delivery,
                msg,
                attempt,
                fmt,
                "max_deliveries",
                "WorkerLostError",
                f"delivered {delivery.delivery_count - 1} times without completing "
                f"(max_deliveries={self.conf.max_deliveries}); the worker running it died",
            )
            return
        if msg.expires is not None and time.time() >= msg.expires:
            self.revoked += 1
            expired = ErrorInfo(type="TaskRevoked", message="expired", reason="expired")
            await self._store(job, states.REVOKED, error=expired)
            await self._continue_failure(msg, expired)
            await delivery.ack()
            if self.events.enabled:
                self.events.revoked(msg.id, terminated=False, expired=True, reason="expired")
            await signals.task_revoked.send(task, task_id=msg.id, terminated=False, expired=True)
            return
        try:
            job.args, job.kwargs = task.spec.decode(msg.args, msg.kwargs, fmt)
        except ArgumentError as exc:
            await self._refuse(
                delivery, msg, attempt, fmt, "bad_arguments", "ArgumentError", str(exc)
            )
            return
        if task.rate_limit is not None and not await self._admit_rate(job):
            return
        if task.concurrency_limit is not None:
            holder = msg.id
            key = f"task:{task.name}"
            if not await self.throttle.acquire_slot(
                key, holder, task.concurrency_limit, self.conf.lease_seconds
            ):
                due = time.time() + _CONCURRENCY_BACKOFF
                await delivery.requeue(self._signed(body, due), eta=due)
                return
            job.slot = key
            self.slots_held[msg.id] = (key, holder)
        self.jobs[msg.id] = job
        try:
            await self._run(job)
        finally:
            self.jobs.pop(msg.id, None)
            if job.slot is not None:
                self.slots_held.pop(msg.id, None)
                await self.throttle.release_slot(job.slot, msg.id)

    @staticmethod
    def _verified(keyring: Keyring, body: bytes) -> bytes:
        """The message inside a signed frame, once its signature and date are good.

        Raises:
            SignatureError: why not (an unsigned message passes when signing is not
                required).
        """
        if not keyring.required and not is_signed(body):
            return body
        frame = keyring.open(body)
        keyring.check_age(frame, time.time())
        return frame.body

    def _signed(self, body: bytes, eta: float | None) -> bytes:
        """``body`` (a message this worker sends again) signed when signing is on."""
        keyring = self._keyring
        return body if keyring is None else keyring.sign(body, eta=eta)

    def _encode_message(self, msg: MessageIn, fmt: SerializerName) -> bytes:
        return self._signed(encode(msg, fmt), msg.eta)

    @staticmethod
    def _trusted_record(keyring: Keyring, task_id: str, raw: bytes) -> bytes | None:
        """A record read with a claim, verified (``None``, logged, when it is not)."""
        try:
            return keyring.verify(raw, task_id.encode())
        except SignatureError as exc:
            log.error("the stored record of %s is not trusted (%s): ignored", task_id, exc)
            return None

    async def _stored(self, task_id: str) -> bytes | None:
        """The stored record of ``task_id`` as stored (best effort: ``None`` on errors)."""
        backend = underlying(self.app.backend)
        if backend is None:
            return None
        try:
            return await backend.get(task_id)
        except Exception as exc:
            log.warning(
                "could not read the record of %s (%s: %s)", task_id, type(exc).__name__, exc
            )
            return None

    def _trusted_body(self, body: bytes) -> bytes | None:
        """``body`` if signing is off or it verifies (date aside), else ``None``."""
        keyring = self._keyring
        if keyring is None:
            return body
        try:
            return keyring.verify(body)
        except SignatureError:
            return None

    async def _settled_before(self, job: Job, prior: bytes) -> bool:
        """Handle a task that was revoked, already finished (a redelivered duplicate), or
        (with signing on) a message delivered again by someone who re-published it."""
        record = decode_result(prior)
        msg, task, delivery = job.msg, job.task, job.delivery
        if record.state == states.REVOKED:
            self.revoked += 1
            log.info("Task %s[%s] revoked: not run", msg.task, msg.id)
            await self._continue_failure(
                msg, ErrorInfo(type="TaskRevoked", message="revoked", reason="revoked")
            )
            await delivery.ack()
            if self.events.enabled:
                self.events.revoked(msg.id, terminated=False, expired=False, reason="revoked")
            await signals.task_revoked.send(task, task_id=msg.id, terminated=False, expired=False)
            return True
        if msg.exchange and self.app.router().copies(msg.exchange, msg.routing_key):
            return False  # another queue's copy finished (a broadcast): this one runs too
        if self._keyring is not None and record.attempt >= job.attempt:
            # every delivery of an enqueue counts a new attempt, and a retry is a new
            # message: a record this attempt or a later one wrote means these bytes were
            # handled before and published again
            text = (
                f"attempt {job.attempt} of this task was already handled (stored: "
                f"{record.state}, attempt {record.attempt}): the message was published again"
            )
            await self._dead_letter(delivery, "replayed", text, task=msg.task, recorded=True)
            return True
        if record.state not in (states.SUCCESS, states.FAILURE):
            return False
        # it ran to the end before (its worker died before acking): do not run it again, but
        # finish what follows it (idempotent: fixed ids, an idempotent chord join)
        self.duplicates += 1
        log.info(
            "Task %s[%s] already %s (attempt %d): not run again",
            msg.task,
            msg.id,
            record.state,
            record.attempt,
        )
        if record.state == states.SUCCESS:
            if msg.chain or msg.link or msg.chord is not None:
                value = (
                    None
                    if raw_is_empty(record.value)
                    else decode(record.value, Any, format_of(prior))
                )
                await self._continue_success(msg, value)
        else:
            await self._continue_failure(
                msg,
                record.error
                or ErrorInfo(type="TaskFailed", message="failed in an earlier attempt"),
            )
        await delivery.ack()
        return True

    async def _admit_rate(self, job: Job) -> bool:
        """Reserve a rate slot, or delay the message on the broker until its slot."""
        msg, task = job.msg, job.task
        assert task.rate_limit is not None
        now = time.time()
        reserved = msg.headers.get(RATE_SLOT_HEADER)
        if reserved is not None:
            at, _, under = reserved.partition(" ")
            # came back at the slot it reserved earlier, under the rate still in force (a
            # slot reserved before ``control rate_limit`` changed the rate is reserved anew)
            if float(at) <= now + 0.01 and under in ("", task.rate_limit):
                return True
        rate = parse_rate(task.rate_limit)
        slot = await self.throttle.reserve_rate(f"task:{task.name}", rate.limit, rate.period)
        # the clock again: a reservation that took a while to come back (a loaded machine or
        # server) is a slot for now, not one to send the message back to wait for
        if slot <= time.time() + 0.01:
            return True
        delayed = msgspec.structs.replace(
            msg, headers={**msg.headers, RATE_SLOT_HEADER: f"{slot!r} {task.rate_limit}"}
        )
        await job.delivery.requeue(self._encode_message(delayed, job.fmt), eta=slot)
        return False

    # -- running ------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        conf, task, msg, delivery = self.conf, job.task, job.msg, job.delivery
        acks_late = conf.task_acks_late if task.acks_late is None else task.acks_late
        if not acks_late:
            await delivery.ack()  # at-most-once, by the task's choice
        job.started = time.time()
        if self.events.enabled:
            self.events.started(msg.id)
        track = conf.task_track_started if task.track_started is None else task.track_started
        if track and not msg.ignore_result:
            await self._store(job, states.STARTED, date_started=job.started)
        hard = _first(msg.time_limit, task.time_limit, conf.task_time_limit)
        soft = _first(msg.soft_time_limit, task.soft_time_limit, conf.task_soft_time_limit)
        args, kwargs = job.args, job.kwargs or {}
        headers = _user_headers(msg.headers)
        request = job.request = context.Request(
            id=msg.id,
            task=msg.task,
            args=args,
            kwargs=kwargs,
            queue=msg.queue,
            attempt=job.attempt,
            retries=msg.retries,
            headers=headers,
            hostname=self.hostname,
            eta=msg.eta,
            expires=msg.expires,
            priority=msg.priority,
            parent_id=msg.parent_id,
            root_id=msg.root_id or msg.id,  # a task sent on its own is its workflow's root
            group_id=msg.group_id,
            chord=msg.chord if not msg.chain else None,
            keeps_trail=task.trail,
            delivery_count=delivery.delivery_count,
            max_retries=msg.max_retries,
            time_limit=hard,
            soft_time_limit=soft,
            loop=asyncio.get_running_loop(),
            exchange=msg.exchange,
            routing_key=msg.routing_key,
        )
        if signals.task_prerun.receivers:
            await signals.task_prerun.send(
                task, task_id=msg.id, args=args, kwargs=kwargs, request=request
            )

        async def call() -> Any:
            if task.is_async:
                value = task(*args, **kwargs)
                if soft is None and hard is None:  # the common case: no wrapper frames
                    return await value if inspect.isawaitable(value) else value
                if inspect.iscoroutine(value):
                    return await limits.run_coroutine(value, soft=soft, hard=hard)
                if inspect.isawaitable(value):
                    return await limits.run_coroutine(_as_coroutine(value), soft=soft, hard=hard)
                return value
            if task.offload == "process":
                return await self.processes().run(task, args, kwargs, soft=soft, hard=hard)
            run = functools.partial(contextvars.copy_context().run, task, *args, **kwargs)
            return await limits.run_in_thread(self.pool, run, soft=soft, hard=hard)

        token = context.enter(task, request)
        try:
            middlewares = self.app.middleware
            value = await (chain_execute(middlewares, request, call)() if middlewares else call())
        except Retry as signal:
            self._ran(msg.id)
            await self._retry(job, signal)
            return
        except Replace as signal:
            self._ran(msg.id)
            await self._replaced(job, signal, acks_late)
            return
        except Exception as exc:
            self._ran(msg.id)
            auto = retry.autoretry(task, request, exc)
            if auto is not None:
                await self._retry(job, auto)
                return
            await self._failed(job, exc, acks_late)
            return
        finally:
            context.leave(token)
        self._ran(msg.id)
        await self._succeeded(job, value, acks_late)

    def _ran(self, task_id: str) -> None:
        if self.on_ran is not None:
            self.on_ran(task_id)

    async def _succeeded(self, job: Job, value: Any, acks_late: bool) -> None:
        task, msg = job.task, job.msg
        record: bytes | None = None
        if not msg.ignore_result:
            try:
                record = self._record(job, states.SUCCESS, value=value, date_started=job.started)
            except (EncodeError, ResultTooLarge) as exc:
                # deterministic: running it again would fail the same way (and repeat its
                # side effects), so it is one FAILURE, never a redelivery
                await self._failed(job, exc, acks_late)
                return
        self.succeeded += 1
        if self.events.enabled:
            self.events.succeeded(msg.id, value, time.time() - job.started)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "Task %s[%s] succeeded in %.6fs%s",
                msg.task,
                msg.id,
                time.time() - job.started,
                _attempt_text(job.attempt),
            )
        if record is not None:
            await self._put(job.msg.id, job.msg.task, job.attempt, states.SUCCESS, record, job.msg)
        if msg.chain or msg.link or msg.chord is not None:
            await self._continue_success(msg, value)
        args, kwargs = job.args, job.kwargs or {}
        await call_hook(task, "on_success", value, msg.id, args, kwargs)
        await call_hook(task, "after_return", states.SUCCESS, value, msg.id, args, kwargs, None)
        if signals.task_success.receivers:
            await signals.task_success.send(task, result=value, request=job.request)
        if signals.task_postrun.receivers:
            await signals.task_postrun.send(
                task, task_id=msg.id, args=args, kwargs=kwargs, retval=value, state=states.SUCCESS
            )
        if acks_late and not await job.delivery.ack():
            log.warning(
                "Task %s[%s]: lease lost before ack; a newer attempt owns it", msg.task, msg.id
            )

    async def _replaced(self, job: Job, signal: Replace, acks_late: bool) -> None:
        """The task replaced itself (``self.replace()``): apply the replacement, settle.

        Nothing is stored for the task now: the end of its replacement stores its result.
        """
        msg = job.msg
        self.replaced += 1
        try:
            await self.app.workflows.replace(msg, signal.node, job.attempt)
        except (MessageError, ConfigurationError) as exc:
            # the replacement cannot be sent (too large), or not run here (rpc:// results)
            await self._failed(job, exc, acks_late)
            return
        log.info(
            "Task %s[%s] replaced in %.3fs (attempt %d)",
            msg.task,
            msg.id,
            time.time() - job.started,
            job.attempt,
        )
        if acks_late:
            await job.delivery.ack()

    async def _retry(self, job: Job, signal: Retry) -> None:
        """Re-enqueue the same task id as a new attempt, due after the countdown."""
        task, msg = job.task, job.msg
        now = time.time()
        if signal.when is not None:
            eta: float | None = signal.when
        else:
            eta = now + (signal.countdown or 0.0)
        if eta is not None and eta <= now:
            eta = None
        max_retries = signal.max_retries if signal.max_retries is not None else msg.max_retries
        again = msgspec.structs.replace(
            msg,
            retries=msg.retries + 1,
            prior_attempts=job.attempt,
            eta=eta,
            max_retries=max_retries,
        )
        exc = signal.exc if signal.exc is not None else signal
        tb = _traceback_text(exc)
        self.retried += 1
        if self.events.enabled:
            self.events.retried(msg.id, _exception_text(exc), tb)
        countdown = max((eta or now) - now, 0.0)
        if log.isEnabledFor(logging.WARNING):
            log.warning(
                "Task %s[%s] retry %d in %.1fs: %s%s",
                msg.task,
                msg.id,
                msg.retries + 1,
                countdown,
                _exception_text(exc),
                _attempt_text(job.attempt),
            )
        if not msg.ignore_result:
            await self._store(
                job,
                states.RETRY,
                error=ErrorInfo(
                    type=type(exc).__qualname__, message=_message_text(exc), traceback=tb
                ),
            )
        await call_hook(task, "on_retry", exc, msg.id, job.args, job.kwargs or {}, tb)
        if signals.task_retry.receivers:
            await signals.task_retry.send(
                task, request=job.request, reason=exc, countdown=countdown
            )
        if not await job.delivery.requeue(self._encode_message(again, job.fmt), eta=eta):
            log.warning(
                "Task %s[%s]: lease lost before the retry was queued; a newer attempt owns it",
                msg.task,
                msg.id,
            )

    async def _failed(self, job: Job, exc: Exception, acks_late: bool) -> None:
        task, msg = job.task, job.msg
        self.failed += 1
        tb = _traceback_text(exc)
        if self.events.enabled:
            self.events.failed(msg.id, _exception_text(exc), tb)
        if task.throws and isinstance(exc, task.throws):  # expected: no traceback (Celery)
            log.info(
                "Task %s[%s] raised expected: %s%s",
                msg.task,
                msg.id,
                _exception_text(exc),
                _attempt_text(job.attempt),
            )
        else:
            log.error(
                "Task %s[%s] raised unexpected: %s%s\n%s",
                msg.task,
                msg.id,
                _exception_text(exc),
                _attempt_text(job.attempt),
                tb.rstrip(),
            )
        error = ErrorInfo(
            type=type(exc).__qualname__,
            message=_message_text(exc),
            traceback=tb,
            reason=_REASONS.get(type(exc)),
        )
        if not msg.ignore_result or task.store_errors_even_if_ignored:
            await self._store(job, states.FAILURE, date_started=job.started, error=error)
        await self._continue_failure(msg, error)
        args, kwargs = job.args, job.kwargs or {}
        await call_hook(task, "on_failure", exc, msg.id, args, kwargs, tb)
        await call_hook(task, "after_return", states.FAILURE, exc, msg.id, args, kwargs, tb)
        if signals.task_failure.receivers:
            await signals.task_failure.send(
                task, task_id=msg.id, exception=exc, traceback=tb, request=job.request
            )
        if signals.task_postrun.receivers:
            await signals.task_postrun.send(
                task, task_id=msg.id, args=args, kwargs=kwargs, retval=exc, state=states.FAILURE
            )
        if acks_late:
            await job.delivery.ack()

    async def terminated(self, delivery: Delivery, *, started: bool = True) -> None:
        """Settle a delivery stopped by a revocation: running (revoked with
        ``terminate=True``) or held and not yet started (``started=False``)."""
        self.revoked += 1
        if started:
            log.warning("Task %s terminated by revoke", delivery.id)
        else:
            log.info("Task %s revoked before it started: not run", delivery.id)
        body = self._trusted_body(delivery.body)  # what follows an unverified one is not run
        try:
            msg = decode_message(body, self.conf.max_message_bytes) if body is not None else None
        except DecodeError:
            msg = None
        if msg is not None:
            await self._continue_failure(
                msg,
                ErrorInfo(
                    type="TaskRevoked",
                    message="terminated" if started else "revoked",
                    reason="revoked",
                ),
            )
        await delivery.ack()
        if self.events.enabled:
            self.events.revoked(
                delivery.id,
                terminated=started,
                expired=False,
                reason="terminated" if started else "revoked",
            )
        await signals.task_revoked.send(
            None, task_id=delivery.id, terminated=started, expired=False
        )

    # -- refusals -----------------------------------------------------------------------
    #
    # Every way out of here ends in a recorded final state: a FAILURE record (where the
    # task id is known) and a dead letter with the reason. Neither failing to store nor
    # failing to dead-letter hands the message back as if it had not been handled.

    async def _refuse(
        self,
        delivery: Delivery,
        msg: MessageIn,
        attempt: int,
        fmt: SerializerName,
        reason: str,
        exc_type: str,
        text: str,
    ) -> None:
        """Fail the task without running it and dead-letter the message."""
        error = ErrorInfo(type=exc_type, message=text, reason=reason)
        recorded = await self._record_refusal(
            msg.id, msg.task, attempt, fmt, error, msg=msg, delivery=delivery
        )
        try:
            await self._continue_failure(msg, error)
        except Exception:  # a chord it belongs to still fails, at its deadline
            log.exception("Task %s[%s]: could not fail what follows it", msg.task, msg.id)
        await self._dead_letter(delivery, reason, text, task=msg.task, recorded=recorded)

    async def _refuse_undecodable(
        self, delivery: Delivery, reason: str, text: str, *, final: bool = False
    ) -> None:
        """Dead-letter a message that cannot be used, failing its task if its id is readable.

        ``reason`` is ``decode_error``, or ``worker_error`` for a message whose handling
        kept failing (``final``: see :meth:`give_up`). A task that already reached a final
        state keeps it.
        """
        body = self._trusted_body(delivery.body)  # no FAILURE for an id nobody vouched for
        identity = peek_identity(body, self.conf.max_message_bytes) if body is not None else None
        recorded = False
        if identity is not None and body is not None:
            error = ErrorInfo(type="DecodeError", message=text, reason=reason)
            if reason != "decode_error":
                error = ErrorInfo(type="WorkerError", message=text, reason=reason)
            recorded = await self._record_refusal(
                identity.id,
                identity.task_name,
                identity.attempt(delivery.delivery_count),
                format_of(body),
                error,
                msg=None,
                delivery=delivery,
            )
        await self._dead_letter(
            delivery,
            reason,
            text,
            task=identity.task_name if identity is not None else None,
            recorded=recorded,
            final=final,
        )

    async def _refuse_unverified(self, delivery: Delivery, exc: SignatureError) -> None:
        """Dead-letter a message that fails verification: nothing of it is decoded or
        believed, so no FAILURE is stored (its id is whatever the sender wrote)."""
        await self._dead_letter(delivery, f"signature:{exc.reason}", str(exc))

    async def give_up(self, delivery: Delivery, exc: BaseException) -> None:
        """Handling ``delivery`` raised on its last allowed delivery: fail it for good.

        The worker's last resort (``max_deliveries``): whatever keeps failing (storing,
        settling, a continuation), the message is dead-lettered with reason
        ``worker_error`` and its task marked FAILURE, instead of being handed back forever.
        """
        text = (
            f"handling it failed on delivery {delivery.delivery_count} "
            f"(max_deliveries={self.conf.max_deliveries}): {type(exc).__name__}: "
            f"{_message_text(exc)}"
        )
        log.error("message %s: %s", delivery.id, text, exc_info=exc)
        await self._refuse_undecodable(delivery, "worker_error", text, final=True)

    async def _record_refusal(
        self,
        task_id: str,
        name: str | None,
        attempt: int,
        fmt: SerializerName,
        error: ErrorInfo,
        *,
        msg: MessageIn | None,
        delivery: Delivery,
    ) -> bool:
        """Store FAILURE for a refused task; whether it is recorded (never raises).

        Without the decoded message (``msg`` is ``None``), a task whose stored state is
        already final keeps it (a message that kept failing after its task succeeded).
        """
        try:
            backend = self.app.backend
            if msg is None and backend is not None:
                stored = await backend.get(task_id)
                if stored is not None and decode_result(stored).state in states.READY_STATES:
                    return True
            body = encode(
                self._result_record(task_id, name, attempt, states.FAILURE, msg, error=error),
                fmt,
            )
            await self._put(task_id, name or "?", attempt, states.FAILURE, body)
        except Exception as exc:
            log.error(
                "message %s: could not store its FAILURE (%s: %s); dead-lettering it anyway",
                delivery.id,
                type(exc).__name__,
                _message_text(exc),
            )
            return False
        return True

    async def _continue_success(self, msg: MessageIn, value: Any) -> None:
        """Start what follows a successful step; fail it if it cannot be sent at all."""
        try:
            await self.app.workflows.on_success(msg, value)
        except MessageError as exc:  # e.g. the next step's message would be too large
            log.error("Task %s[%s]: what follows it cannot be sent: %s", msg.task, msg.id, exc)
            await self._continue_failure(
                msg,
                ErrorInfo(
                    type=type(exc).__qualname__,
                    message=f"the next step could not be sent: {_message_text(exc)}",
                    reason="continuation",
                ),
            )

    async def _continue_failure(self, msg: MessageIn, error: ErrorInfo) -> None:
        """A workflow step ended without a result: errbacks, and nothing ahead may hang."""
        if msg.chain or msg.link_error or msg.chord is not None:
            await self.app.workflows.on_failure(msg, error)

    async def _dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        text: str,
        task: str | None = None,
        *,
        recorded: bool = False,
        final: bool = False,
    ) -> None:
        """Dead-letter ``delivery``.

        If that fails, the message is removed instead when its FAILURE is stored
        (``recorded``) or this is its last allowed delivery (``final``: then this log line
        is all that is left of it); otherwise the error propagates and it is handed back.
        """
        self.dead_lettered += 1
        if self.events.enabled:
            self.events.rejected(delivery.id, reason)
        if signals.task_rejected.receivers:
            await signals.task_rejected.send(
                None, task_id=delivery.id, task=task, queue=delivery.queue, reason=reason
            )
        log.error(
            "dead-lettering message %s from queue %s (%s): %s%s",
            delivery.id,
            delivery.queue,
            reason,
            text[:200],
            f" [task {task}]" if task else "",
        )
        try:
            await delivery.dead_letter(reason)
        except Exception as exc:
            if not (recorded or final):
                raise  # handed back: it is dead-lettered on a later delivery
            log.error(
                "message %s: dead-lettering failed (%s: %s); %s, so it is removed instead",
                delivery.id,
                type(exc).__name__,
                _message_text(exc),
                "its FAILURE is stored" if recorded else "it was on its last delivery",
            )
            await delivery.ack()

    # -- results ------------------------------------------------------------------------

    def _result_record(
        self,
        task_id: str,
        name: str | None,
        attempt: int,
        state: str,
        msg: MessageIn | None,
        *,
        value: Any = None,
        error: ErrorInfo | None = None,
        date_started: float | None = None,
    ) -> ResultOut:
        now = time.time()
        return ResultOut(
            id=task_id,
            state=state,
            task=name,
            value=value,
            error=error,
            attempt=attempt,
            retries=msg.retries if msg is not None else 0,
            worker=self.hostname,
            date_started=date_started,
            date_done=now if state in states.READY_STATES else None,
            parent_id=msg.parent_id if msg is not None else None,
            root_id=msg.root_id if msg is not None else None,
            group_id=msg.group_id if msg is not None else None,
        )

    def _record(
        self,
        job: Job,
        state: str,
        *,
        value: Any = None,
        error: ErrorInfo | None = None,
        date_started: float | None = None,
    ) -> bytes:
        """The encoded record of ``job`` in ``state``.

        Raises:
            EncodeError: ``value`` cannot be encoded (a result beyond what msgspec can
                represent, e.g. an int above 2**64 - 1 or a self-referencing list).
            ResultTooLarge: a SUCCESS record over ``max_result_bytes``.
        """
        msg = job.msg
        record = self._result_record(
            msg.id,
            msg.task,
            job.attempt,
            state,
            msg,
            value=value,
            error=error,
            date_started=date_started,
        )
        if self._extended:
            record = msgspec.structs.replace(record, args=job.args, kwargs=job.kwargs)
        trail = job.request.trail if job.request is not None else None
        if trail is not None and trail.children:  # it sent tasks: Celery's ``children``
            record = msgspec.structs.replace(
                record, children=[child.as_tuple() for child in trail.children]
            )
        try:
            if state == states.SUCCESS:  # only a value can be large; states, errors are not
                return encode_result(record, job.fmt, self._max_result_bytes)
            return encode(record, job.fmt)
        except EncodeError as exc:
            raise EncodeError(f"the result of {msg.task} cannot be stored: {exc}") from None

    async def _store(
        self,
        job: Job,
        state: str,
        *,
        error: ErrorInfo | None = None,
        date_started: float | None = None,
    ) -> None:
        """Store a record that holds no value (states, failures: always encodable)."""
        body = self._record(job, state, error=error, date_started=date_started)
        await self._put(job.msg.id, job.msg.task, job.attempt, state, body, job.msg)

    async def _put(
        self,
        task_id: str,
        name: str,
        attempt: int,
        state: str,
        body: bytes,
        msg: MessageIn | None = None,
    ) -> None:
        backend = self.app.backend
        if backend is None:
            return
        if not await backend.store(
            task_id, body, state=state, attempt=attempt, ttl=self.conf.result_expires
        ):
            if msg is not None and self.app.router().copies(msg.exchange, msg.routing_key):
                # each copy of a broadcast runs under the same id: the first record stays
                log.debug("Task %s[%s]: %s of a broadcast copy not stored", name, task_id, state)
                return
            log.warning(
                "Task %s[%s]: %s from attempt %d refused; a newer attempt or a "
                "revocation wrote first",
                name,
                task_id,
                state,
                attempt,
            )


def is_terminate(record_error: ErrorInfo | None) -> bool:
    """Whether a REVOKED record asks running executions to stop."""
    return record_error is not None and record_error.reason == TERMINATE


def _user_headers(headers: dict[str, str]) -> dict[str, str]:
    if not headers or not any(k.startswith(INTERNAL_HEADER_PREFIX) for k in headers):
        return headers
    return {k: v for k, v in headers.items() if not k.startswith(INTERNAL_HEADER_PREFIX)}


#: longest exception message and traceback text kept in a result record
MAX_ERROR_TEXT = 64 * 1024


def _message_text(exc: BaseException) -> str:
    """``str(exc)``, bounded, and never raising (a user exception's ``__str__`` may)."""
    try:
        text = str(exc)
    except Exception:
        text = f"<{type(exc).__qualname__}: str() raised>"
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + " [truncated]"


def _exception_text(exc: BaseException) -> str:
    """``repr(exc)`` for a log line (``KeyError('x')``), bounded and never raising."""
    try:
        text = repr(exc)
    except Exception:
        text = f"<{type(exc).__qualname__}: repr() raised>"
    return text if len(text) <= 1000 else text[:1000] + "... [truncated]"


def _attempt_text(attempt: int) -> str:
    """`` (attempt 2)`` after a log line, or nothing on a first attempt."""
    return f" (attempt {attempt})" if attempt > 1 else ""


def _traceback_text(exc: BaseException) -> str:
    """The formatted traceback, bounded (its tail, where the error is), never raising."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        text = f"{type(exc).__qualname__} (its traceback could not be formatted)"
    return text if len(text) <= MAX_ERROR_TEXT else "[truncated] " + text[-MAX_ERROR_TEXT:]


def _first(a: float | None, b: float | None, c: float | None) -> float | None:
    """The first of three settings that is set (per task: no generator, no varargs)."""
    if a is not None:
        return a
    return b if b is not None else c


async def _as_coroutine(awaitable: Any) -> Any:
    """Wrap any awaitable (a custom ``__call__`` may return one) as a coroutine."""
    return await awaitable
