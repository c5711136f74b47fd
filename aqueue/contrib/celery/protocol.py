"""Celery's task message protocol 2 and its result meta, as data: no I/O here.

What a Celery 5 producer puts on the wire (``celery/app/amqp.py``'s ``as_task_v2``):
headers naming the task (``task``, ``id``, ``root_id``, ``parent_id``, ``group``,
``retries``, ``eta``, ``expires``, ``timelimit``, ...), properties (``correlation_id``,
``reply_to``), and a body ``[args, kwargs, embed]`` where ``embed`` holds ``callbacks``,
``errbacks``, ``chain`` (the steps still to run, the next one last) and ``chord``. On Redis
kombu wraps it in a JSON envelope (``body`` base64, ``content-type``, ``headers``,
``properties`` with ``delivery_tag`` and ``delivery_info``) pushed on a list named after the
queue.

Only JSON is read. Anything else (pickle, yaml, msgpack, a custom serializer), protocol 1,
chords and Celery's own built-in tasks (``celery.chord_unlock``...) raise :class:`Refused`
with a reason, and the bridge dead-letters the message under that reason.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from aqueue.core.errors import AqueueError
from aqueue.core.message import MAX_HEADER_VALUE_LENGTH
from aqueue.core.states import READY_STATES

#: the content type Celery's default serializer sends (the only one aqueue reads)
JSON_CONTENT_TYPE: Final = "application/json"
#: what Celery names the serializers behind the content types it may send
_SERIALIZER_NAMES: Final = {
    "application/x-python-serialize": "pickle",
    "application/x-yaml": "yaml",
    "application/x-msgpack": "msgpack",
    "application/data": "raw",
    "application/text": "raw",
}
#: kombu's separator between a queue's name and its priority step (``celery\x06\x163``)
PRIORITY_SEPARATOR: Final = "\x06\x16"
#: kombu's default priority steps on Redis: one list per step, the bare name for 0
PRIORITY_STEPS: Final = (0, 3, 6, 9)
#: where Celery's key-value backends keep a task's result: ``celery-task-meta-<id>``
META_PREFIX: Final = "celery-task-meta-"
#: the header of an aqueue message relayed from Celery: what Celery expects after the task
#: (its callbacks, errbacks and chain), JSON; its presence also marks the message as Celery's
CELERY_HEADER: Final = "celery"
#: kombu's default ``visibility_timeout`` on Redis
VISIBILITY_TIMEOUT: Final = 3600.0
#: Celery's default ``result_expires`` (one day)
RESULT_EXPIRES: Final = 86400


class Refused(AqueueError):
    """A Celery message aqueue does not run; ``reason`` is the dead letter's reason."""

    def __init__(self, reason: str, detail: str = "", task_id: str | None = None) -> None:
        self.reason = f"{reason} {detail}".strip()
        super().__init__(self.reason)
        self.task_id = task_id


@dataclass(frozen=True, slots=True)
class CeleryTask:
    """One Celery protocol 2 task message, read."""

    id: str
    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    #: Celery signatures (dicts) applied with the result on success
    callbacks: tuple[dict[str, Any], ...] = ()
    #: Celery signatures applied with the task id on failure
    errbacks: tuple[dict[str, Any], ...] = ()
    #: the rest of the chain, the next step last (Celery's order)
    chain: tuple[dict[str, Any], ...] = ()
    reply_to: str = ""

    def embed_header(self) -> str:
        """The :data:`CELERY_HEADER` value: what follows the task, for the worker's end of it.

        Raises:
            Refused: longer than a header may be (a very long chain or many callbacks).
        """
        embed: dict[str, Any] = {}
        if self.callbacks:
            embed["callbacks"] = self.callbacks
        if self.errbacks:
            embed["errbacks"] = self.errbacks
        if self.chain:
            embed["chain"] = self.chain
        if self.reply_to:
            embed["reply_to"] = self.reply_to
        text = msgspec.json.encode(embed).decode()
        if len(text) > MAX_HEADER_VALUE_LENGTH:
            limit = MAX_HEADER_VALUE_LENGTH
            raise Refused(
                "celery:workflow-too-large",
                f"{len(text)} characters of callbacks and chain (at most {limit})",
                self.id,
            )
        return text


@dataclass(frozen=True, slots=True)
class Followers:
    """What a relayed message's :data:`CELERY_HEADER` says follows the task."""

    callbacks: tuple[dict[str, Any], ...] = ()
    errbacks: tuple[dict[str, Any], ...] = ()
    chain: tuple[dict[str, Any], ...] = ()
    #: where an ``rpc://`` result goes (the caller's reply queue)
    reply_to: str = ""


