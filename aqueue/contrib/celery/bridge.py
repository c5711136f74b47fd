"""The Celery bridge: aqueue workers run tasks Celery sent, and aqueue sends tasks to Celery
workers, on the same Redis or RabbitMQ (docs/migrating-from-celery.md, "Migrating one task
at a time").

Inbound, every worker of the app relays Celery's queues into aqueue: a message is taken off
kombu's list into kombu's ``unacked`` records in one atomic step (on RabbitMQ: delivered
with manual acks), published to aqueue under the Celery task id (aqueue's own routing picks
the queue), then acked on Celery's side. From
there aqueue's guarantees hold (leases, redelivery of a dead worker's task, fencing). When the
task ends, the worker writes Celery's result meta where ``AsyncResult(id).get()`` reads it and
sends what Celery's message asked to follow (its chain's next step, its callbacks, its
errbacks) as Celery messages, so either side can run them.

Nothing here runs unless a bridge is created: the worker's hot path is unchanged without one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from aqueue.core import sending, signals
from aqueue.core.app import App
from aqueue.core.awaiting import query
from aqueue.core.context import Request, current_request
from aqueue.core.errors import (
    ConfigurationError,
    EncodeError,
    MessageTooLarge,
    OptionError,
)
from aqueue.core.message import MAX_PRIORITY, ErrorInfo, ResultIn
from aqueue.core.options import CallOptions, Plan, check_options
from aqueue.core.protocols import Outgoing
from aqueue.core.result import AsyncResult

from .protocol import (
    CELERY_HEADER,
    RESULT_EXPIRES,
    VISIBILITY_TIMEOUT,
    CeleryTask,
    Meta,
    Refused,
    applied,
    envelope,
    failure_meta,
    read_envelope,
    read_followers,
    read_parts,
    revoked_meta,
    success_meta,
)

if TYPE_CHECKING:  # each technology's module is imported when a bridge uses it
    from aio_pika.abc import AbstractIncomingMessage

    from .celery_amqp import CeleryAmqp
    from .kombu_redis import KombuRedis, Waiter

log = logging.getLogger("aqueue.celery")

#: the aqueue queue refused Celery messages pass through on their way to the dead letters
REFUSED_QUEUE: Final = "celery.refused"
#: seconds a relay on Redis waits for a message at most before looking again (and at ``stop``)
_RELAY_WAIT: Final = 1.0
#: seconds a stopping worker gives its relays to end (each wait lasts ``_RELAY_WAIT`` at most)
_STOP_WITHIN: Final = 10.0
#: the headers of a refused RabbitMQ message its dead letter keeps
_KEPT_HEADERS: Final = frozenset({"task", "id", "root_id", "parent_id", "group", "retries"})
#: seconds a refusal waits to see its message in the refused queue (then another relay's
#: next refusal, or a later one of this relay, dead-letters it)
_REFUSE_WITHIN: Final = 5.0
#: the most of a refused message's envelope kept in its dead letter
_REFUSED_KEEP: Final = 64 * 1024
#: aqueue's call options that ``send_task(..., protocol="celery")`` carries to Celery
_CELERY_CALL_OPTIONS: Final = frozenset(
    {"queue", "task_id", "countdown", "eta", "expires", "priority", "time_limit", "soft_time_limit"}
)


class CeleryResult(AsyncResult[Any]):
    """A handle on a task sent to Celery: an :class:`~aqueue.AsyncResult` whose state and
    result are Celery's meta (``celery-task-meta-<id>``), read as Celery would.

    ``state()``, ``ready()``, ``wait()`` / ``get()`` and ``events()`` work as for an aqueue
    task; ``revoke()`` and ``forget()`` are Celery's to do (``celery -A proj control
    revoke``) and raise :class:`~aqueue.ConfigurationError` here.
    """

    def __init__(self, bridge: CeleryBridge, task_id: str) -> None:
        super().__init__(bridge.app, task_id)
        self.bridge = bridge
        self._format = "json"  # Celery's meta, as this handle turns it into records

    def __repr__(self) -> str:
        return f"<CeleryResult {self.id}>"

    # the two reads AsyncResult lets a subclass replace (see its _fetch and _records)

    async def _fetch(self) -> ResultIn | None:
        meta = await self.bridge.result_store().get_meta(self.id)
        self._record = None if meta is None else self._record_of(meta)
        return self._record

    async def _records(self) -> AsyncIterator[ResultIn]:
        # Celery's backend publishes each state change; the bridge's store waits for the
        # final one (the caller's deadline, if any, bounds it)
        meta = await self.bridge.result_store().wait_meta(self.id, None)
        self._record = self._record_of(meta)
        yield self._record

    def _record_of(self, meta: Meta) -> ResultIn:
        if meta.status == "SUCCESS":
            value = msgspec.Raw(msgspec.json.encode(meta.result))
            return ResultIn(id=self.id, state=meta.status, value=value)
        error = None
        if meta.status in ("FAILURE", "REVOKED", "RETRY"):
            exc_type, message = meta.error()
            error = ErrorInfo(type=exc_type, message=message, traceback=meta.traceback)
        return ResultIn(id=self.id, state=meta.status, error=error)

    @query
    async def revoke(self, *, terminate: bool = False) -> None:
        raise ConfigurationError(
            f"task {self.id} runs on Celery: revoke it there (celery -A proj control revoke)"
        )

    @query
    async def forget(self) -> None:
        raise ConfigurationError(
            f"task {self.id} ran on Celery: its result is Celery's (AsyncResult.forget there)"
        )


class CeleryBridge:
    """Run Celery's tasks in aqueue's workers, and send tasks to Celery's, on one broker.

    Creating it is the opt-in: every worker of ``app`` then relays ``queues`` from Celery,
    and writes Celery's results for the tasks it relayed. One bridge per app: it is the
    app's ``celery`` protocol (``send_task(..., protocol="celery")``), so a second one is
    refused with :class:`~aqueue.ConfigurationError` (:meth:`close` only drops
    connections: the bridge stays the app's).

    Args:
        app: the aqueue app whose workers run the relayed tasks.
        broker: Celery's broker URL: ``redis://`` (kombu's lists) or ``amqp://``
            (RabbitMQ, Celery's queue declarations).
        queues: Celery queues aqueue workers take messages from (``[]``: send only).
        result_backend: Celery's result backend: a ``redis://`` URL (``celery-task-meta-``
            keys), or ``rpc://`` (replies to the caller's queue; RabbitMQ only). Default:
            the broker's URL on Redis, ``rpc://`` on RabbitMQ.
        task_routes: task name -> Celery queue, for what the bridge sends (a chain's next
            step, a callback) when the signature names no queue.
        default_queue: the Celery queue for everything else (Celery's ``task_default_queue``).
        visibility_timeout: kombu's on Redis, as configured on the Celery side (restores of
            messages a dead worker held wait this long).
        result_expires: seconds Celery results are kept (Celery's ``result_expires``).
        batch: messages taken off a Celery queue per round trip (the prefetch on RabbitMQ).
    """

    def __init__(
        self,
        app: App,
        broker: str,
        *,
        queues: Sequence[str] = ("celery",),
        result_backend: str | None = None,
        task_routes: Mapping[str, str] | None = None,
        default_queue: str = "celery",
        visibility_timeout: float = VISIBILITY_TIMEOUT,
        result_expires: int = RESULT_EXPIRES,
        batch: int = 16,
    ) -> None:
        redis_schemes = ("redis://", "rediss://")
        self.kombu: KombuRedis | None = None
        self.amqp: CeleryAmqp | None = None
        if broker.startswith(redis_schemes):
            self.kombu = _kombu_redis().KombuRedis(
                broker, visibility_timeout=visibility_timeout, result_expires=result_expires
            )
            result_backend = result_backend or broker
        elif broker.startswith(("amqp://", "amqps://")):
            self.amqp = _celery_amqp().CeleryAmqp(broker)
            result_backend = result_backend or "rpc://"
        else:
            raise ConfigurationError(
                "the Celery bridge reads Celery's broker at a redis:// or amqp:// URL"
            )
        #: where Celery's results are read and written (``None``: ``rpc://`` replies)
        self.results: KombuRedis | None = None
        if result_backend == broker and self.kombu is not None:
            self.results = self.kombu
        elif result_backend.startswith(redis_schemes):
            self.results = _kombu_redis().KombuRedis(result_backend, result_expires=result_expires)
        elif result_backend != "rpc://" or self.amqp is None:
            raise ConfigurationError(
                "the Celery bridge writes Celery's results to a redis:// result backend, "
                "or to rpc:// replies with a RabbitMQ broker"
            )
        self.app = app
        self.queues = tuple(queues)
        self.task_routes = dict(task_routes or {})
        self.default_queue = default_queue
        self.batch = batch
        self.origin = f"aqueue@{socket.gethostname()}"
        #: messages relayed from Celery into aqueue, and refused (dead-lettered)
        self.relayed = 0
        self.refused = 0
        self._workers = 0
        self._waiters: set[Waiter] = set()
        # first: a second bridge on the app is refused before it adds a lifespan
        app.register_protocol("celery", self._send_for_app)
        app.lifespan(self._lifespan)

    def result_store(self) -> KombuRedis:
        """Celery's Redis result backend, where a :class:`CeleryResult` reads.

        Raises:
            ConfigurationError: results go to ``rpc://`` replies, which this side cannot read.
        """
        if self.results is None:
            raise ConfigurationError(
                "waiting on a Celery result needs Celery's redis:// result backend "
                "(result_backend=...); rpc:// replies go to the Celery caller only"
            )
        return self.results

    # -- the worker's side ------------------------------------------------------------------

    async def _lifespan(self, app: App) -> AsyncIterator[None]:
        # the receivers are connected while a worker of the app runs (several may, in one
        # process): without a running bridge no signal has a receiver and costs nothing
        self._workers += 1
        if self._workers == 1:
            signals.task_success.connect(self._on_success)
            signals.task_failure.connect(self._on_failure)
            signals.task_retry.connect(self._on_retry)
        # stopped by an event and CLIENT UNBLOCK, not cancelled: a cancellation landing in
        # redis-py's blocking read could be lost there (the relay then waited for a reply to
        # a command never sent)
        stop = asyncio.Event()
        relays = [asyncio.create_task(self.relay(queue, stop=stop)) for queue in self.queues]
        try:
            yield
        finally:
            stop.set()
            if self.kombu is not None:
                for waiter in list(self._waiters):
                    await waiter.interrupt(self.kombu.client())
            if relays:
                _, pending = await asyncio.wait(relays, timeout=_STOP_WITHIN)
                for relay in pending:  # a safety net
                    relay.cancel()
            await asyncio.gather(*relays, return_exceptions=True)
            self._workers -= 1
            if self._workers == 0:
                signals.task_success.disconnect(self._on_success)
                signals.task_failure.disconnect(self._on_failure)
                signals.task_retry.disconnect(self._on_retry)
                await self.close()

    async def relay(self, queue: str, *, stop: asyncio.Event | None = None) -> None:
        """Relay ``queue`` from Celery into aqueue until ``stop`` is set (the worker's
        lifespan sets it), or until cancelled.

        On Redis, messages a dead relay left unacked are pushed back once the visibility
        timeout has passed, by this loop as by Celery's workers; each wait lasts a second at
        most. On RabbitMQ, the connection is the lease: what a lost relay held
        goes back to the queue.
        """
        stop = stop or asyncio.Event()
        if self.amqp is not None:
            await self._relay_amqp(self.amqp, queue, stop)
            return
        assert self.kombu is not None
        kombu = self.kombu
        waiter = kombu.waiter()
        self._waiters.add(waiter)
        failures = 0
        swept = 0.0
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() - swept > 60.0:
                        swept = time.monotonic()
                        await kombu.restore_stale([queue])
                    taken = await kombu.claim(queue, self.batch)
                    if not taken:
                        await waiter.wait(queue, _RELAY_WAIT)
                        continue
                    await self._hand_over(kombu, queue, taken)
                    failures = 0
                except Exception:
                    failures += 1
                    log.exception("relaying Celery queue %s failed; retrying", queue)
                    await asyncio.sleep(min(0.1 * 2**failures, 5.0))
        finally:
            self._waiters.discard(waiter)
            await waiter.close()

    async def _hand_over(
        self, kombu: KombuRedis, queue: str, taken: list[tuple[bytes, str]]
    ) -> None:
        done = 0
        try:
            for payload, tag in taken:
                try:
                    task = read_envelope(payload, self.app.conf.max_message_bytes)
                except Refused as refusal:
                    await self._refuse(queue, payload, refusal, "")
                else:
                    refused = await self._relay(queue, task)
                    if refused is not None:
                        await self._refuse(queue, payload, refused, task.reply_to)
                await kombu.ack([tag])
                done += 1
        except BaseException:
            # stopping (or the broker failed): what was not handed over goes back on
            # Celery's list now, not after the visibility timeout
            rest = [tag for _, tag in taken[done:] if tag]
            await asyncio.shield(kombu.restore(rest, [queue]))
            raise

    async def _relay_amqp(self, amqp: CeleryAmqp, queue: str, stop: asyncio.Event) -> None:
        failures = 0

        async def handle(message: AbstractIncomingMessage) -> None:
            await self._relay_amqp_message(amqp, queue, message)

        while not stop.is_set():
            try:
                await amqp.consume(queue, self.batch, handle, stop)
            except Exception:
                failures += 1
                log.exception("relaying Celery queue %s failed; retrying", queue)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))

    async def _relay_amqp_message(
        self, amqp: CeleryAmqp, queue: str, message: AbstractIncomingMessage
    ) -> None:
        content_type, headers, properties = amqp.message_parts(message)
        body = message.body
        reply_to = str(properties.get("reply_to") or "")
        try:
            max_bytes = self.app.conf.max_message_bytes
            task = read_parts(content_type, headers, properties, body, max_bytes)
        except Refused as refusal:
            await self._refuse(queue, _kept(content_type, headers, body), refusal, reply_to)
            await message.ack()
            return
        try:
            refused = await self._relay(queue, task)
            if refused is not None:
                kept = _kept(content_type, headers, body)
                await self._refuse(queue, kept, refused, task.reply_to)
        except Exception:
            log.exception("Celery task %s[%s] not relayed; requeued", task.task, task.id)
            await asyncio.sleep(1.0)  # not a hot loop while aqueue's broker is down
            await message.nack(requeue=True)
            return
        await message.ack()

    async def _relay(self, queue: str, task: CeleryTask) -> Refused | None:
        """Publish a Celery task to aqueue under its id; else why it cannot be (the caller
        dead-letters the message with that reason)."""
        app = self.app
        if task.expires is not None and task.expires <= time.time():
            # as a Celery worker does: not run, and REVOKED for the caller
            await self._store(task.id, revoked_meta(task.id, "expired"), task.reply_to)
            log.info("Celery task %s[%s] expired before it was relayed", task.task, task.id)
            return None
        try:
            if task.task not in app.tasks:
                raise Refused("celery:unknown-task", task.task, task.id)
            headers = {CELERY_HEADER: task.embed_header()}
        except Refused as refusal:
            return refusal
        options: CallOptions = {"task_id": task.id, "headers": headers}
        if task.eta is not None:
            options["eta"] = task.eta
        if task.time_limit is not None:
            options["time_limit"] = task.time_limit
        if task.soft_time_limit is not None:
            options["soft_time_limit"] = task.soft_time_limit
        if task.expires is not None:  # a number would be seconds from now
            options["expires"] = dt.datetime.fromtimestamp(task.expires, dt.UTC)
        if task.parent_id is not None:
            options["parent_id"] = task.parent_id
        if task.root_id is not None:
            options["root_id"] = task.root_id
        if task.group_id is not None:
            options["group_id"] = task.group_id
        try:
            msg, fmt = sending.build(
                app, task.task, task.args, task.kwargs, options, app.tasks[task.task], check=False
            )
            if task.retries:
                msg = msgspec.structs.replace(msg, retries=task.retries)
            await sending.publish(app, msg, fmt)
        except (OptionError, MessageTooLarge, EncodeError) as exc:
            return Refused("celery:bad-message", str(exc), task.id)
        self.relayed += 1
        log.info("Celery task %s[%s] relayed from queue %s", task.task, task.id, queue)
        return None

    async def _refuse(self, queue: str, payload: bytes, refusal: Refused, reply_to: str) -> None:
        """Dead-letter a Celery message in aqueue, with the reason, and fail its Celery
        result (a ``get()`` raises instead of waiting forever)."""
        self.refused += 1
        log.error("Celery message from queue %s refused: %s", queue, refusal.reason)
        letter_id = refusal.task_id or str(uuid.uuid4())
        body = msgspec.json.encode(
            {
                "reason": refusal.reason,
                "queue": queue,
                "celery": payload[:_REFUSED_KEEP].decode(errors="replace"),
            }
        )
        broker = await self.app.connected_broker()
        [queued] = await broker.publish([Outgoing(letter_id, REFUSED_QUEUE, body)])
        # whoever claims from the refused queue dead-letters what it finds there with the
        # reason the body carries (any number of relays, no message left behind); until
        # this one is among them, as a claim may not see it at once (RabbitMQ's consumer)
        deadline = time.monotonic() + _REFUSE_WITHIN
        while True:
            deliveries = await broker.claim(
                [REFUSED_QUEUE], limit=16, lease_seconds=30.0, owner=self.origin, timeout=0.5
            )
            for delivery in deliveries:
                try:
                    reason = msgspec.json.decode(delivery.body)["reason"]
                except (msgspec.DecodeError, KeyError, TypeError):
                    reason = "celery:refused"
                await delivery.dead_letter(str(reason))
            seen = any(delivery.id == letter_id for delivery in deliveries)
            if seen or not queued or time.monotonic() > deadline:
                break
        if refusal.task_id is not None:
            meta = failure_meta(refusal.task_id, "Refused", refusal.reason, None)
            await self._store(refusal.task_id, meta, reply_to)

    def _celery_request(self, sender: Any, request: Request | None) -> str | None:
        """The Celery header of a request relayed by this bridge, else ``None``."""
        if request is None or getattr(sender, "app", None) is not self.app:
            return None
        return request.headers.get(CELERY_HEADER)

    async def _on_success(self, sender: Any, *, result: Any, request: Request, **_: Any) -> None:
        header = self._celery_request(sender, request)
        if header is None:
            return
        try:
            meta = success_meta(
                request.id, result, group_id=request.group_id, parent_id=request.parent_id
            )
        except (msgspec.EncodeError, TypeError) as exc:
            meta = failure_meta(request.id, "EncodeError", str(exc), None)
        followers = read_followers(header)
        await self._store(request.id, meta, followers.reply_to)
        root = request.root_id or request.id
        for sig in followers.callbacks:
            await self._apply(sig, (result,), parent_id=request.id, root_id=root)
        if followers.chain:
            *rest, step = followers.chain
            await self._apply(step, (result,), parent_id=request.id, root_id=root, chain=rest)

    async def _on_failure(
        self,
        sender: Any,
        *,
        task_id: str,
        exception: BaseException,
        traceback: str,
        request: Request,
        **_: Any,
    ) -> None:
        header = self._celery_request(sender, request)
        if header is None:
            return
        exc_type = type(exception)
        module = exc_type.__module__ if exc_type.__module__ == "builtins" else None
        name, message = exc_type.__qualname__, str(exception)
        meta = failure_meta(task_id, name, message, traceback, exc_module=module)
        followers = read_followers(header)
        await self._store(task_id, meta, followers.reply_to)
        # as Celery does: the chain's later steps fail with it (their get() raises), and
        # errbacks are sent the failed task's id
        for sig in followers.chain:
            step_id = (sig.get("options") or {}).get("task_id")
            if isinstance(step_id, str) and step_id:
                step_meta = failure_meta(step_id, name, message, traceback, exc_module=module)
                await self._store(step_id, step_meta, followers.reply_to)
        root = request.root_id or request.id
        for sig in followers.errbacks:
            await self._apply(sig, (task_id,), parent_id=task_id, root_id=root)

    async def _on_retry(
        self, sender: Any, *, request: Request, reason: BaseException, **_: Any
    ) -> None:
        header = self._celery_request(sender, request)
        if header is None:
            return
        meta = failure_meta(request.id, type(reason).__qualname__, str(reason), None, state="RETRY")
        await self._store(request.id, meta, read_followers(header).reply_to)

    async def _store(self, task_id: str, meta: bytes, reply_to: str) -> None:
        """Store a result meta where Celery's caller reads it: the Redis backend's key, or
        an ``rpc://`` reply to the caller's queue (none without ``reply_to``)."""
        if self.results is not None:
            await self.results.store_meta(task_id, meta)
        elif self.amqp is not None and reply_to:
            await self.amqp.reply(reply_to, task_id, meta)

    async def _apply(
        self,
        sig: Mapping[str, Any],
        partial_args: tuple[Any, ...],
        *,
        parent_id: str,
        root_id: str,
        chain: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Send a Celery signature as a Celery message (either side may run it)."""
        step = applied(sig, partial_args)
        options = step.options
        link = options.get("link") or ()
        link_error = options.get("link_error") or ()
        task = CeleryTask(
            id=step.task_id,
            task=step.name,
            args=step.args,
            kwargs=step.kwargs,
            root_id=root_id,
            parent_id=parent_id,
            callbacks=tuple(link) if isinstance(link, list) else (),
            errbacks=tuple(link_error) if isinstance(link_error, list) else (),
            chain=tuple(chain),
            # rpc:// results of a Celery chain go where its producer waits
            reply_to=str(options.get("reply_to") or ""),
        )
        priority = options.get("priority")
        await self._push(task, options.get("queue"), priority if isinstance(priority, int) else 0)

    async def _push(self, task: CeleryTask, queue: Any, priority: int) -> None:
        target = queue if isinstance(queue, str) and queue else self.route(task.task)
        if self.amqp is not None:
            await self.amqp.push(task, target, priority, self.origin)
        else:
            assert self.kombu is not None
            payload = envelope(task, queue=target, priority=priority, origin=self.origin)
            await self.kombu.push(target, priority, payload)
        log.info("Celery task %s[%s] sent to queue %s", task.task, task.id, target)

    def route(self, name: str) -> str:
        """The Celery queue of a task the bridge sends: ``task_routes``, else the default."""
        return self.task_routes.get(name, self.default_queue)

    # -- the producer's side ----------------------------------------------------------------

    async def send_task(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        task_id: str | None = None,
        countdown: float | None = None,
        eta: float | None = None,
        expires: float | None = None,
        priority: int = 0,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        link: Sequence[dict[str, Any]] = (),
        link_error: Sequence[dict[str, Any]] = (),
        chain: Sequence[dict[str, Any]] = (),
    ) -> CeleryResult:
        """Send a task to Celery's workers as a Celery protocol 2 message (JSON).

        ``chain`` is the steps to run after it, in order, as Celery signatures (see
        :func:`aqueue.contrib.celery.signature`): each step is sent as a Celery message
        by whichever side ran the step before, so a chain may alternate between Celery
        and aqueue tasks. ``eta`` and ``expires`` are unix seconds (unlike ``apply_async``,
        where a number for ``expires`` is seconds from now).

        Returns:
            a handle whose ``wait()`` reads Celery's result meta.
        """
        task_id = task_id or str(uuid.uuid4())
        if countdown is not None:
            eta = time.time() + countdown
        sender = current_request()
        task = CeleryTask(
            id=task_id,
            task=name,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            eta=eta,
            expires=expires,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            root_id=(sender.root_id or sender.id) if sender is not None else task_id,
            parent_id=sender.id if sender is not None else None,
            callbacks=tuple(link),
            errbacks=tuple(link_error),
            chain=tuple(reversed(chain)),  # Celery's order: the next step last
        )
        await self._push(task, queue, priority)
        return CeleryResult(self, task_id)

    async def _send_for_app(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: CallOptions
    ) -> AsyncResult[Any]:
        """``app.send_task(name, ..., protocol="celery", **options)``: :meth:`send_task`
        with aqueue's call options, checked as aqueue checks them; those Celery's message
        cannot carry are refused.

        Raises:
            ConfigurationError: an option a Celery message cannot carry.
            OptionError: a bad option value (``countdown`` with ``eta``, a priority out of
                range...).
        """
        unsupported = sorted(set(options) - _CELERY_CALL_OPTIONS)
        if unsupported:
            raise ConfigurationError(
                f"send_task(protocol='celery'): {', '.join(unsupported)} cannot be carried to "
                "Celery (use bridge.send_task(..., link=, chain=) with Celery signatures)"
            )
        checked = check_options(options)
        # the times as aqueue reads them: a countdown, a datetime (naive: UTC) or unix
        # seconds for eta; seconds from now or a datetime for expires
        plan = Plan(self.app.conf, name, checked, None)
        priority = checked.get("priority")
        if priority is not None and self.amqp is None:
            # aqueue's priorities run higher first; kombu's Redis transport takes its lists
            # lowest number first (0, 3, 6, 9), so aqueue's 9 is kombu's 0
            priority = MAX_PRIORITY - priority
        return await self.send_task(
            name,
            args,
            kwargs,
            queue=checked.get("queue"),
            task_id=checked.get("task_id"),
            eta=plan.eta,
            expires=plan.expires,
            priority=priority or 0,
            time_limit=checked.get("time_limit"),
            soft_time_limit=checked.get("soft_time_limit"),
        )

    async def close(self) -> None:
        """Close the connections to Celery's side (a later use opens them again)."""
        for side in (self.kombu, self.results, self.amqp):
            if side is not None:
                await side.close()

    def AsyncResult(self, task_id: str) -> CeleryResult:
        """A handle on a Celery task's result by id."""
        return CeleryResult(self, task_id)


def _kept(content_type: str, headers: Mapping[str, Any], body: bytes) -> bytes:
    """What the dead letter of a refused RabbitMQ message keeps: the headers that say what
    it was, and (up to ``_REFUSED_KEEP`` bytes of) the body."""
    return msgspec.json.encode(
        {
            "content-type": content_type,
            "headers": {k: str(v) for k, v in headers.items() if k in _KEPT_HEADERS},
            "body": body[:_REFUSED_KEEP].decode(errors="replace"),
        }
    )


def _kombu_redis() -> Any:
    """``kombu_redis``, imported on first use (it needs redis-py)."""
    try:
        from . import kombu_redis
    except ImportError as exc:
        raise ConfigurationError(
            f'the Celery bridge on Redis needs redis-py: pip install "aqueue[redis]" ({exc})'
        ) from None
    return kombu_redis


def _celery_amqp() -> Any:
    """``celery_amqp``, imported on first use (it needs aio-pika)."""
    try:
        from . import celery_amqp
    except ImportError as exc:
        raise ConfigurationError(
            f'the Celery bridge on RabbitMQ needs aio-pika: pip install "aqueue[rabbitmq]" ({exc})'
        ) from None
    return celery_amqp
