"""Sending: from a call's options to messages, and publishing them through the middleware.

One message (``delay`` / ``apply_async`` / ``send_task``) or many (``delay_many`` /
``apply_many`` / ``send_many``, a lone signature's ``delay``). The options of a call are
checked and worked out once, as an :class:`~aqueue.core.options.Plan` (the one resolver
every path uses); the bulk path then spends per message only an id, an arity check and one
encoding (``bulk.py`` holds that broker-facing batch work).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .bulk import encode_batch, new_ids, publish_chunks
from .canvas import Signature
from .config import keyring_of
from .context import current_request, record_child
from .errors import ArgumentError, OptionError, PublishTimeout
from .message import MessageOut, encode_message
from .middleware import chain_publish
from .options import CallOptions, Plan, check_options, node_message
from .protocols import Outgoing
from .result import AsyncResult
from .routing import resolved
from .serialization import SerializerName
from .urls import redact

if TYPE_CHECKING:
    from .app import App
    from .nodes import TaskNode
    from .task import Task

# -- one message ----------------------------------------------------------------------------


async def send(
    app: App,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: CallOptions,
    *,
    task: Task[Any, Any] | None,
    check: bool = True,
) -> AsyncResult[Any]:
    """Build one message, publish it through the middleware; its result handle."""
    msg, fmt = build(app, name, args, kwargs, options, task, check)
    broker = await app.connected_broker()  # connects the backend too, which may route results
    msg = with_reply_headers(app, msg)
    if msg.exchange and not app.routes_by_exchange:
        msg = resolved(app.router(), [msg], redact(app.broker_url))[0]
    if app.middleware:
        sent: list[MessageOut] = []

        async def last(final: MessageOut) -> None:
            await publish(app, final, fmt)
            sent.append(final)

        await chain_publish(app.middleware, last)(msg)
        task_id = sent[0].id if sent else msg.id
        if app.conf.task_send_sent_event:
            await app.sent_events.publish(sent)
    else:
        # publish() inlined: one coroutine frame fewer per delay() awaiting the broker
        outgoing = _outgoing(app, msg, fmt)
        try:
            async with asyncio.timeout(app.conf.publish_timeout):
                await broker.publish([outgoing])
        except TimeoutError:
            raise _publish_timeout(app, msg) from None
        task_id = msg.id
        if app.conf.task_send_sent_event:  # monitoring events (events.py)
            await app.sent_events.publish([msg])
    result_type = task.spec.result_type if task is not None else Any
    result = AsyncResult(app, task_id, result_type=result_type, task=task)
    result.queue = msg.queue
    if msg.parent_id is not None:  # sent from inside a task (or given a parent): its child
        record_child(current_request(), result)
    return result


def with_reply_headers(app: App, msg: MessageOut) -> MessageOut:
    """``msg`` with the headers that route its results to this process, if any."""
    headers = app.reply_headers()
    if not headers:
        return msg
    return msgspec.structs.replace(msg, headers={**headers, **msg.headers})


async def publish(app: App, msg: MessageOut, fmt: SerializerName) -> None:
    """Publish one message as it is, past the middleware, within ``publish_timeout``."""
    outgoing = _outgoing(app, msg, fmt)
    broker = await app.connected_broker()
    try:
        async with asyncio.timeout(app.conf.publish_timeout):
            await broker.publish([outgoing])
    except TimeoutError:
        raise _publish_timeout(app, msg) from None


def _outgoing(app: App, msg: MessageOut, fmt: SerializerName) -> Outgoing:
    if msg.exchange and not app.routes_by_exchange:  # (a middleware routed it)
        msg = resolved(app.router(), [msg], redact(app.broker_url))[0]
    # encoded once, and refused if oversized before any I/O
    body = encode_message(msg, fmt, app.conf.max_message_bytes, keyring_of(app.conf))
    return Outgoing(msg.id, msg.queue, body, msg.priority, msg.eta, msg.exchange, msg.routing_key)


def _publish_timeout(app: App, msg: MessageOut) -> PublishTimeout:
    return PublishTimeout(
        f"publishing {msg.task} did not complete within {app.conf.publish_timeout}s "
        f"(broker {redact(app.broker_url)}); it may or may not have been queued"
    )


def build(
    app: App,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: CallOptions,
    task: Task[Any, Any] | None,
    check: bool,
) -> tuple[MessageOut, SerializerName]:
    """One call's message and its serializer; the arguments checked if ``check``."""
    plan = Plan(app.conf, name, check_options(options), task, args=args, kwargs=kwargs)
    if check and task is not None and task.typing:
        task.spec.check_call(args, kwargs)  # a wrong arity fails here, not in the worker
    task_id = plan.task_id or str(uuid.uuid4())
    sender = current_request()
    if sender is None:
        return plan.message(task_id, args, kwargs, plan.headers), plan.serializer
    # sent from inside a task: a child of it, in its workflow (Celery's parent/root ids)
    msg = plan.message(
        task_id, args, kwargs, plan.headers, parent_id=sender.id, root_id=sender.root_id
    )
    return msg, plan.serializer