def read_followers(header: str) -> Followers:
    """The :data:`CELERY_HEADER` of a relayed message, read back."""
    embed = msgspec.json.decode(header)
    if not isinstance(embed, dict):
        return Followers()
    return Followers(
        callbacks=tuple(embed.get("callbacks") or ()),
        errbacks=tuple(embed.get("errbacks") or ()),
        chain=tuple(embed.get("chain") or ()),
        reply_to=str(embed.get("reply_to") or ""),
    )


# -- reading a message ------------------------------------------------------------------------


def read_envelope(payload: bytes, max_bytes: int) -> CeleryTask:
    """The task of a kombu Redis envelope (what ``LPUSH`` put on the queue's list).

    Raises:
        Refused: not a JSON protocol 2 task message aqueue can run, with the reason.
    """
    check_size(len(payload), max_bytes, None)  # the whole envelope, before decoding it
    envelope = _json(payload, "envelope")
    if not isinstance(envelope, dict):
        raise Refused("celery:bad-envelope", "not a JSON object")
    properties = envelope.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    headers = envelope.get("headers")
    headers = headers if isinstance(headers, dict) else {}
    task_id = task_id_of(headers, properties)
    check_content_type(envelope.get("content-type"), task_id)  # before the body is decoded
    return read_message(
        headers, properties, _envelope_body(envelope.get("body"), properties, task_id)
    )


def _envelope_body(body: Any, properties: Mapping[str, Any], task_id: str | None) -> bytes:
    """An envelope's ``body`` field as bytes (base64-decoded when its properties say so)."""
    if not isinstance(body, str):
        raise Refused("celery:bad-envelope", "no body", task_id)
    if properties.get("body_encoding") == "base64":
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise Refused("celery:bad-envelope", "body is not base64", task_id) from None
    return body.encode()


def read_parts(
    content_type: Any,
    headers: Mapping[str, Any],
    properties: Mapping[str, Any],
    body: bytes,
    max_bytes: int,
) -> CeleryTask:
    """The task of a message delivered in its parts (RabbitMQ): the size limit (the app's
    ``max_message_bytes``), then the content type (JSON only), then the protocol 2 message.

    Raises:
        Refused: too large, not JSON, or not a protocol 2 task message aqueue can run.
    """
    task_id = task_id_of(headers, properties)
    check_size(len(body), max_bytes, task_id)
    check_content_type(content_type, task_id)
    return read_message(headers, properties, body)


def task_id_of(headers: Mapping[str, Any], properties: Mapping[str, Any]) -> str | None:
    """A message's task id: its ``id`` header, else its ``correlation_id`` property."""
    return _text(headers.get("id")) or _text(properties.get("correlation_id"))


def check_size(size: int, max_bytes: int, task_id: str | None) -> None:
    """Refuse a message of more than ``max_bytes`` (the app's ``max_message_bytes``).

    Raises:
        Refused: ``celery:too-large``.
    """
    if size > max_bytes:
        raise Refused("celery:too-large", f"{size} bytes (max_message_bytes={max_bytes})", task_id)


def check_content_type(content_type: Any, task_id: str | None) -> None:
    """Refuse anything but JSON, naming Celery's serializer behind the content type.

    Raises:
        Refused: ``celery:unsupported-content-type pickle`` (yaml, msgpack, custom (...)).
    """
    if content_type != JSON_CONTENT_TYPE:
        name = _SERIALIZER_NAMES.get(str(content_type), f"custom ({str(content_type)[:80]})")
        raise Refused("celery:unsupported-content-type", name, task_id)


def read_message(
    headers: Mapping[str, Any], properties: Mapping[str, Any], body: bytes
) -> CeleryTask:
    """A protocol 2 message from its headers, properties and (decoded, JSON) body.

    Raises:
        Refused: protocol 1, a chord, a Celery built-in, or a malformed field.
    """
    name = headers.get("task")
    task_id = task_id_of(headers, properties)
    if name is None:
        raise Refused(
            "celery:unsupported-protocol", "1 (upgrade the producer to protocol 2)", task_id
        )
    if not isinstance(name, str) or not name or not task_id:
        raise Refused("celery:bad-message", "no task name or id", task_id)
    if name == "celery.chord_unlock":
        raise Refused("celery:unsupported-chord-unlock", name, task_id)
    if name.startswith("celery."):
        raise Refused("celery:unsupported-builtin", name, task_id)
    decoded = _json(body, "body", task_id)
    if not (isinstance(decoded, list) and len(decoded) == 3):
        raise Refused("celery:bad-message", "body is not [args, kwargs, embed]", task_id)
    args, kwargs, embed = decoded
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise Refused("celery:bad-message", "args or kwargs of the wrong type", task_id)
    embed = embed if isinstance(embed, dict) else {}
    if embed.get("chord"):
        raise Refused(
            "celery:unsupported-chord", "a chord member (run chords on one side)", task_id
        )
    limits = headers.get("timelimit") or [None, None]
    if not (isinstance(limits, list) and len(limits) == 2):
        limits = [None, None]
    retries = headers.get("retries") or 0
    return CeleryTask(
        id=task_id,
        task=name,
        args=tuple(args),
        kwargs=kwargs,
        retries=retries if isinstance(retries, int) and retries >= 0 else 0,
        eta=_time(headers.get("eta"), "eta", task_id),
        expires=_time(headers.get("expires"), "expires", task_id),
        time_limit=_seconds(limits[0]),
        soft_time_limit=_seconds(limits[1]),
        root_id=_text(headers.get("root_id")),
        parent_id=_text(headers.get("parent_id")),
        group_id=_text(headers.get("group")),
        callbacks=_signatures(embed.get("callbacks"), task_id),
        errbacks=_signatures(embed.get("errbacks"), task_id),
        chain=_signatures(embed.get("chain"), task_id),
        reply_to=_text(properties.get("reply_to")) or "",
    )


