"""Where a prefix's keys live: the hash tag of each family of keys, and the task records.

Every key starts with the prefix; each family has a hash tag of its own (the part Redis
Cluster hashes), so the broker's and the backend's keys never overlap even when they share
a prefix and a database (docs/brokers/redis.md, "Key layout"). The task records are the one
layout both roles read: the backend stores them, and a broker bound to it
(:class:`~aqueue.core.protocols.ClaimsRecords`) reads them in its claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

__all__ = ["RECORD_FIELD", "KeySpace", "RecordKeys", "StoresRecords"]

#: the field of a task's record hash that holds the record bytes
RECORD_FIELD: Final = "r"


@dataclass(frozen=True, slots=True)
class RecordKeys:
    """Where task records are: hash ``head + task_id + tail`` on ``server``, field ``r``."""

    #: the server and database (the URL handed to redis-py: may hold a password, never shown)
    server: str = field(repr=False)
    head: str
    tail: str


@runtime_checkable
class StoresRecords(Protocol):
    """A result backend whose task records a Redis broker can read in its claims."""

    @property
    def record_keys(self) -> RecordKeys:
        """Where it stores task records."""


class KeySpace:
    """The key names under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def queue(self, queue: str) -> str:
        """What the keys of ``queue`` start with (hash tag ``{q:<queue>}``)."""
        return f"{self.prefix}:{{q:{queue}}}:"

    @property
    def dead_queues(self) -> str:
        """The set of the queues that have dead letters."""
        return f"{self.prefix}:dead-queues"

    def records(self, server: str) -> RecordKeys:
        """Task records (hash tag ``{t:<task id>}``), on ``server``."""
        return RecordKeys(server, f"{self.prefix}:{{t:", "}:result")

    def chord(self, chord_id: str) -> str:
        """What the keys of a chord's completion start with (hash tag ``{c:<chord id>}``)."""
        return f"{self.prefix}:{{c:{chord_id}}}:"

    def throttle(self, key: str) -> str:
        """What the keys of a shared limit start with (hash tag ``{throttle:<key>}``)."""
        return f"{self.prefix}:{{throttle:{key}}}:"

    def beat(self, app: str) -> str:
        """What the keys of an app's periodic-task schedules start with (hash tag
        ``{beat:<app>}``: entries, their state and the leader lease, one Lua call apart)."""
        return f"{self.prefix}:{{beat:{app}}}:"

    @property
    def workers(self) -> str:
        """What the worker registry's keys start with (hash tag ``{workers}``): ``seen``
        (a sorted set of worker ids by last heartbeat) and ``w:<id>`` (one hash each)."""
        return f"{self.prefix}:{{workers}}:"

    def topic(self, name: str) -> str:
        """The stream of topic ``name`` (hash tag ``{topic:<name>}``: each topic is one key,
        so it may live on any node of a cluster)."""
        return f"{self.prefix}:{{topic:{name}}}"

    @property
    def reply_channels(self) -> str:
        """What the reply channel of every process that watches results starts with."""
        return f"{self.prefix}:reply:"