# -- many messages --------------------------------------------------------------------------


async def send_signatures(app: App, signatures: Iterable[Signature[Any]]) -> list[AsyncResult[Any]]:
    """``app.send_many``: each signature's message as ``sig.delay()`` builds it, in bulk."""
    nodes: list[TaskNode] = []
    tasks: list[Task[Any, Any] | None] = []
    for index, sig in enumerate(signatures):
        if not isinstance(sig, Signature):
            raise TypeError(
                f"send_many item {index} is a {type(sig).__name__}, not a task signature "
                "(add.s(1, 2)): apply a chain, group or chord with its own apply_async()"
            )
        task = sig.task if sig.task is not None else app.tasks.get(sig.name)
        if task is not None and task.typing:
            _check_item(task, index, sig.args, sig.kwargs)
        nodes.append(sig.to_node())
        tasks.append(task)
    if not nodes:
        return []
    await app.connected_broker()  # connects the backend too, which may route results
    sender = current_request()
    parent_id = sender.id if sender is not None else None
    root_id = sender.root_id if sender is not None else None
    messages: list[MessageOut] = []
    fmts: list[SerializerName] = []
    for node, task in zip(nodes, tasks, strict=True):
        msg, fmt = node_message(app.conf, node, task, parent_id=parent_id, root_id=root_id)
        messages.append(with_reply_headers(app, msg))
        fmts.append(fmt)
    results = await publish_many(app, messages, fmts, tasks)
    if sender is not None:
        for result in results:
            record_child(sender, result)
    return results