def _json(data: bytes, what: str, task_id: str | None = None) -> Any:
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise Refused("celery:bad-message", f"{what} is not JSON", task_id) from None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _time(value: Any, what: str, task_id: str) -> float | None:
    """An ISO 8601 time (Celery's ``eta`` / ``expires``) as unix seconds; naive means UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Refused("celery:bad-message", f"{what} is not an ISO 8601 time", task_id)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Refused("celery:bad-message", f"{what} is not an ISO 8601 time", task_id) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _signatures(value: Any, task_id: str) -> tuple[dict[str, Any], ...]:
    """Celery signatures of plain tasks; a group, chord or chain among them is refused."""
    if not value:
        return ()
    if not isinstance(value, list):
        raise Refused("celery:bad-message", "callbacks or chain is not a list", task_id)
    out = []
    for sig in value:
        if not (isinstance(sig, dict) and isinstance(sig.get("task"), str)):
            raise Refused("celery:bad-message", "a signature without a task name", task_id)
        kind = sig.get("subtask_type")
        if kind:
            raise Refused("celery:unsupported-canvas", f"{kind} inside a workflow", task_id)
        out.append(sig)
    return tuple(out)


# -- writing a message ------------------------------------------------------------------------


def signature(
    name: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue: str | None = None,
    immutable: bool = False,
) -> dict[str, Any]:
    """A Celery signature as data (``celery.signature(...)``'s dict form)."""
    options: dict[str, Any] = {"task_id": str(uuid.uuid4())}
    if queue is not None:
        options["queue"] = queue
    return {
        "task": name,
        "args": list(args),
        "kwargs": dict(kwargs or {}),
        "options": options,
        "subtask_type": None,
        "immutable": immutable,
        "chord_size": None,
    }


@dataclass(frozen=True, slots=True)
class Step:
    """A signature applied: what to send next."""

    name: str
    task_id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]


def applied(sig: Mapping[str, Any], partial_args: tuple[Any, ...]) -> Step:
    """``sig`` applied with ``partial_args`` before its own (unless immutable), as Celery does."""
    options = sig.get("options")
    options = dict(options) if isinstance(options, dict) else {}
    own = tuple(sig.get("args") or ())
    kwargs = sig.get("kwargs")
    args = own if sig.get("immutable") else partial_args + own
    task_id = _text(options.get("task_id")) or str(uuid.uuid4())
    return Step(
        str(sig["task"]), task_id, args, dict(kwargs) if isinstance(kwargs, dict) else {}, options
    )


def task_message(
    task: CeleryTask, *, origin: str, ignore_result: bool = False
) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """The headers, properties and JSON body of a protocol 2 message for ``task``."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task.task,
        "id": task.id,
        "shadow": None,
        "eta": _iso(task.eta),
        "expires": _iso(task.expires),
        "group": task.group_id,
        "group_index": None,
        "retries": task.retries,
        "timelimit": [task.time_limit, task.soft_time_limit],
        "root_id": task.root_id or task.id,
        "parent_id": task.parent_id,
        # never the arguments themselves: Celery shows these in its logs and monitors
        "argsrepr": f"<{len(task.args)} args>",
        "kwargsrepr": f"<{len(task.kwargs)} kwargs>",
        "origin": origin,
        "ignore_result": ignore_result,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {"correlation_id": task.id, "reply_to": task.reply_to}
    embed = {
        "callbacks": list(task.callbacks) or None,
        "errbacks": list(task.errbacks) or None,
        "chain": list(task.chain) or None,
        "chord": None,
    }
    body = msgspec.json.encode([list(task.args), task.kwargs, embed])
    return headers, properties, body


def envelope(task: CeleryTask, *, queue: str, priority: int, origin: str) -> bytes:
    """The kombu Redis envelope of ``task``, as a Celery producer would push it on ``queue``."""
    headers, properties, body = task_message(task, origin=origin)
    properties.update(
        delivery_mode=2,
        delivery_info={"exchange": "", "routing_key": queue},
        priority=priority,
        body_encoding="base64",
        delivery_tag=str(uuid.uuid4()),
    )
    return msgspec.json.encode(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": JSON_CONTENT_TYPE,
            "headers": headers,
            "properties": properties,
        }
    )


def queue_list(queue: str, priority: int) -> str:
    """The list kombu keeps ``queue``'s messages of ``priority`` in (its ``_q_for_pri``)."""
    step = max(s for s in PRIORITY_STEPS if s <= max(priority, 0))
    return f"{queue}{PRIORITY_SEPARATOR}{step}" if step else queue


