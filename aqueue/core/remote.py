"""Remote control, the worker's side: the mailbox that runs commands broadcast to the fleet.

A caller (``app.control``, ``aqueue inspect``, ``aqueue control``) publishes a
:class:`ControlRequest` on the broker's ``control`` topic (:class:`~.protocols.Topics`);
every worker reads that topic, skips requests addressed to others (``destination``: node
names or worker ids) or expired, runs the command's handler in its event loop and, when the
request names a ``reply_to`` topic, publishes a :class:`ControlReply` there. The caller
reads its reply topic until every live worker answered or the timeout passed. Nothing of
this is on the task path: a worker with nobody sending commands waits on one blocking read.

Handlers are the functions of :data:`COMMANDS`; each receives the worker and the request's
arguments, and returns what the reply carries (JSON-ready). A bad argument is a
:class:`ControlError`, whose message the caller sees.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..__about__ import __version__
from .admission import rate_setting
from .config import keyring_of
from .errors import AqueueError, ConfigurationError, SignatureError, SubscriptionClosed
from .protocols import Subscription, Topics
from .urls import redact

if TYPE_CHECKING:
    from .signing import Keyring
    from .worker import Worker

log = logging.getLogger("aqueue.worker")

#: the topic every worker reads commands from
CONTROL_TOPIC = "control"
#: commands kept on the control topic (a worker starting later does not read old ones)
CONTROL_CAP = 100
#: replies kept on a reply topic
REPLY_CAP = 1000
#: the largest request or reply body read (a request carries names and a few numbers)
MAX_BODY = 1 << 20
#: seconds the mailbox waits per read (it is woken by any command before that)
_READ_WAIT = 5.0
_ERROR_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)
#: signed request ids remembered, to ignore one published again (requests expire in seconds)
_HANDLED_KEPT = 1000


class ControlError(AqueueError):
    """A command a worker could not run as asked (unknown command, bad argument)."""


class ControlRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A command for the fleet, as published on the control topic."""

    id: str
    command: str
    arguments: dict[str, Any] = {}
    #: the topic replies go to (``reply.<token>``); ``None``: nobody waits for a reply
    reply_to: str | None = None
    #: node names (``-n``) or worker ids it is for; ``None``: every worker
    destination: tuple[str, ...] | None = None
    #: unix time after which a worker ignores it (a worker that was paused must not act on
    #: a shutdown sent long ago)
    expires: float | None = None


class ControlReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One worker's answer to a request."""

    request: str
    hostname: str
    worker_id: str
    ok: bool = True
    value: Any = None
    error: str | None = None


_REQUEST = msgspec.json.Decoder(ControlRequest)
_REPLY = msgspec.json.Decoder(ControlReply)


#: what a control request's and a reply's signature covers beside the body: neither can
#: be passed off as the other, nor as a task message or a result record
REQUEST_CONTEXT = b"aqueue-control-request"
REPLY_CONTEXT = b"aqueue-control-reply"


def decode_reply(body: bytes, keyring: Keyring | None = None) -> ControlReply | None:
    """A reply (verified when a ``keyring`` is given), or ``None`` for a body that is none
    (logged)."""
    if len(body) > MAX_BODY:
        return None
    if keyring is not None:
        try:
            body = keyring.verify(body, REPLY_CONTEXT)
        except SignatureError as exc:
            log.warning("ignored a control reply that failed verification (%s)", exc.reason)
            return None
    try:
        return _REPLY.decode(body)
    except (msgspec.DecodeError, RecursionError):
        log.debug("ignored a malformed control reply")
        return None


class AfterReply:
    """What a handler returns when something must happen once its reply is out (shutdown)."""

    def __init__(self, value: Any, then: Callable[[], None]) -> None:
        self.value = value
        self.then = then


Handler = Callable[..., Awaitable[Any]]


