"""The Celery bridge: aqueue workers run tasks Celery sent, and aqueue sends tasks to Celery
workers, on the same Redis (docs/migrating-from-celery.md, "Migrating one task at a time").

Inbound, every worker of the app relays Celery's queues into aqueue: a message is taken off
kombu's list into kombu's ``unacked`` records in one atomic step, published to aqueue under
the Celery task id (aqueue's own routing picks the queue), then acked on Celery's side. From
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
from typing import Any, Final

import msgspec

from aqueue.core import sending, signals
from aqueue.core.app import App
from aqueue.core.context import Request, current_request
from aqueue.core.errors import (
    EncodeError,
    MessageTooLarge,
    OptionError,
    TaskFailed,
    TaskRevoked,
)
from aqueue.core.options import CallOptions
from aqueue.core.protocols import Outgoing

from .kombu_redis import RESULT_EXPIRES, VISIBILITY_TIMEOUT, KombuRedis, Waiter
from .protocol import (
    CELERY_HEADER,
    CeleryTask,
    Meta,
    Refused,
    applied,
    envelope,
    failure_meta,
    read_envelope,
    read_followers,
    success_meta,
)

log = logging.getLogger("aqueue.celery")

#: the aqueue queue refused Celery messages pass through on their way to the dead letters
REFUSED_QUEUE: Final = "celery.refused"
#: seconds a stopping worker gives its relays to end (each wait lasts a second at most)
_STOP_WITHIN: Final = 10.0
#: the most of a refused message's envelope kept in its dead letter
_REFUSED_KEEP: Final = 64 * 1024


class CeleryResult:
    """A handle on a task sent to Celery: its result is Celery's meta, read as Celery would."""

    def __init__(self, bridge: CeleryBridge, task_id: str) -> None:
        self.bridge = bridge
        self.id = task_id

    def __repr__(self) -> str:
        return f"<CeleryResult {self.id}>"

    async def state(self) -> str:
        """Celery's state of the task (``PENDING`` until something is stored)."""
        meta = await self.bridge.kombu.get_meta(self.id)
        return "PENDING" if meta is None else meta.status

    async def wait(self, timeout: float | None = None) -> Any:
        """The task's return value, once Celery stored it.

        Raises:
            TaskFailed: the task failed (type name, message and traceback as Celery stored them).
            TaskRevoked: revoked or expired.
            TimeoutError: not done within ``timeout`` seconds.
        """
        meta = await self.bridge.kombu.wait_meta(self.id, timeout)
        return outcome(meta)


def outcome(meta: Meta) -> Any:
    """A ready meta's value, or its failure raised."""
    if meta.status == "SUCCESS":
        return meta.result
    if meta.status == "REVOKED":
        raise TaskRevoked(meta.task_id)
    exc_type, message = meta.error()
    raise TaskFailed(meta.task_id, exc_type, message, meta.traceback)


