"""Workflow nodes as they travel inside messages (wire format v1, see docs/protocol.md).

A message carries what happens after it: ``chain`` (the remaining steps), ``link`` /
``link_error`` (callbacks) and ``chord`` (the id of the chord it is a member of). Nodes are
plain data, tagged by ``type``; task ids are assigned when a workflow is applied, so every
node's result can be looked up (and failed) before it runs.
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


class ChordNode(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="chord"):
    """A group whose results, in order, are passed to ``body`` once all have finished."""

    id: str
    header: tuple[Node, ...]
    body: Node
    #: seconds after which a chord with unfinished members fails (``None``: the app default)
    timeout: float | None = None


Node = TaskNode | ChainNode | GroupNode | ChordNode


class ChordMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a chord's members and deadline need, stored once in the result backend."""

    id: str
    member_ids: tuple[str, ...]
    body: Node
    #: steps after the body (the chord was followed by more in a chain)
    rest: tuple[Node, ...] = ()
    #: the enclosing chord, when this chord is itself a member of one
    parent_chord: str | None = None
    deadline: float | None = None


def final_ids(node: Node) -> list[str]:
    """Ids whose results are the node's result (a group: each member's final id)."""
    if isinstance(node, TaskNode):
        return [node.id]
    if isinstance(node, ChainNode):
        return final_ids(node.steps[-1])
    if isinstance(node, GroupNode):
        return [i for m in node.members for i in final_ids(m)]
    return final_ids(node.body)


def all_ids(node: Node) -> list[str]:
    """Every task id inside ``node`` (to fail them all when an upstream step fails)."""
    if isinstance(node, TaskNode):
        return [node.id]
    if isinstance(node, ChainNode):
        return [i for s in node.steps for i in all_ids(s)]
    if isinstance(node, GroupNode):
        return [i for m in node.members for i in all_ids(m)]
    return [i for m in node.header for i in all_ids(m)] + all_ids(node.body)