async def send_items(
    app: App, task: Task[Any, Any], items: Iterable[Sequence[Any]], options: CallOptions
) -> list[AsyncResult[Any]]:
    """``delay_many`` / ``apply_many``: one plan, then per item only what differs."""
    if "task_id" in options:
        raise OptionError(
            "apply_many cannot give every message the same task_id: use "
            "app.send_many([task.s(...).set(task_id=...), ...]) for chosen ids"
        )
    checked = check_options(options)  # checked once
    arg_list: list[tuple[Any, ...]] = [
        args if type(args) is tuple else _as_args(args, index) for index, args in enumerate(items)
    ]
    if not arg_list:
        return []
    if task.typing:  # a wrong arity fails here, before anything is sent
        check = task.spec.check_call
        for index, args in enumerate(arg_list):
            try:
                check(args, _NO_KWARGS)
            except ArgumentError as exc:
                raise ArgumentError(f"item {index}: {exc}; nothing was sent") from None
    if app.router().dynamic:  # a router function may route each item elsewhere
        return await _send_routed_items(app, task, checked, arg_list)
    plan = Plan(app.conf, task.name, checked, task)  # worked out once for every item
    await app.connected_broker()  # connects the backend too, which may route results
    headers = plan.headers
    reply = app.reply_headers()
    if reply:
        headers = {**reply, **headers}
    ids = new_ids(len(arg_list))
    parent_id, root_id = plan.parent_id, plan.root_id
    sender = current_request()
    if sender is not None:  # sent from inside a task: its children
        parent_id, root_id = parent_id or sender.id, root_id or sender.root_id
    if plan.link or plan.link_error:
        # callbacks are frozen per message: each one needs its own task ids
        messages = [
            plan.message(i, a, {}, headers, parent_id=parent_id, root_id=root_id)
            for i, a in zip(ids, arg_list, strict=True)
        ]
    else:
        # the hot path: everything but the id and the arguments is computed once
        name, queue, eta, expires = plan.name, plan.queue, plan.eta, plan.expires
        priority, ignore_result, now = plan.priority, plan.ignore_result, plan.now
        time_limit, soft_time_limit = plan.time_limit, plan.soft_time_limit
        group_id, exchange, routing_key = plan.group_id, plan.exchange, plan.routing_key
        messages = [
            MessageOut(
                id=task_id,
                task=name,
                queue=queue,
                exchange=exchange,
                routing_key=routing_key,
                args=args,
                headers=headers,
                eta=eta,
                expires=expires,
                priority=priority,
                time_limit=time_limit,
                soft_time_limit=soft_time_limit,
                ignore_result=ignore_result,
                parent_id=parent_id,
                root_id=root_id,
                group_id=group_id,
                sent_at=now,
            )
            for task_id, args in zip(ids, arg_list, strict=True)
        ]
    results = await publish_many(app, messages, plan.serializer, [task])
    if sender is not None:
        for result in results:
            record_child(sender, result)
    return results


async def _send_routed_items(
    app: App, task: Task[Any, Any], options: dict[str, Any], arg_list: list[tuple[Any, ...]]
) -> list[AsyncResult[Any]]:
    """``delay_many`` with router functions in ``task_routes``: one plan per item, since
    each may route elsewhere (as each ``delay()`` would)."""
    await app.connected_broker()
    reply = app.reply_headers()
    sender = current_request()
    messages: list[MessageOut] = []
    fmts: list[SerializerName] = []
    for task_id, args in zip(new_ids(len(arg_list)), arg_list, strict=True):
        plan = Plan(app.conf, task.name, options, task, args=args)
        headers = {**reply, **plan.headers} if reply else plan.headers
        parent_id, root_id = plan.parent_id, plan.root_id
        if sender is not None:
            parent_id, root_id = parent_id or sender.id, root_id or sender.root_id
        messages.append(
            plan.message(task_id, args, {}, headers, parent_id=parent_id, root_id=root_id)
        )
        fmts.append(plan.serializer)
    return await publish_many(app, messages, fmts, [task])


async def publish_many(
    app: App,
    messages: list[MessageOut],
    fmt: SerializerName | list[SerializerName],
    tasks: Sequence[Task[Any, Any] | None],
) -> list[AsyncResult[Any]]:
    """Encode (size-checked) then publish in chunks; one result per message, in order.

    With middleware, each message first goes through the publish chain; what reaches
    its end is collected and published in the same chunks afterwards. Messages routed to
    an exchange are resolved to a queue first on a broker without exchanges.
    """
    broker = await app.connected_broker()
    if not app.routes_by_exchange and any(m.exchange for m in messages):
        messages = resolved(app.router(), messages, redact(app.broker_url))
    if app.middleware:
        sent, origins, ids = await through_middleware(app, messages, fmt)
        sent_fmt: SerializerName | list[SerializerName] = (
            fmt if isinstance(fmt, str) else [fmt[i] for i in origins]
        )
        if not app.routes_by_exchange and any(m.exchange for m in sent):
            sent = resolved(app.router(), sent, redact(app.broker_url))
        batch = encode_batch(sent, sent_fmt, app.conf.max_message_bytes, keyring_of(app.conf))
        results = _results(app, tasks, ids, range(len(ids)), [m.queue for m in messages])
        handles = _results(app, tasks, [m.id for m in sent], origins, [m.queue for m in sent])
        messages = sent
    else:
        batch = encode_batch(messages, fmt, app.conf.max_message_bytes, keyring_of(app.conf))
        queues = [m.queue for m in messages]
        results = _results(app, tasks, [m.id for m in messages], range(len(messages)), queues)
        handles = results
    await publish_chunks(
        broker,
        batch,
        handles,
        timeout=app.conf.publish_timeout,
        where=redact(app.broker_url),
        chunk=app.conf.publish_chunk_size,
    )
    if app.conf.task_send_sent_event:  # monitoring events (events.py): one batch for all
        await app.sent_events.publish(messages)
    return results