class CeleryBridge:
    """Run Celery's tasks in aqueue's workers, and send tasks to Celery's, on one Redis.

    Creating it is the opt-in: every worker of ``app`` then relays ``queues`` from Celery,
    and writes Celery's results for the tasks it relayed.

    Args:
        app: the aqueue app whose workers run the relayed tasks.
        broker: Celery's broker URL (``redis://``; Celery's result backend must be Redis on
            the same URL unless ``result_backend`` says where).
        queues: Celery queues aqueue workers take messages from (``[]``: send only).
        result_backend: where Celery's result backend is (``redis://`` URL).
        task_routes: task name -> Celery queue, for what the bridge sends (a chain's next
            step, a callback) when the signature names no queue.
        default_queue: the Celery queue for everything else (Celery's ``task_default_queue``).
        visibility_timeout: kombu's, as configured on the Celery side (restores of messages
            a dead worker held wait this long).
        result_expires: seconds Celery results are kept (Celery's ``result_expires``).
        batch: messages taken off a Celery queue per round trip.
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
        if not broker.startswith(("redis://", "rediss://")):
            raise ValueError("the Celery bridge reads Celery's Redis broker (redis:// URL)")
        if result_backend is not None and result_backend != broker:
            raise ValueError("the Celery bridge needs Celery's result backend on its broker URL")
        self.app = app
        self.queues = tuple(queues)
        self.task_routes = dict(task_routes or {})
        self.default_queue = default_queue
        self.batch = batch
        self.kombu = KombuRedis(
            broker, visibility_timeout=visibility_timeout, result_expires=result_expires
        )
        self.origin = f"aqueue@{socket.gethostname()}"
        #: messages relayed from Celery into aqueue, and refused (dead-lettered)
        self.relayed = 0
        self.refused = 0
        self._workers = 0
        self._waiters: set[Waiter] = set()
        app.lifespan(self._lifespan)

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
                await self.kombu.close()

    async def relay(
        self, queue: str, *, wait: float = 1.0, stop: asyncio.Event | None = None
    ) -> None:
        """Relay ``queue`` from Celery into aqueue until ``stop`` is set (within ``wait``
        seconds: the worker's lifespan sets it), or until cancelled.

        Messages a dead relay left unacked are pushed back once the visibility timeout has
        passed, by this loop as by Celery's workers.
        """
        waiter = self.kombu.waiter()
        self._waiters.add(waiter)
        failures = 0
        swept = 0.0
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() - swept > 60.0:
                        swept = time.monotonic()
                        await self.kombu.restore_stale([queue])
                    taken = await self.kombu.claim(queue, self.batch)
                    if not taken:
                        await waiter.wait(queue, wait)
                        continue
                    await self._hand_over(queue, taken)
                    failures = 0
                except Exception:
                    failures += 1
                    log.exception("relaying Celery queue %s failed; retrying", queue)
                    await asyncio.sleep(min(0.1 * 2**failures, 5.0))
        finally:
            self._waiters.discard(waiter)
            await waiter.close()

    async def _hand_over(self, queue: str, taken: list[tuple[bytes, str]]) -> None:
        done = 0
        try:
            for payload, tag in taken:
                await self._relay_one(queue, payload)
                await self.kombu.ack([tag])
                done += 1
        except BaseException:
            # stopping (or the broker failed): what was not handed over goes back on
            # Celery's list now, not after the visibility timeout
            rest = [tag for _, tag in taken[done:] if tag]
            await asyncio.shield(self.kombu.restore(rest, [queue]))
            raise

    async def _relay_one(self, queue: str, payload: bytes) -> None:
        app = self.app
        try:
            task, _tag = read_envelope(payload, app.conf.max_message_bytes)
            if task.task not in app.tasks:
                raise Refused("celery:unknown-task", task.task, task.id)
            headers = {CELERY_HEADER: task.embed_header()}
        except Refused as refusal:
            await self._refuse(queue, payload, refusal)
            return
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
            await self._refuse(queue, payload, Refused("celery:bad-message", str(exc), task.id))
            return
        self.relayed += 1
        log.info("Celery task %s[%s] relayed from queue %s", task.task, task.id, queue)

    async def _refuse(self, queue: str, payload: bytes, refusal: Refused) -> None:
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
        await broker.publish([Outgoing(letter_id, REFUSED_QUEUE, body)])
        # whoever claims from the refused queue dead-letters what it finds there with the
        # reason the body carries (any number of relays, no message left behind)
        for delivery in await broker.claim(
            [REFUSED_QUEUE], limit=16, lease_seconds=30.0, owner=self.origin, timeout=0.0
        ):
            try:
                reason = msgspec.json.decode(delivery.body)["reason"]
            except (msgspec.DecodeError, KeyError, TypeError):
                reason = "celery:refused"
            await delivery.dead_letter(str(reason))
        if refusal.task_id is not None:
            meta = failure_meta(refusal.task_id, "Refused", refusal.reason, None)
            await self.kombu.store_meta(refusal.task_id, meta)

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
        await self.kombu.store_meta(request.id, meta)
        followers = read_followers(header)
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
        await self.kombu.store_meta(task_id, meta)
        followers = read_followers(header)
        # as Celery does: the chain's later steps fail with it (their get() raises), and
        # errbacks are sent the failed task's id
        for sig in followers.chain:
            step_id = (sig.get("options") or {}).get("task_id")
            if isinstance(step_id, str) and step_id:
                step_meta = failure_meta(step_id, name, message, traceback, exc_module=module)
                await self.kombu.store_meta(step_id, step_meta)
        root = request.root_id or request.id
        for sig in followers.errbacks:
            await self._apply(sig, (task_id,), parent_id=task_id, root_id=root)

    async def _on_retry(
        self, sender: Any, *, request: Request, reason: BaseException, **_: Any
    ) -> None:
        if self._celery_request(sender, request) is None:
            return
        meta = failure_meta(request.id, type(reason).__qualname__, str(reason), None, state="RETRY")
        await self.kombu.store_meta(request.id, meta)

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
        )
        priority = options.get("priority")
        await self._push(task, options.get("queue"), priority if isinstance(priority, int) else 0)

    async def _push(self, task: CeleryTask, queue: Any, priority: int) -> None:
        target = queue if isinstance(queue, str) and queue else self.route(task.task)
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
        and aqueue tasks. ``eta`` and ``expires`` are unix seconds (``expires`` also
        takes seconds from now when smaller than a day in seconds... no: pass a time).

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

    def AsyncResult(self, task_id: str) -> CeleryResult:
        """A handle on a Celery task's result by id."""
        return CeleryResult(self, task_id)
