"""Applying a canvas: freeze it, publish its first messages in one call, return its results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.message import ResultOut, decode_result
from ..core.nodes import ChainNode, GroupNode, Node, TaskNode, all_ids
from ..core.result import AsyncResult, GroupResult
from ..core.sending import with_reply_headers
from ..core.serialization import check_serializer, decode, encode, format_of

if TYPE_CHECKING:
    from ..core.app import App
    from ..core.canvas import Canvas, Group
    from .engine import Engine

_WORKFLOW = "workflow:"


async def apply(app: App, engine: Engine, canvas: Canvas[Any]) -> AsyncResult[Any]:
    """Apply any canvas; the result of its last step, with ``parent`` links to the others."""
    node = canvas.freeze()
    result = await _start(app, engine, node)
    if isinstance(result, GroupResult):
        raise TypeError("a canvas ending with a group returns a GroupResult: use group(...)")
    return result


async def apply_group(app: App, engine: Engine, group: Group[Any]) -> GroupResult[Any]:
    """Apply a group; its GroupResult."""
    result = await _start(app, engine, group.freeze())
    assert isinstance(result, GroupResult)
    return result


async def _start(app: App, engine: Engine, node: Node) -> AsyncResult[Any] | GroupResult[Any]:
    ids = all_ids(node)
    if not ids:  # an empty group: nothing to send
        return result_tree(app, node)
    root_id = ids[0]
    if not isinstance(node, TaskNode):  # index every node so the workflow can be inspected
        backend = await app.result_backend()
        record = ResultOut(id=root_id, state="META", value=ids)
        await backend.store(
            _WORKFLOW + root_id,
            encode(record, check_serializer(app.conf.task_serializer)),
            state="META",
            attempt=0,
            ttl=app.conf.result_expires,
        )
    outbound = await engine.build(node, root_id=root_id)
    await engine.publish([(with_reply_headers(app, m), fmt) for m, fmt in outbound])
    result = result_tree(app, node)
    if isinstance(result, AsyncResult):
        result.workflow_ids = ids
    return result


def result_tree(app: App, node: Node) -> AsyncResult[Any] | GroupResult[Any]:
    """The result handle of ``node``: the last step's, linked to earlier ones via ``parent``."""
    if isinstance(node, TaskNode):
        task = app.tasks.get(node.task)
        if task is not None:
            return task.AsyncResult(node.id)
        return app.AsyncResult(node.id)
    if isinstance(node, ChainNode):
        previous: AsyncResult[Any] | GroupResult[Any] | None = None
        for step in node.steps:
            current = result_tree(app, step)
            _root(current).parent = previous
            if isinstance(previous, AsyncResult):
                previous.children = [current]
            previous = current
        assert previous is not None
        return previous
    if isinstance(node, GroupNode):
        members = [result_tree(app, m) for m in node.members]
        return GroupResult(app, node.id, [m for m in members if isinstance(m, AsyncResult)])
    header = GroupResult(
        app,
        node.id,
        [r for r in (result_tree(app, m) for m in node.header) if isinstance(r, AsyncResult)],
    )
    body = result_tree(app, node.body)
    _root(body).parent = header
    return body


def _root(result: AsyncResult[Any] | GroupResult[Any]) -> AsyncResult[Any] | GroupResult[Any]:
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
