"""Running workflows: turning nodes into messages, and what a worker does when a step ends.

Producer side, :meth:`Engine.build` turns a node into the messages to publish now (a chain:
its first step, carrying the rest; a group: one message per member; a chord: its members,
its meta record and its deadline message).

Worker side, after a task stored its result and before its message is acked:

* success: apply ``link`` callbacks with the result; start the next ``chain`` step with the
  result prepended, or, at the end of a chain inside a chord, join the chord;
* failure (or refusal, revocation, expiry): apply ``link_error`` callbacks with
  ``(task_id, error)``, fail every node still ahead in the chain, and fail the chord.

A chord fires exactly once: members join an idempotent set in the backend and
``chord_join`` answers ``True`` to exactly one caller. Its deadline message (a task due at
the chord's timeout) fails a chord whose member never finished, or re-publishes the body if
the worker that fired it died before publishing (the body's id is fixed, so a body already
queued is not queued twice).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..core import states
from ..core.bulk import encode_batch
from ..core.message import ErrorInfo, MessageIn, MessageOut, ResultOut, decode_result
from ..core.nodes import ChainNode, ChordMeta, ChordNode, GroupNode, Node, TaskNode, all_ids
from ..core.options import node_message
from ..core.serialization import SerializerName, check_serializer, decode, encode, format_of
from . import apply, builtins

if TYPE_CHECKING:
    from ..core.app import App
    from ..core.canvas import Canvas, Group
    from ..core.result import AsyncResult, GroupResult

#: a message to publish, with its serializer
Outbound = tuple[MessageOut, SerializerName]

log = logging.getLogger("aqueue.workflows")

CHORD_DEADLINE_TASK = builtins.CHORD_DEADLINE_TASK
_CHORD_META = "chord-meta:"
_DEADLINE_MEMBER = "__deadline__"
_NOTHING: tuple[Any, ...] = ()


class Engine:
    """The workflow engine of one app (:class:`aqueue.core.protocols.Workflows`).

    Creating it registers the workflow tasks (chord deadline, map, starmap) on the app.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        builtins.register(app, self)

    # -- applying (aqueue.core.protocols.Workflows) -------------------------------------

    async def apply(self, canvas: Canvas[Any]) -> AsyncResult[Any]:
        """Apply a chain or chord; its last step's result."""
        return await apply.apply(self.app, self, canvas)

    async def apply_group(self, group: Group[Any]) -> GroupResult[Any]:
        """Apply a group; its members' results."""
        return await apply.apply_group(self.app, self, group)

    async def states(self, root_id: str) -> dict[str, str]:
        """The state of every node of the workflow started with ``root_id``."""
        return await apply.workflow_states(self.app, root_id)

    @property
    def _fmt(self) -> SerializerName:
        return check_serializer(self.app.conf.task_serializer)

    # -- building messages --------------------------------------------------------------

    async def build(
        self,
        node: Node,
        *,
        prepend: tuple[Any, ...] = _NOTHING,
        rest: tuple[Node, ...] = (),
        chord: str | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
    ) -> list[Outbound]:
        """Messages that start ``node``; stores chord metas on the way."""
        if isinstance(node, TaskNode):
            task = self.app.tasks.get(node.task)
            return [
                node_message(
                    self.app.conf,
                    node,
                    task,
                    prepend=prepend,
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
                rest=(*more, *rest),
                chord=chord,
                parent_id=parent_id,
                root_id=root_id,
            )
        if isinstance(node, GroupNode):
            if rest:  # a group followed by more steps is a chord with the next step as body
                body, *after = rest
                as_chord = ChordNode(id=node.id, header=node.members, body=body)
                return await self.build(
                    as_chord,
                    prepend=prepend,
                    rest=tuple(after),
                    chord=chord,
                    parent_id=parent_id,
                    root_id=root_id,
                )
            out: list[Outbound] = []
            for member in node.members:
                out += await self.build(
                    member, prepend=prepend, chord=chord, parent_id=parent_id, root_id=root_id
                )
            return out
        return await self._build_chord(node, prepend, rest, chord, parent_id, root_id)

    async def _build_chord(
        self,
        node: ChordNode,
        prepend: tuple[Any, ...],
        rest: tuple[Node, ...],
        parent_chord: str | None,
        parent_id: str | None,
        root_id: str | None,
    ) -> list[Outbound]:
        header = _flatten(node.header)
        timeout = node.timeout if node.timeout is not None else self.app.conf.chord_timeout
        deadline = time.time() + timeout
        meta = ChordMeta(
            id=node.id,
            member_ids=tuple(_final_id(m) for m in header),
            body=node.body,
            rest=rest,
            parent_chord=parent_chord,
            deadline=deadline,
        )
        backend = await self.app.result_backend()
        ttl = max(self.app.conf.result_expires or 0.0, timeout + 3600.0)
        await backend.store(
            _CHORD_META + node.id, encode(meta, self._fmt), state="META", attempt=0, ttl=ttl
        )
        out: list[Outbound] = []
        if not header:  # an empty header fires at once with []
            return await self.build(
                node.body,
                prepend=([],),
                rest=rest,
                chord=parent_chord,
                parent_id=parent_id,
                root_id=root_id,
            )
        for member in header:
            out += await self.build(
                member, prepend=prepend, chord=node.id, parent_id=parent_id, root_id=root_id
            )
        deadline_message = MessageOut(
            id=f"{node.id}.deadline",
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
        batch = encode_batch(
            [m for m, _ in outbound], [f for _, f in outbound], self.app.conf.max_message_bytes
        )
        broker = await self.app.connected_broker()
        await broker.publish(batch)

    # -- continuations (worker side) ----------------------------------------------------

    async def on_success(self, msg: MessageIn, value: Any) -> None:
        """Start what follows a successful task."""
        out: list[Outbound] = []
        for node in msg.link:
            out += await self.build(node, prepend=(value,), parent_id=msg.id, root_id=msg.root_id)
        if msg.chain:
            first, *rest = msg.chain
            out += await self.build(
                first,
                prepend=(value,),
                rest=tuple(rest),
                chord=msg.chord,
                parent_id=msg.id,
                root_id=msg.root_id,
            )
        elif msg.chord is not None:
            out += await self._join(msg.chord, msg.id, failed=False)
        await self.publish(out)

    async def on_failure(self, msg: MessageIn, error: ErrorInfo) -> None:
        """Call errbacks, fail every node ahead in the chain, fail the chord."""
        out: list[Outbound] = []
        for node in msg.link_error:
            out += await self.build(
                node, prepend=(msg.id, error), parent_id=msg.id, root_id=msg.root_id
            )
        upstream = ErrorInfo(
            type=error.type,
            message=f"upstream task {msg.id} failed: {error.message}",
            traceback=error.traceback,
            reason="upstream",
        )
        doomed = [i for node in msg.chain for i in all_ids(node)]
        await self._fail(doomed, upstream, msg.root_id)
        if msg.chord is not None:
            out += await self._join(msg.chord, msg.id, failed=True, error=upstream)
        await self.publish(out)

    async def _join(
        self, chord_id: str, member_id: str, *, failed: bool, error: ErrorInfo | None = None
    ) -> list[Outbound]:
        backend = await self.app.result_backend()
        meta = await self._meta(chord_id)
        if meta is None:
            log.error(
                "chord %s: its meta record is gone (expired?); member %s ignored",
                chord_id,
                member_id,
            )
            return []
        ttl = max((meta.deadline or time.time()) - time.time() + 3600.0, 60.0)
        if not await backend.chord_join(
            chord_id, member_id, len(meta.member_ids), failed=failed, ttl=ttl
        ):
            return []
        if failed:
            assert error is not None
            return await self._fail_chord(meta, error)
        return await self._fire(meta)

    async def _fire(self, meta: ChordMeta) -> list[Outbound]:
        """The body's messages, with the members' results in order."""
        backend = await self.app.result_backend()
        records = await backend.get_many(list(meta.member_ids))
        values: list[Any] = []
        for member_id, raw in zip(meta.member_ids, records, strict=True):
            record = decode_result(raw) if raw is not None else None
            if record is None or record.state != states.SUCCESS:
                state = record.state if record else "missing"
                return await self._fail_chord(
                    meta,
                    ErrorInfo(
                        type="ChordError",
                        reason="chord_member",
                        message=f"chord {meta.id}: member {member_id} is {state}",
                    ),
                )
            values.append(
                None if len(record.value) == 0 else decode(record.value, Any, format_of(raw or b""))
            )
        return await self.build(
            meta.body, prepend=(values,), rest=meta.rest, chord=meta.parent_chord, parent_id=meta.id
        )

    async def _fail_chord(self, meta: ChordMeta, error: ErrorInfo) -> list[Outbound]:
        """Fail the body and everything after it; call the body's errbacks."""
        doomed = all_ids(meta.body) + [i for n in meta.rest for i in all_ids(n)]
        await self._fail(doomed, error, None)
        out: list[Outbound] = []
        body = meta.body
        if isinstance(body, TaskNode):
            for node in body.link_error:
                out += await self.build(node, prepend=(body.id, error), parent_id=body.id)
        if meta.parent_chord is not None:
            out += await self._join(
                meta.parent_chord, _final_id(meta.body), failed=True, error=error
            )
        return out

    async def _fail(self, task_ids: list[str], error: ErrorInfo, root_id: str | None) -> None:
        """Store FAILURE for nodes that will never run (fenced: a real run still wins)."""
        if not task_ids:
            return
        backend = await self.app.result_backend()
        now = time.time()
        for tid in task_ids:
            record = ResultOut(
                id=tid, state=states.FAILURE, error=error, date_done=now, root_id=root_id
            )
            await backend.store(
                tid,
                encode(record, self._fmt),
                state=states.FAILURE,
                attempt=0,
                ttl=self.app.conf.result_expires,
            )

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
        first = all_ids(meta.body)[0]
        if await backend.get(first) is None:
            log.warning("chord %s fired but its body has no record; publishing it again", chord_id)
            await self.publish(await self._fire(meta))


def _flatten(members: tuple[Node, ...]) -> list[Node]:
    """Groups nested in a chord header join it member by member."""
    out: list[Node] = []
    for m in members:
        out += _flatten(m.members) if isinstance(m, GroupNode) else [m]
    return out


def _final_id(node: Node) -> str:
    """The id whose completion completes ``node`` as a chord member."""
    if isinstance(node, TaskNode):
        return node.id
    if isinstance(node, ChainNode):
        return _final_id(node.steps[-1])
    if isinstance(node, ChordNode):
        return _final_id(node.body)  # an inner chord is done when its body's last step is
    raise ValueError("a group cannot be the last step of a chord member; use a chord")