def _iso(when: float | None) -> str | None:
    return None if when is None else dt.datetime.fromtimestamp(when, dt.UTC).isoformat()


# -- result meta ------------------------------------------------------------------------------


def meta_key(task_id: str) -> str:
    """Where Celery's Redis backend keeps ``task_id``'s result (also its pub/sub channel)."""
    return META_PREFIX + task_id


def success_meta(
    task_id: str, value: Any, *, group_id: str | None = None, parent_id: str | None = None
) -> bytes:
    """The meta Celery's ``AsyncResult(id).get()`` reads as a success returning ``value``.

    Raises:
        msgspec.EncodeError / TypeError: ``value`` has no JSON form.
    """
    return _meta(task_id, "SUCCESS", value, None, group_id=group_id, parent_id=parent_id)


def failure_meta(
    task_id: str,
    exc_type: str,
    message: str,
    traceback: str | None,
    *,
    exc_module: str | None = None,
    state: str = "FAILURE",
    group_id: str | None = None,
    parent_id: str | None = None,
) -> bytes:
    """The meta of a failed (or retrying: ``state="RETRY"``) task, as Celery's JSON backend
    writes an exception: type, arguments and module, never a pickled object. Celery rebuilds
    the exception from a module it has already imported, else as a new class of that name."""
    error = {"exc_type": exc_type, "exc_message": [message], "exc_module": exc_module}
    return _meta(task_id, state, error, traceback, group_id=group_id, parent_id=parent_id)


def revoked_meta(task_id: str, reason: str) -> bytes:
    """The meta of a task that was not run (``reason``: "expired", "revoked"), as Celery
    stores it: ``get()`` raises its ``TaskRevokedError``."""
    error = {
        "exc_type": "TaskRevokedError",
        "exc_message": [reason],
        "exc_module": "celery.exceptions",
    }
    return _meta(task_id, "REVOKED", error, None, group_id=None, parent_id=None)


def _meta(
    task_id: str,
    state: str,
    result: Any,
    traceback: str | None,
    *,
    group_id: str | None,
    parent_id: str | None,
) -> bytes:
    meta: dict[str, Any] = {
        "status": state,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": dt.datetime.now(dt.UTC).isoformat() if state in READY_STATES else None,
        "task_id": task_id,
    }
    if group_id:
        meta["group_id"] = group_id
    if parent_id:
        meta["parent_id"] = parent_id
    return msgspec.json.encode(meta)


@dataclass(frozen=True, slots=True)
class Meta:
    """A Celery result meta, read."""

    task_id: str
    status: str
    result: Any
    traceback: str | None

    @property
    def ready(self) -> bool:
        """Whether the task has ended (its result will not change)."""
        return self.status in READY_STATES

    def error(self) -> tuple[str, str]:
        """The exception's type name and message of a FAILURE / REVOKED meta."""
        result = self.result
        if not isinstance(result, dict):
            return self.status, "" if result is None else str(result)
        message = result.get("exc_message")
        if isinstance(message, list):
            message = ", ".join(str(part) for part in message)
        return str(result.get("exc_type") or self.status), "" if message is None else str(message)


def read_meta(task_id: str, data: bytes) -> Meta:
    """A stored meta (``celery-task-meta-<id>``), JSON only.

    Raises:
        Refused: not a JSON meta (a pickle-serialized result backend, say).
    """
    decoded = _json(data, "result meta", task_id)
    if not isinstance(decoded, dict) or not isinstance(decoded.get("status"), str):
        raise Refused("celery:bad-result", "not a JSON result meta", task_id)
    traceback = decoded.get("traceback")
    return Meta(
        task_id=task_id,
        status=decoded["status"],
        result=decoded.get("result"),
        traceback=traceback if isinstance(traceback, str) else None,
    )
