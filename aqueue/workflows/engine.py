"""Running workflows: turning nodes into messages, and what a worker does when a step ends.

Producer side, :meth:`Engine.build` turns a node into the messages to publish now:

* a task: its message, carrying what follows it (``chain``) and the chord it completes a
  member of (``chord``);
* a chain: its first step, carrying the rest;
* a group followed by more steps: a chord whose body is the next step (Celery's upgrade,
  wherever the group sits); a group with callbacks: a chord whose body collects the list
  and applies them; any other group: its members, each where the group sits (so members
  of a group ending a chord member join that chord, and the chord nests their values);
* a chord: its members, its meta record and its deadline message.

Worker side, after a task stored its result and before its message is acked:

* success: apply ``link`` callbacks with the result; start the next ``chain`` step with the
  result prepended, or, at the end of a chain inside a chord, join the chord;
* failure (or refusal, revocation, expiry): apply ``link_error`` callbacks with
  ``(task_id, error)`` (or ``(task_id)`` for a one-argument errback), fail every node still
  ahead in the chain with the failing task's error type and message, and fail the chord.

A chord fires exactly once: members join an idempotent set in the backend and
``chord_join`` answers ``True`` to exactly one caller. A chord that fails stores FAILURE for
its body and everything after it and calls the errbacks of what would have run first (a
task body's, each task's of a group body, a chord body's body's). Its deadline message (a
task due at the chord's timeout) fails a chord whose member never finished, or re-publishes
the body if the worker that fired it died before publishing (the body's id is fixed, so a
body already queued is not queued twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ..core import states
from ..core.bulk import encode_batch
from ..core.config import keyring_of
from ..core.context import Request, record_child, trail_of
from ..core.message import ErrorInfo, MessageIn, MessageOut, ResultOut, decode_result
from ..core.nodes import (
    ChainNode,
    ChordMeta,
    ChordNode,
    GroupNode,
    Node,
    ReplacedNode,
    Shape,
    TaskNode,
    all_ids,
    chord_members,
    leaves,
    shape,
)
from ..core.options import node_message
from ..core.routing import resolved
from ..core.sending import through_middleware
from ..core.serialization import SerializerName, check_serializer, decode, encode, format_of
from ..core.urls import redact
from . import additions, apply, builtins

if TYPE_CHECKING:
    from ..core.app import App
    from ..core.result import AsyncResult, GroupResult

#: a message to publish, with its serializer
Outbound = tuple[MessageOut, SerializerName]

log = logging.getLogger("aqueue.workflows")

CHORD_DEADLINE_TASK = builtins.CHORD_DEADLINE_TASK
#: a chord's deadline message is ``<chord id>`` + this: internal timers are told apart by
#: it (``aqueue status`` counts them apart from users' messages)
DEADLINE_ID_SUFFIX = ".deadline"
_CHORD_META = "chord-meta:"
_DEADLINE_MEMBER = "__deadline__"
_NOTHING: tuple[Any, ...] = ()


class Engine:
    """The workflow engine of one app (:class:`aqueue.core.protocols.Workflows`).

    Creating it registers the workflow tasks (chord deadline, collect, map, starmap) on the
    app.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        builtins.register(app, self)

    # -- applying (aqueue.core.protocols.Workflows) -------------------------------------

    async def apply(
        self, node: Node, *, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
    ) -> AsyncResult[Any] | GroupResult[Any]:
        """Apply a frozen canvas; the handle of its result."""
        return await apply.apply(self.app, self, node, args, kwargs)

    async def states(self, root_id: str) -> dict[str, str]:
        """The state of every node of the workflow started with ``root_id``."""
        return await apply.workflow_states(self.app, root_id)

    async def replace(self, msg: MessageIn, node: Node, attempt: int) -> None:
        """Apply ``node`` in place of the task of ``msg`` (``self.replace()``).

        The replacement runs with its own arguments, ends with a :class:`ReplacedNode`
        that makes its value the task's result, then goes on where the task would have:
        its callbacks, the rest of its chain, its chord.
        """
        end = ReplacedNode(
            id=msg.id,
            task=msg.task,
            attempt=attempt,
            link=msg.link,
            link_error=msg.link_error,
        )
        # indexed (app.workflow_states(first id)); refused by a backend that cannot hold
        # workflow state (rpc://), before anything is sent
        ids = all_ids(node)
        if ids:  # (an empty group has none: its task's value is [] at once)
            await apply.index(self.app, ids)
        steps = (*node.steps, end) if isinstance(node, ChainNode) else (node, end)
        out = await self.build(
            steps[0],
            rest=(*steps[1:], *msg.chain),
            chord=msg.chord,
            parent_id=msg.id,
            root_id=msg.root_id or msg.id,
        )
        await self.publish(out)

    async def add_to_chord(
        self, request: Request, node: Node
    ) -> AsyncResult[Any] | GroupResult[Any]:
        """Apply ``node`` as part of the chord ``request``'s task is a member of.

        See :mod:`aqueue.workflows.additions`: the chord waits for it, and its value comes
        after the members' values.
        """
        if request.chord is None:
            raise ValueError("add_to_chord: the current task is not a member of a chord")
        chord_id, owner = additions.parse_ref(request.chord)
        meta = await self._meta(chord_id)
        if meta is None:
            raise RuntimeError(f"add_to_chord: chord {chord_id} is gone (its meta expired)")
        trail = trail_of(request)
        backend = await self.app.result_backend()
        ttl = _chord_ttl(meta)
        if not meta.additions:
            marked = msgspec.structs.replace(meta, additions=True)
            await backend.store(
                _CHORD_META + chord_id,
                encode(marked, self._fmt),
                state="META",
                attempt=1,
                ttl=max(self.app.conf.result_expires or 0.0, ttl),
            )
        async with trail.adding:  # concurrent adds: each stores the list as it grew
            trail.added.append(shape(node))
            await additions.record(
                backend, chord_id, request.id, trail.added, fmt=self._fmt, ttl=ttl
            )
        out = await self.build(
            node,
            chord=additions.slot_ref(chord_id, owner or request.id),
            parent_id=request.id,
            root_id=request.root_id,
        )
        await self.publish(out)
        handle = apply.result_tree(self.app, node)
        record_child(request, handle)
        return handle

    @property
    def _fmt(self) -> SerializerName:
        return check_serializer(self.app.conf.task_serializer)

    # -- building messages --------------------------------------------------------------

    async def build(
        self,
        node: Node,
        *,
        prepend: tuple[Any, ...] = _NOTHING,
        kwargs: Mapping[str, Any] | None = None,
        rest: tuple[Node, ...] = (),
        chord: str | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
    ) -> list[Outbound]:
        """Messages that start ``node``; stores chord metas on the way.

        Args:
            prepend: arguments before the first tasks' own (the previous result, or a
                canvas's partial arguments).
            kwargs: keyword arguments over the first tasks' own.
            rest: what follows ``node`` in its chain.
            chord: the chord ``node`` completes a member of.
        """
        if isinstance(node, TaskNode):
            task = self.app.tasks.get(node.task)
            return [
                node_message(
                    self.app.conf,
                    node,
                    task,
                    prepend=prepend,
                    kwargs=kwargs,
                    chain=rest,
                    chord=chord,
                    parent_id=parent_id,
                    root_id=root_id,
                )
            ]
        if isinstance(node, ChainNode):
            first, *more = node.steps
            return await self.build(
                first,
                prepend=prepend,
                kwargs=kwargs,
                rest=(*more, *rest),
                chord=chord,
                parent_id=parent_id,
                root_id=root_id,
            )
        if isinstance(node, ReplacedNode):  # a replacement ended: no message, its task's result
            value = prepend[0] if prepend else None
            return await self._replaced(node, value, rest, chord, root_id)
        if isinstance(node, GroupNode):
            if node.link:  # callbacks once, with the list: a chord whose body collects it
                collect = TaskNode(id=node.id, task=builtins.COLLECT_TASK, link=node.link)
                node = ChordNode(id=node.id, header=node.members, body=collect)
            elif rest:  # a group followed by more steps is a chord with the next step as body
                body, *after = rest
                node, rest = ChordNode(id=node.id, header=node.members, body=body), tuple(after)
            else:
                out: list[Outbound] = []
                for member in node.members:
                    out += await self.build(
                        member,
                        prepend=prepend,
                        kwargs=kwargs,
                        chord=chord,
                        parent_id=parent_id,
                        root_id=root_id,
                    )
                return out
        return await self._build_chord(node, prepend, kwargs, rest, chord, parent_id, root_id)

    async def _build_chord(
        self,
        node: ChordNode,
        prepend: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None,
        rest: tuple[Node, ...],
        parent_chord: str | None,
        parent_id: str | None,
        root_id: str | None,
    ) -> list[Outbound]:
        members = chord_members(node.header)
        shapes = [shape(m) for m in members]
        member_ids = leaves(shapes)
        timeout = node.timeout if node.timeout is not None else self.app.conf.chord_timeout
        deadline = time.time() + timeout
        meta = ChordMeta(
            id=node.id,
            member_ids=tuple(member_ids),
            body=node.body,
            shape=None if all(isinstance(s, str) for s in shapes) else shapes,
            rest=rest,
            parent_chord=parent_chord,
            deadline=deadline,
            root_id=root_id,
        )
        if not member_ids:  # nothing to wait for: the body starts at once
            return await self.build(
                node.body,
                prepend=(_nest(shapes, {}),),
                rest=rest,
                chord=parent_chord,
                parent_id=parent_id,
                root_id=root_id,
            )
        backend = await self.app.result_backend()
        ttl = max(self.app.conf.result_expires or 0.0, timeout + 3600.0)
        await backend.store(
            _CHORD_META + node.id, encode(meta, self._fmt), state="META", attempt=0, ttl=ttl
        )
        out: list[Outbound] = []
        for member in members:
            out += await self.build(
                member,
                prepend=prepend,
                kwargs=kwargs,
                chord=node.id,
                parent_id=parent_id,
                root_id=root_id,
            )
        deadline_message = MessageOut(
            id=node.id + DEADLINE_ID_SUFFIX,
            task=CHORD_DEADLINE_TASK,
            args=(node.id,),
            queue=self.app.conf.task_default_queue,
            eta=deadline,
            ignore_result=True,
            root_id=root_id,
            sent_at=time.time(),
        )
        out.append((deadline_message, self._fmt))
        return out

    async def publish(self, outbound: list[Outbound]) -> None:
        """Publish many messages in one broker call, every one encoded (size-checked) first."""
        if not outbound:
            return
        app = self.app
        broker = await app.connected_broker()
        messages = [m for m, _ in outbound]
        formats = [f for _, f in outbound]
        if app.middleware:  # what a workflow sends goes through the app's middleware too
            messages, origins, _ = await through_middleware(app, messages, formats)
            formats = [formats[i] for i in origins]
            if not messages:
                return
        if not app.routes_by_exchange and any(m.exchange for m in messages):
            messages = resolved(app.router(), messages, redact(app.broker_url))
        batch = encode_batch(messages, formats, app.conf.max_message_bytes, keyring_of(app.conf))
        await broker.publish(batch)
        if app.conf.task_send_sent_event:  # monitoring events (aqueue/core/events.py)
            await app.sent_events.publish(messages)

    # -- continuations (worker side) ----------------------------------------------------

    async def on_success(self, msg: MessageIn, value: Any) -> None:
        """Start what follows a successful task."""
        out = await self._continue(msg.id, value, msg.link, msg.chain, msg.chord, msg.root_id)
        await self.publish(out)

    async def _continue(
        self,
        task_id: str,
        value: Any,
        link: tuple[Node, ...],
        chain: tuple[Node, ...],
        chord: str | None,
        root_id: str | None,
    ) -> list[Outbound]:
        """What follows task ``task_id`` that ended with ``value``: callbacks, then the next
        step of its chain, or at the end of a chain inside a chord, the chord's join."""
        out: list[Outbound] = []
        for node in link:
            out += await self.build(node, prepend=(value,), parent_id=task_id, root_id=root_id)
        if chain:
            first, *rest = chain
            out += await self.build(
                first,
                prepend=(value,),
                rest=tuple(rest),
                chord=chord,
                parent_id=task_id,
                root_id=root_id,
            )
        elif chord is not None:
            out += await self._join(chord, task_id, failed=False)
        return out

    async def _replaced(
        self,
        node: ReplacedNode,
        value: Any,
        rest: tuple[Node, ...],
        chord: str | None,
        root_id: str | None,
    ) -> list[Outbound]:
        """Task ``node.id``'s replacement ended with ``value``: that is its result.

        Idempotent: reached again (the worker that got here died before acking), the
        result is already stored and what follows has fixed ids.
        """
        task = self.app.tasks.get(node.task)
        fmt = (
            check_serializer(task.serializer or self.app.conf.task_serializer)
            if task
            else self._fmt
        )
        backend = await self.app.result_backend()
        attempt = node.attempt
        for _ in range(3):
            record = ResultOut(
                id=node.id,
                state=states.SUCCESS,
                task=node.task,
                value=value,
                attempt=attempt,
                date_done=time.time(),
                root_id=root_id,
            )
            if await backend.store(
                node.id,
                encode(record, fmt),
                state=states.SUCCESS,
                attempt=attempt,
                ttl=self.app.conf.result_expires,
            ):
                break
            stored = await backend.get(node.id)
            found = decode_result(stored) if stored is not None else None
            if found is not None and found.state == states.SUCCESS:
                break  # stored before: this is a repeat; what follows is idempotent
            if found is not None and found.state in states.READY_STATES:
                log.warning(
                    "Task %s[%s] is %s: the end of its replacement is ignored",
                    node.task,
                    node.id,
                    found.state,
                )
                return []
            # a newer attempt of the replaced task is running it again: its result is ours
            attempt = found.attempt if found is not None else attempt
        return await self._continue(node.id, value, node.link, rest, chord, root_id)

    async def on_failure(self, msg: MessageIn, error: ErrorInfo) -> None:
        """Call errbacks, fail every node ahead in the chain, fail the chord."""
        out: list[Outbound] = []
        for node in msg.link_error:
            out += await self._errback(node, msg.id, error, msg.root_id)
        upstream = _upstream(msg.id, error)
        await self._fail(msg.chain, upstream, msg.root_id)
        out += await self._replaced_errbacks(msg.chain, upstream, msg.root_id)
        if msg.chord is not None:
            out += await self._join(msg.chord, msg.id, failed=True, error=upstream)
        await self.publish(out)

    async def _errback(
        self, node: Node, task_id: str, error: ErrorInfo, root_id: str | None
    ) -> list[Outbound]:
        """An errback of ``task_id``: given ``(task_id, error)``, or ``(task_id)`` if that is
        all it takes (Celery's old-style ``error_handler(task_id)``)."""
        args: tuple[Any, ...] = (task_id, error)
        task = self.app.tasks.get(node.task) if isinstance(node, TaskNode) else None
        if isinstance(node, TaskNode) and task is not None and not node.immutable:
            signature = task.spec.signature
            try:
                signature.bind(*args, *node.args, **node.kwargs)
            except TypeError:
                try:
                    signature.bind(task_id, *node.args, **node.kwargs)
                    args = (task_id,)
                except TypeError:
                    pass  # neither fits: the worker will say why
        return await self.build(node, prepend=args, parent_id=task_id, root_id=root_id)

    async def _join(
        self, ref: str, member_id: str, *, failed: bool, error: ErrorInfo | None = None
    ) -> list[Outbound]:
        """Join the chord ``ref`` refers to as ``member_id``; the messages if that fired it.

        ``ref`` is a chord id, or for what a member added to its chord, the member's slot
        (:mod:`aqueue.workflows.additions`): then the member joins once its slot is done.
        """
        backend = await self.app.result_backend()
        chord_id, owner = additions.parse_ref(ref)
        if owner is not None and not failed:
            if not await additions.slot_done(backend, chord_id, owner):
                return []
            member_id = owner
        meta = await self._meta(chord_id)
        if meta is None:
            log.error(
                "chord %s: its meta record is gone (expired?); member %s ignored",
                chord_id,
                member_id,
            )
            return []
        if owner is None and not failed and meta.additions:
            # a member that added tasks to the chord counts once they are done too
            added = await backend.get(additions.adds_key(chord_id, member_id))
            if added is not None and not await additions.slot_done(backend, chord_id, member_id):
                return []
        if not await backend.chord_join(
            chord_id, member_id, len(meta.member_ids), failed=failed, ttl=_chord_ttl(meta)
        ):
            return []
        if failed:
            assert error is not None
            return await self._fail_chord(meta, error)
        return await self._fire(meta, member_id)

    async def _fire(self, meta: ChordMeta, fired_by: str | None) -> list[Outbound]:
        """The body's messages, with the members' values in order (nested as their shapes)."""
        backend = await self.app.result_backend()
        # the meta read again in the same call: a member may have added since it was read
        *records, fresh = await backend.get_many([*meta.member_ids, _CHORD_META + meta.id])
        values: dict[str, Any] = {}
        for member_id, raw in zip(meta.member_ids, records, strict=True):
            record = decode_result(raw) if raw is not None else None
            if record is None or record.state != states.SUCCESS:
                state = record.state if record else "missing"
                return await self._fail_chord(meta, _member_error(meta.id, member_id, state))
            values[member_id] = (
                None if len(record.value) == 0 else decode(record.value, Any, format_of(raw or b""))
            )
        shapes: list[Shape] = meta.shape if meta.shape is not None else list(meta.member_ids)
        header = _nest(shapes, values)
        if fresh is not None and decode(fresh, ChordMeta, format_of(fresh)).additions:
            # members added tasks (self.add_to_chord()): their values follow
            try:
                header += await additions.added_values(backend, meta.id, meta.member_ids)
            except additions.NotDone as exc:
                return await self._fail_chord(meta, _member_error(meta.id, exc.task_id, exc.state))
        return await self.build(
            meta.body,
            prepend=(header,),
            rest=meta.rest,
            chord=meta.parent_chord,
            parent_id=fired_by or meta.id,
            root_id=meta.root_id,
        )

    async def _fail_chord(self, meta: ChordMeta, error: ErrorInfo) -> list[Outbound]:
        """Fail the body and everything after it; call the errbacks of what would have run."""
        await self._fail((meta.body, *meta.rest), error, meta.root_id)
        out: list[Outbound] = []
        for owner, errback in _errbacks_of(meta.body):
            out += await self._errback(errback, owner, error, meta.root_id)
        out += await self._replaced_errbacks(meta.rest, error, meta.root_id)
        if meta.parent_chord is not None:
            member = next(iter(leaves(shape(meta.body))), meta.id)
            out += await self._join(meta.parent_chord, member, failed=True, error=error)
        return out

    async def _fail(self, nodes: tuple[Node, ...], error: ErrorInfo, root_id: str | None) -> None:
        """Store FAILURE for every task of ``nodes``, which will never run.

        Fenced, so a real run still wins: written as attempt 0, except for a replaced task
        (it ran, as its own attempt, and its replacement failed).
        """
        if not nodes:
            return
        backend = await self.app.result_backend()
        now = time.time()
        for node in nodes:
            attempt = node.attempt if isinstance(node, ReplacedNode) else 0
            for tid in all_ids(node):
                record = ResultOut(
                    id=tid,
                    state=states.FAILURE,
                    error=error,
                    date_done=now,
                    attempt=attempt,
                    root_id=root_id,
                )
                await backend.store(
                    tid,
                    encode(record, self._fmt),
                    state=states.FAILURE,
                    attempt=attempt,
                    ttl=self.app.conf.result_expires,
                )

    async def _replaced_errbacks(
        self, nodes: tuple[Node, ...], error: ErrorInfo, root_id: str | None
    ) -> list[Outbound]:
        """The errbacks of the replaced tasks among ``nodes`` (they failed with ``error``)."""
        out: list[Outbound] = []
        for node in nodes:
            if isinstance(node, ReplacedNode):
                for errback in node.link_error:
                    out += await self._errback(errback, node.id, error, root_id)
        return out

    async def _meta(self, chord_id: str) -> ChordMeta | None:
        backend = await self.app.result_backend()
        raw = await backend.get(_CHORD_META + chord_id)
        if raw is None:
            return None
        meta: ChordMeta = decode(raw, ChordMeta, format_of(raw))
        return meta

    async def deadline(self, chord_id: str) -> None:
        """The chord's deadline passed: fail it if unfinished, or finish firing it."""
        meta = await self._meta(chord_id)
        if meta is None:
            return
        backend = await self.app.result_backend()
        timeout = ErrorInfo(
            type="ChordTimeout",
            reason="chord_timeout",
            message=(f"chord {chord_id}: not every member finished by its deadline"),
        )
        if await backend.chord_join(
            chord_id, _DEADLINE_MEMBER, len(meta.member_ids) + 1, failed=True, ttl=3600.0
        ):
            records = await backend.get_many(list(meta.member_ids))
            missing = [
                m
                for m, r in zip(meta.member_ids, records, strict=True)
                if r is None or decode_result(r).state not in states.READY_STATES
            ]
            log.error(
                "chord %s timed out; unfinished members: %s",
                chord_id,
                ", ".join(missing[:10]) or "none",
            )
            await self.publish(await self._fail_chord(meta, timeout))
            return
        # already fired: if the body never started (its firing worker died), publish it again
        body_ids = all_ids(meta.body)
        if body_ids and await backend.get(body_ids[0]) is None:
            log.warning("chord %s fired but its body has no record; publishing it again", chord_id)
            await self.publish(await self._fire(meta, None))


