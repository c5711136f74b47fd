"""Workflow nodes as they travel inside messages (wire format v1, see docs/protocol.md).

A message carries what happens after it: ``chain`` (the remaining steps), ``link`` /
``link_error`` (callbacks) and ``chord`` (the id of the chord it is a member of). Nodes are
plain data, tagged by ``type``; task ids are assigned when a workflow is applied, so every
node's result can be looked up (and failed) before it runs.

The value of a node, and so what a chord member contributes to its chord, has a *shape*
(:func:`shape`): a task id (that task's result), or a list of shapes (a group's results, in
order). A chord reads the results of the ids in its members' shapes and nests them the same
way, so a chain ending in a group gives its chord one list, without a task to collect it.
"""

from __future__ import annotations

from typing import Any

import msgspec


class TaskNode(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="task"):
    """One task call: the data of a signature with its id assigned."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    #: call options (queue, priority, countdown, ...)
    options: dict[str, Any] = {}
    #: when set, the parent's result is not prepended to ``args``
    immutable: bool = False
    link: tuple[Node, ...] = ()
    link_error: tuple[Node, ...] = ()


class ChainNode(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="chain"):
    """Steps run one after another, each given the previous one's result."""

    steps: tuple[Node, ...]


class GroupNode(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="group"):
    """Members run in parallel."""

    id: str
    members: tuple[Node, ...]
    #: callbacks applied once, with the list of results, when every member succeeded
    link: tuple[Node, ...] = ()


class ChordNode(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="chord"):
    """A group whose results, in order, are passed to ``body`` once all have finished."""

    id: str
    header: tuple[Node, ...]
    body: Node
    #: seconds after which a chord with unfinished members fails (``None``: the app default)
    timeout: float | None = None


class ReplacedNode(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="replaced"):
    """The end of a task's replacement (``self.replace()``): not a task to run.

    The worker that reaches it stores the value it is given as task ``id``'s result, then
    continues where that task would have: its ``link`` callbacks; what followed it in its
    chain and its chord travel on as the steps after this node and the chord of the
    messages that lead here. If the replacement fails, task ``id`` fails with its error
    and its ``link_error`` callbacks are called with ``(id, error)``.
    """

    id: str
    task: str
    #: the replaced task's attempt (its result record is written as that attempt's)
    attempt: int = 1
    link: tuple[Node, ...] = ()
    link_error: tuple[Node, ...] = ()


Node = TaskNode | ChainNode | GroupNode | ChordNode | ReplacedNode

#: a node's value: a task id, or a list of shapes (see the module docstring)
Shape = str | list[Any]


class ChordMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a chord's members and deadline need, stored once in the result backend."""

    id: str
    #: every task id whose result the chord waits for (the leaves of ``shape``)
    member_ids: tuple[str, ...]
    body: Node
    #: each member's shape, when some member is not a single task (else ``member_ids``)
    shape: list[Any] | None = None
    #: steps after the body (the chord was followed by more in a chain)
    rest: tuple[Node, ...] = ()
    #: the enclosing chord, when this chord is itself a member of one
    parent_chord: str | None = None
    deadline: float | None = None
    #: the workflow's root task id (the body's ``root_id``)
    root_id: str | None = None
    #: a member added tasks to the chord (``self.add_to_chord()``); stored as attempt 1, so
    #: the chord being built again (a redelivered step before it) cannot clear it
    additions: bool = False


def chord_members(header: tuple[Node, ...]) -> list[Node]:
    """A chord header's members: groups in it join member by member (Celery unrolls them)."""
    out: list[Node] = []
    for m in header:
        if isinstance(m, GroupNode) and not m.link:
            out += chord_members(m.members)
        else:
            out.append(m)
    return out


def shape(node: Node) -> Shape:
    """Where ``node``'s value comes from when it completes a chord member (module docstring).

    A group with callbacks is joined by a collecting task that has the group's id.
    """
    if isinstance(node, TaskNode | ReplacedNode):
        return node.id
    if isinstance(node, ChainNode):
        return shape(node.steps[-1])
    if isinstance(node, GroupNode):
        return node.id if node.link else [shape(m) for m in node.members]
    return shape(node.body)


def leaves(value: Shape) -> list[str]:
    """The task ids of a shape, in order."""
    if isinstance(value, str):
        return [value]
    return [i for item in value for i in leaves(item)]


def final_ids(node: Node) -> list[str]:
    """Ids whose results are the node's result (a group: each member's final id)."""
    return leaves(shape(node))


def all_ids(node: Node) -> list[str]:
    """Every task id inside ``node`` (to fail them all when an upstream step fails)."""
    if isinstance(node, TaskNode | ReplacedNode):
        return [node.id]
    if isinstance(node, ChainNode):
        return [i for s in node.steps for i in all_ids(s)]
    if isinstance(node, GroupNode):
        members = [i for m in node.members for i in all_ids(m)]
        return [*members, node.id] if node.link else members
    return [i for m in node.header for i in all_ids(m)] + all_ids(node.body)