class Mailbox:
    """A worker's reader of the control topic (see the module docstring)."""

    def __init__(self, worker: Worker, topics: Topics) -> None:
        self.worker = worker
        self.topics = topics
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        #: with signing on, requests are verified and replies signed
        self._keyring = keyring_of(worker.app.conf)
        #: ids of the signed requests handled lately: one published again is ignored
        self._handled: collections.OrderedDict[str, None] = collections.OrderedDict()

    async def start(self) -> None:
        """Subscribe (so no command sent from now on is missed) and start reading."""
        self._sub = await self.topics.subscribe(CONTROL_TOPIC)
        self._task = asyncio.create_task(self._run(), name="aqueue-mailbox")

    async def stop(self) -> None:
        """Stop reading. A command being handled (its reply) is let finish."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.close()
            except Exception as exc:
                log.debug("closing the control subscription failed: %s", type(exc).__name__)

    async def _run(self) -> None:
        failures = 0
        while True:
            sub = self._sub
            assert sub is not None
            try:
                bodies = await sub.get(_READ_WAIT)
            except asyncio.CancelledError:
                raise
            except SubscriptionClosed:  # the broker closed under the worker: nothing to read
                log.debug("the control subscription closed: no more commands")
                return
            except Exception as exc:  # the broker is away: keep trying, never die
                delay = _ERROR_BACKOFF[min(failures, len(_ERROR_BACKOFF) - 1)]
                failures += 1
                log.warning(
                    "reading control commands failed (%s: %s); again in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            for body in bodies:
                await self.handle(body)

    def _for_me(self, request: ControlRequest) -> bool:
        dest = request.destination
        return not dest or self.worker.hostname in dest or self.worker.owner in dest

    async def handle(self, body: bytes) -> None:
        """Run one request's command and reply; never raises (but cancellation)."""
        if len(body) > MAX_BODY:
            log.warning("ignored a control request of %d bytes", len(body))
            return
        keyring = self._keyring
        if keyring is not None:  # nothing of it is read before it is verified
            try:
                frame = keyring.open(body, REQUEST_CONTEXT)
                keyring.check_age(frame, time.time())
            except SignatureError as exc:
                log.warning("ignored a control request that failed verification: %s", exc)
                return
            body = frame.body
        try:
            request = _REQUEST.decode(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            log.warning("ignored a malformed control request (%s)", type(exc).__name__)
            return
        if not self._for_me(request):
            return
        if request.expires is not None and time.time() > request.expires:
            log.info("ignored control command %s: it expired", request.command)
            return
        if keyring is not None:
            if request.id in self._handled:
                log.warning("ignored control command %s: published again", request.command)
                return
            self._handled[request.id] = None
            if len(self._handled) > _HANDLED_KEPT:
                self._handled.popitem(last=False)
        log.info("control command %s from the fleet", request.command)
        after: Callable[[], None] | None = None
        handler = COMMANDS.get(request.command)
        try:
            if handler is None:
                raise ControlError(f"unknown command {request.command!r}")
            value = await handler(self.worker, **request.arguments)
            if isinstance(value, AfterReply):
                value, after = value.value, value.then
            reply = self._reply(request, value=value)
        except TypeError as exc:  # missing or unexpected arguments
            reply = self._reply(request, error=f"bad arguments for {request.command}: {exc}")
        except (ControlError, ConfigurationError, ValueError) as exc:
            reply = self._reply(request, error=str(exc))
        except Exception as exc:
            log.exception("control command %s raised", request.command)
            reply = self._reply(request, error=f"{type(exc).__name__}: {exc}")
        if request.reply_to is not None:
            try:
                answer = msgspec.json.encode(reply)
                if keyring is not None:
                    answer = keyring.sign(answer, context=REPLY_CONTEXT)
                await self.topics.publish(request.reply_to, [answer], cap=REPLY_CAP)
            except Exception as exc:
                log.warning("could not reply to %s (%s)", request.command, type(exc).__name__)
        if after is not None:
            after()

    def _reply(
        self, request: ControlRequest, *, value: Any = None, error: str | None = None
    ) -> ControlReply:
        w = self.worker
        return ControlReply(
            request=request.id,
            hostname=w.hostname,
            worker_id=w.owner,
            ok=error is None,
            value=value,
            error=error,
        )


# -- the commands --------------------------------------------------------------------------


async def _ping(worker: Worker) -> Any:
    return {"ok": "pong"}


async def _active(worker: Worker) -> Any:
    return worker.describe_tasks(active=True)


async def _reserved(worker: Worker) -> Any:
    return worker.describe_tasks(active=False)


async def _scheduled(worker: Worker) -> Any:
    return await worker.describe_scheduled()


async def _registered(worker: Worker, taskinfoitems: list[str] | None = None) -> Any:
    out: list[str] = []
    for name, task in sorted(worker.app.tasks.items()):
        if name.startswith("aqueue.") and not taskinfoitems:
            continue  # built-in tasks (Celery hides its celery.* ones the same way)
        extras = []
        for item in taskinfoitems or ():
            value = getattr(task, item, None)
            if value is not None:
                extras.append(f"{item}={value}")
        out.append(" ".join([name, *(f"[{e}]" for e in extras)]))
    return out


async def _stats(worker: Worker) -> Any:
    ex = worker.executor
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conf = worker.app.conf
    return {
        "pid": os.getpid(),
        "hostname": worker.hostname,
        "worker_id": worker.owner,
        "uptime": round(time.time() - worker.started_at, 3),
        "total": dict(ex.counts),
        "succeeded": ex.succeeded,
        "failed": ex.failed,
        "retried": ex.retried,
        "revoked": ex.revoked,
        "dead_lettered": ex.dead_lettered,
        "prefetch_count": worker.prefetch,
        "pool": {
            "implementation": "aqueue:asyncio",
            "max-concurrency": worker.concurrency,
            "running": len(worker.running_ids()),
            "held": len(worker.held_ids()),
            "processes": [os.getpid()],
            "offload-processes": conf.worker_process_pool_size or os.cpu_count() or 1,
        },
        "broker": {
            "url": redact(worker.app.broker_url),
            "transport": type(worker.app.broker).__name__,
        },
        "rusage": {
            "utime": usage.ru_utime,
            "stime": usage.ru_stime,
            "maxrss": usage.ru_maxrss,
            "minflt": usage.ru_minflt,
            "majflt": usage.ru_majflt,
            "nvcsw": usage.ru_nvcsw,
            "nivcsw": usage.ru_nivcsw,
        },
        "sw_ident": "aqueue",
        "sw_ver": __version__,
    }


async def _active_queues(worker: Worker) -> Any:
    router = worker.app.router()
    out = []
    for name in worker.queues:
        spec = router.spec(name)
        exchange = spec.exchange if spec is not None else None
        out.append(
            {
                "name": name,
                "exchange": {
                    "name": exchange.name if exchange is not None else "",
                    "type": exchange.type if exchange is not None else "direct",
                },
                "routing_key": (spec.routing_key if spec is not None else None) or name,
                "broadcast": bool(spec is not None and spec.broadcast),
            }
        )
    return out


async def _conf(worker: Worker, with_defaults: bool = False) -> Any:
    conf = worker.app.conf
    settings = conf.as_dict()
    if not with_defaults:
        settings = {k: v for k, v in settings.items() if k in conf.explicit}
    return msgspec.to_builtins(settings, str_keys=True, enc_hook=repr)


async def _revoked(worker: Worker) -> Any:
    return sorted(worker.revoked_ids)


async def _revoke(
    worker: Worker, task_id: list[str] | str, terminate: bool = False, signal: str | None = None
) -> Any:
    ids = [task_id] if isinstance(task_id, str) else list(task_id)
    stopped = worker.revoke_held(ids, terminate=terminate)
    return {"ok": f"tasks {', '.join(ids)} flagged as revoked", "stopped": stopped}


async def _revoke_by_name(worker: Worker, pattern: str, terminate: bool = False) -> Any:
    ids = worker.held_matching(lambda name: fnmatch.fnmatchcase(name, pattern))
    if not terminate:
        ids = [tid for tid in ids if tid not in worker.running_ids()]
    if ids:
        await worker.app.control.store_revocations(ids, terminate=terminate)
    stopped = worker.revoke_held(ids, terminate=terminate)
    return {
        "ok": f"{len(ids)} task(s) matching {pattern!r} revoked",
        "revoked": ids,
        "stopped": stopped,
    }


def _task(worker: Worker, task_name: str) -> Any:
    task = worker.app.tasks.get(task_name)
    if task is None:
        raise ControlError(f"unknown task {task_name!r}")
    return task


async def _rate_limit(worker: Worker, task_name: str, rate_limit: str | float | None) -> Any:
    task = _task(worker, task_name)
    rate = rate_setting(rate_limit)
    changed = rate != task.rate_limit
    task.rate_limit = rate
    if changed:  # the old rate's reservations ahead must not hold the new rate back
        await worker.executor.throttle.reset_rate(f"task:{task_name}")
    return {"ok": f"rate limit of {task_name} set to {rate or 'none'}"}


async def _time_limit(
    worker: Worker, task_name: str, soft: float | None = None, hard: float | None = None
) -> Any:
    task = _task(worker, task_name)
    for what, value in (("soft", soft), ("hard", hard)):
        if value is not None and not 0 < float(value) <= 10 * 366 * 86400:
            raise ControlError(f"{what} time limit must be positive seconds, got {value!r}")
    task.soft_time_limit = None if soft is None else float(soft)
    task.time_limit = None if hard is None else float(hard)
    return {"ok": f"time limits of {task_name} set to soft={soft} hard={hard}"}


async def _add_consumer(worker: Worker, queue: str) -> Any:
    added = await worker.consume(queue)
    return {"ok": f"{'now consuming' if added else 'already consuming'} from {queue!r}"}


async def _cancel_consumer(worker: Worker, queue: str) -> Any:
    removed = await worker.cancel_consume(queue)
    return {"ok": f"{'no longer consuming' if removed else 'was not consuming'} from {queue!r}"}


async def _shutdown(worker: Worker) -> Any:
    return AfterReply({"ok": "shutting down"}, worker.request_stop)


async def _pool_grow(worker: Worker, n: int = 1) -> Any:
    size = worker.resize(worker.concurrency + int(n))
    await worker.listed()
    return {"ok": f"pool will grow to {size}"}


async def _pool_shrink(worker: Worker, n: int = 1) -> Any:
    size = worker.resize(worker.concurrency - int(n))
    await worker.listed()
    return {"ok": f"pool will shrink to {size}"}


async def _enable_events(worker: Worker) -> Any:
    worker.set_events(True)
    return {"ok": "task events enabled"}


async def _disable_events(worker: Worker) -> Any:
    worker.set_events(False)
    return {"ok": "task events disabled"}


#: every command a worker answers, by name (Celery's names)
COMMANDS: dict[str, Handler] = {
    "ping": _ping,
    "active": _active,
    "reserved": _reserved,
    "scheduled": _scheduled,
    "registered": _registered,
    "stats": _stats,
    "active_queues": _active_queues,
    "conf": _conf,
    "revoked": _revoked,
    "revoke": _revoke,
    "revoke_by_name": _revoke_by_name,
    "rate_limit": _rate_limit,
    "time_limit": _time_limit,
    "add_consumer": _add_consumer,
    "cancel_consumer": _cancel_consumer,
    "shutdown": _shutdown,
    "pool_grow": _pool_grow,
    "pool_shrink": _pool_shrink,
    "enable_events": _enable_events,
    "disable_events": _disable_events,
}
#: the commands that only read (``aqueue inspect``)
INSPECT_COMMANDS = (
    "ping",
    "active",
    "reserved",
    "scheduled",
    "registered",
    "stats",
    "active_queues",
    "conf",
    "revoked",
)