def _nest(shapes: list[Shape], values: dict[str, Any]) -> list[Any]:
    """The members' values, nested as their shapes are."""
    return [values[s] if isinstance(s, str) else _nest(s, values) for s in shapes]


def _upstream(task_id: str, error: ErrorInfo) -> ErrorInfo:
    """What nodes after a failed task fail with: its error, saying where it came from."""
    if error.reason == "upstream":
        return error  # already names the task that failed first
    return ErrorInfo(
        type=error.type,
        message=f"upstream task {task_id} failed: {error.message}",
        traceback=error.traceback,
        reason="upstream",
    )


def _chord_ttl(meta: ChordMeta) -> float:
    """How long a chord's join set (and what was added to it) must live: past its deadline."""
    return max((meta.deadline or time.time()) - time.time() + 3600.0, 60.0)


def _member_error(chord_id: str, task_id: str, state: str) -> ErrorInfo:
    return ErrorInfo(
        type="ChordError",
        reason="chord_member",
        message=f"chord {chord_id}: member {task_id} is {state}",
    )


def _errbacks_of(node: Node) -> list[tuple[str, Node]]:
    """The errbacks to call when ``node`` will never run, with the task id each belongs to.

    Those of what would have run first: a task's own, a chain's first step's, each member's
    of a group, a chord's body's (a chord's errbacks are its body's, as in Celery).
    """
    if isinstance(node, TaskNode | ReplacedNode):
        return [(node.id, errback) for errback in node.link_error]
    if isinstance(node, ChainNode):
        return _errbacks_of(node.steps[0])
    if isinstance(node, GroupNode):
        return [pair for m in node.members for pair in _errbacks_of(m)]
    return _errbacks_of(node.body)
