"""Applying a canvas: publish its first messages in one call, return its result tree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core.context import current_request, record_child
from ..core.message import ResultOut, decode_result
from ..core.nodes import ChainNode, GroupNode, Node, ReplacedNode, TaskNode, all_ids, chord_members
from ..core.result import AsyncResult, GroupResult
from ..core.sending import with_reply_headers
from ..core.serialization import check_serializer, decode, encode, format_of

if TYPE_CHECKING:
    from ..core.app import App
    from .engine import Engine

_WORKFLOW = "workflow:"

Handle = AsyncResult[Any] | GroupResult[Any]


async def apply(
    app: App,
    engine: Engine,
    node: Node,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None,
) -> Handle:
    """Apply ``node``; the handle of its result, with ``parent`` links to the earlier steps.

    Applied from inside a task, the workflow is that task's child (``parent_id``) in its
    workflow (``root_id``), as in Celery.
    """
    handle = result_tree(app, node)
    ids = all_ids(node)
    if not ids:  # an empty group: nothing to send
        return handle
    sender = current_request()
    root_id = sender.root_id if sender is not None else ids[0]
    parent_id = sender.id if sender is not None else None
    if not isinstance(node, TaskNode):  # index every node so the workflow can be inspected
        await index(app, ids)
    outbound = await engine.build(
        node, prepend=args, kwargs=kwargs, parent_id=parent_id, root_id=root_id
    )
    await app.connected_broker()  # connects the backend too, which may route results
    await engine.publish([(with_reply_headers(app, m), fmt) for m, fmt in outbound])
    handle.workflow_ids = ids
    _note_queues(handle, {m.id: m.queue for m, _ in outbound})
    record_child(sender, handle)
    return handle


def _note_queues(handle: Handle | None, queues: Mapping[str, str]) -> None:
    """Tell the handles of the tasks sent now their queue (a wait that times out names it)."""
    while handle is not None:
        if isinstance(handle, GroupResult):
            for member in handle.results:
                _note_queues(member, queues)
        elif handle.id in queues:
            handle.queue = queues[handle.id]
        handle = handle.parent


async def index(app: App, ids: list[str]) -> None:
    """Store the ids of a workflow's nodes under its first id (``app.workflow_states``).

    Raises:
        ConfigurationError: the result backend cannot hold workflow state (``rpc://``).
    """
    backend = await app.result_backend()
    record = ResultOut(id=ids[0], state="META", value=ids)
    await backend.store(
        _WORKFLOW + ids[0],
        encode(record, check_serializer(app.conf.task_serializer)),
        state="META",
        attempt=0,
        ttl=app.conf.result_expires,
    )


def result_tree(app: App, node: Node) -> Handle:
    """The handle of ``node``: its last step's, linked to earlier ones via ``parent``.

    A group gives a ``GroupResult`` of its members; a chord its body's handle, whose
    ``parent`` is the header's ``GroupResult`` (id: the chord's).
    """
    if isinstance(node, TaskNode | ReplacedNode):
        task = app.tasks.get(node.task)
        if task is not None:
            return task.AsyncResult(node.id)
        return app.AsyncResult(node.id)
    if isinstance(node, ChainNode):
        previous: Handle | None = None
        for step in node.steps:
            current = result_tree(app, step)
            first = _root(current)
            first.parent = previous
            if isinstance(previous, AsyncResult):  # a group's children are its members
                previous.children = [first]
            previous = current
        assert previous is not None
        return previous
    if isinstance(node, GroupNode):
        return GroupResult(app, node.id, [result_tree(app, m) for m in node.members])
    header: GroupResult[Any] = GroupResult(
        app, node.id, [result_tree(app, m) for m in chord_members(node.header)]
    )
    body = result_tree(app, node.body)
    _root(body).parent = header
    return body


def _root(result: Handle) -> Handle:
    """The earliest result in a parent chain (where the previous step attaches)."""
    while result.parent is not None:
        result = result.parent
    return result


async def workflow_states(app: App, root_id: str) -> dict[str, str]:
    """The state of every node of the workflow started with ``root_id``."""
    backend = await app.result_backend()
    raw = await backend.get(_WORKFLOW + root_id)
    if raw is None:
        return {}
    ids: list[str] = decode(decode_result(raw).value, list[str], format_of(raw))
    records = await backend.get_many(ids)
    return {
        i: decode_result(r).state if r is not None else "PENDING"
        for i, r in zip(ids, records, strict=True)
    }