def _results(
    app: App,
    tasks: Sequence[Task[Any, Any] | None],
    ids: Sequence[str],
    origins: Sequence[int],
    queues: Sequence[str],
) -> list[AsyncResult[Any]]:
    """Result handles of ``ids``, each typed by the task of its origin (one task: all),
    and knowing its message's queue (``queues``, aligned with ``ids``)."""
    out: list[AsyncResult[Any]] = []
    if len(tasks) == 1:
        task = tasks[0]
        result_type = task.spec.result_type if task is not None else Any
        for task_id, queue in zip(ids, queues, strict=True):
            result = AsyncResult(app, task_id, result_type=result_type, task=task)
            result.queue = queue
            out.append(result)
        return out
    for task_id, origin, queue in zip(ids, origins, queues, strict=True):
        task = tasks[origin]
        result = task.AsyncResult(task_id) if task is not None else app.AsyncResult(task_id)
        result.queue = queue
        out.append(result)
    return out


async def through_middleware(
    app: App, messages: list[MessageOut], fmt: SerializerName | list[SerializerName]
) -> tuple[list[MessageOut], list[int], list[str]]:
    """Run each message through the publish middleware, collecting what reaches the end.

    Returns the messages to send, the index of the message each came from, and per
    input message the id its result is read by (the first message it became, or its own
    if the middleware dropped it).
    """
    sent: list[MessageOut] = []
    origins: list[int] = []
    ids: list[str | None] = [None] * len(messages)
    collecting = True
    for index, msg in enumerate(messages):

        async def last(final: MessageOut, index: int = index) -> None:
            if not collecting:  # call_next after the bulk call moved on: send it alone
                await publish(app, final, fmt if isinstance(fmt, str) else fmt[index])
                return
            sent.append(final)
            origins.append(index)
            if ids[index] is None:
                ids[index] = final.id

        if msg.headers:  # one dict per message, so a middleware may change it in place
            msg = msgspec.structs.replace(msg, headers=dict(msg.headers))
        await chain_publish(app.middleware, last)(msg)
    collecting = False
    result_ids = [i if i is not None else m.id for i, m in zip(ids, messages, strict=True)]
    return sent, origins, result_ids


_NO_KWARGS: dict[str, Any] = {}


def _as_args(value: Any, index: int) -> tuple[Any, ...]:
    """One item of ``delay_many``: a tuple of positional arguments (a list is accepted)."""
    if isinstance(value, list):
        return tuple(value)
    raise TypeError(
        f"item {index} is a {type(value).__name__}: each item is a tuple of the task's "
        "positional arguments, e.g. delay_many([(1, 2), (3, 4)]) or [(x,) for x in xs]"
    )


def _check_item(
    task: Task[Any, Any], index: int, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    try:
        task.spec.check_call(args, kwargs)
    except ArgumentError as exc:
        raise ArgumentError(f"item {index}: {exc}; nothing was sent") from None
