"""The Redis broker's Lua scripts (``lua/*.lua``) and the Python side of their layouts: the
keys each takes, the arguments it packs and the replies it returns, all by name.

Every script touches the keys of one queue only, all sharing the queue's hash tag, and takes
every key it touches in ``KEYS`` so it can run unchanged on Redis Cluster. The one
exception is ``CLAIM``, which accepts the key groups of several queues so a worker polling
``["hi", "default"]`` pays one round trip; on a cluster it would be called once per queue.

Cost model: the server spends about a microsecond per ``redis.call``, so the scripts work
on whole batches (``HMGET``/``HSET``/``ZADD``/``ZREM`` with many members) rather than one
call per message, and per-message calls are left to the rare paths (hand-back, dead
letter). Batches are capped by the callers at 1000 messages, well under Lua's limit of
about 8000 values for ``unpack``.

Time is the Redis server's (``TIME``), never the caller's: lease deadlines and due times are
compared on one clock however skewed the workers' clocks are. Producers pass an ETA as a
delay relative to their own clock, which the script anchors to server time.

Scores are formatted with ``%.17g`` / ``%d`` because Lua's default number-to-string
conversion keeps only 14 significant digits. Needs Redis >= 6.2 (``ZMSCORE``).
"""

from __future__ import annotations

import enum
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any, Final, NamedTuple

from aqueue.core.protocols import DEAD_LETTER_BODY_LIMIT, DeadLetter, Outgoing
from aqueue.transports.redis.keys import RECORD_FIELD
from aqueue.transports.redis.scripts import HELPERS, Script, ScriptCall, lua_source, pack_fields

#: priority weight in the ready score: score = seq - priority * 2^42. With priorities
#: clamped to +-1000 and a per-queue sequence below 2^42, scores stay exact doubles (< 2^53).
PRIORITY_WEIGHT: Final = 2**42
MAX_PRIORITY: Final = 1000
#: most messages one script call handles (claim limit, publish chunk, settle batch)
MAX_BATCH: Final = 1000
#: messages per PUBLISH call; a bigger batch becomes several calls in one pipeline, so no
#: single script blocks the server for long
PUBLISH_CHUNK: Final = 500


class QueueKeys:
    """The keys of one queue by name, and the keys each script takes, in its ``KEYS`` order.

    Args:
        base: what every key of the queue starts with (``KeySpace.queue``).
    """

    __slots__ = (
        "body",
        "claim",
        "count",
        "dead",
        "dedupe",
        "delayed",
        "epoch",
        "inflight",
        "notify",
        "publish",
        "purge",
        "ready",
        "renew",
        "replay",
        "score",
        "seq",
        "settle",
        "size",
    )

    def __init__(self, base: str) -> None:
        #: ids that can be claimed now, scored by priority then FIFO sequence
        self.ready = base + "ready"
        #: ids with an ETA, scored by due time
        self.delayed = base + "delayed"
        #: claimed ids, scored by lease deadline
        self.inflight = base + "inflight"
        #: id -> message bytes
        self.body = base + "body"
        #: id -> its ready score, so a message handed back keeps its place
        self.score = base + "score"
        #: id -> delivery count
        self.count = base + "count"
        #: id -> fencing token
        self.epoch = base + "epoch"
        #: at most one wake-up token for idle claimers
        self.notify = base + "notify"
        #: dead letters, newest first
        self.dead = base + "dead"
        #: FIFO sequence counter
        self.seq = base + "seq"
        #: recently enqueued ids, scored by when they may be enqueued again
        self.dedupe = base + "dedupe"
        self.claim: tuple[str, ...] = (
            self.ready,
            self.delayed,
            self.inflight,
            self.body,
            self.score,
            self.count,
            self.epoch,
            self.notify,
        )
        self.settle: tuple[str, ...] = (*self.claim, self.dead)
        self.publish: tuple[str, ...] = (
            self.ready,
            self.delayed,
            self.body,
            self.score,
            self.notify,
            self.seq,
            self.dedupe,
        )
        self.renew: tuple[str, ...] = (self.ready, self.inflight, self.epoch)
        self.replay: tuple[str, ...] = (
            self.dead,
            self.ready,
            self.body,
            self.score,
            self.notify,
            self.seq,
            self.dedupe,
        )
        self.size: tuple[str, ...] = (self.ready, self.delayed, self.inflight)
        self.purge: tuple[str, ...] = (
            self.ready,
            self.delayed,
            self.body,
            self.score,
            self.count,
            self.epoch,
            self.dedupe,
        )


#: keys per queue in a CLAIM call (the script's stride over ``KEYS``)
KEYS_PER_QUEUE: Final = len(QueueKeys("").claim)


class SettleOp(enum.StrEnum):
    """What a settlement does (its letter is what the SETTLE script reads)."""

    ACK = "A"
    RELEASE = "R"
    REQUEUE = "Q"
    DEAD_LETTER = "D"


class Claimed(NamedTuple):
    """One claimed message in CLAIM's reply, in the script's field order."""

    #: index of its queue in the claim's queue list
    queue_index: int
    id: bytes
    body: bytes
    delivery_count: int
    #: the fencing token (the message's epoch)
    token: int
    #: the task's stored result record, when a backend is bound (else ``None``)
    record: bytes | None


#: where CLAIM's reply starts listing messages: after wake_ms and the count
_CLAIMED_FROM: Final = 2
_CLAIMED_WIDTH: Final = len(Claimed._fields)


class ClaimReply(NamedTuple):
    """CLAIM's reply: ``{wake_ms, n, then n times the fields of Claimed}``."""

    #: when nothing was claimed, ms until a delayed message is due or a lease expires (-1:
    #: none); 0 otherwise
    wake_ms: int
    claimed: list[Claimed]

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> ClaimReply:
        """The reply as the script returns it, by name."""
        fields = iter(reply[_CLAIMED_FROM:])
        rows = zip(*[fields] * _CLAIMED_WIDTH, strict=True)
        return cls(int(reply[0]), list(map(Claimed._make, rows)))


_LUA = files(__package__) / "lua"
_WAKE_SOURCE = lua_source(_LUA / "wake.lua")

PUBLISH = Script.load(
    _LUA / "publish.lua",
    uses=(HELPERS, _WAKE_SOURCE),
    constants={"PRIORITY_WEIGHT": PRIORITY_WEIGHT},
)
CLAIM = Script.load(
    _LUA / "claim.lua",
    uses=(HELPERS, _WAKE_SOURCE),
    constants={"KEYS_PER_QUEUE": KEYS_PER_QUEUE, "RECORD_FIELD": RECORD_FIELD},
)
SETTLE = Script.load(
    _LUA / "settle.lua",
    uses=(HELPERS, _WAKE_SOURCE),
    constants={
        **{op.name: op.value for op in SettleOp},
        "DEAD_LETTER_BODY_LIMIT": DEAD_LETTER_BODY_LIMIT,
    },
)
RENEW = Script.load(_LUA / "renew.lua", uses=(HELPERS,))
SIZE = Script.load(_LUA / "size.lua")
PURGE = Script.load(_LUA / "purge.lua")
PURGE_DEAD = Script.load(_LUA / "purge_dead.lua")
REPLAY = Script.load(
    _LUA / "replay.lua",
    uses=(HELPERS, _WAKE_SOURCE),
    constants={"PRIORITY_WEIGHT": PRIORITY_WEIGHT},
)
#: hands a wake-up token back to a queue whose wait took it but whose claim never ran (the
#: cluster's claim: one call per queue, each in its own slot)
PASS_ON = Script.load(_LUA / "pass_on.lua", uses=(HELPERS, _WAKE_SOURCE))


def eta_delay(eta: float | None) -> str:
    """An ETA as the scripts take it: a delay from now, which they anchor to server time.

    The delay is taken on the producer's clock, so a producer whose clock is off does not
    shift other queues.
    """
    if eta is None:
        return "0"
    return repr(max(0.0, eta - time.time()))


def publish_calls(
    messages: Sequence[Outgoing],
    queue_keys: Callable[[str], QueueKeys],
    dedupe_ttl: float,
) -> tuple[list[ScriptCall], list[list[int]]]:
    """The PUBLISH calls for ``messages`` (per queue, in chunks), and the indexes of the
    messages each call carries."""
    by_queue: dict[str, list[int]] = defaultdict(list)
    for index, message in enumerate(messages):
        by_queue[message.queue].append(index)
    ttl = repr(float(dedupe_ttl))
    calls: list[ScriptCall] = []
    spans: list[list[int]] = []
    for queue, indexes in by_queue.items():
        keys = queue_keys(queue).publish
        for start in range(0, len(indexes), PUBLISH_CHUNK):
            chunk = indexes[start : start + PUBLISH_CHUNK]
            fields: list[bytes | str] = []
            for i in chunk:
                m = messages[i]
                priority = max(-MAX_PRIORITY, min(MAX_PRIORITY, int(m.priority)))
                fields += (m.id, m.body, str(priority), eta_delay(m.eta))
            calls.append((PUBLISH, keys, [ttl, *pack_fields(fields)]))
            spans.append(chunk)
    return calls, spans


def flags(
    spans: Sequence[Sequence[int]], replies: Sequence[Sequence[int]], count: int
) -> list[bool]:
    """Per item, in the caller's order, whether the script that carried it answered 1.

    ``spans[k]`` are the indexes of the items the k-th call carried (PUBLISH, SETTLE), and
    ``replies[k]`` its reply: a 1 or 0 per item, in the same order.
    """
    out = [False] * count
    for indexes, reply in zip(spans, replies, strict=True):
        for i, flag in zip(indexes, reply, strict=True):
            out[i] = flag == 1
    return out


def parse_dead_letter(queue: str, raw: bytes) -> DeadLetter:
    """A dead-letter list entry as SETTLE writes it:
    ``"2\\n<at>\\n<len(id)>\\n<len(reason)>\\n<size>\\n" + id + reason + body[:limit]``.

    Entries written before bodies were cut (``"<at>\\n<len(id)>\\n<len(reason)>\\n" + id +
    reason + body``, whole) are read too: their first line is a time, never ``2``.
    """
    if raw.startswith(b"2\n"):
        _, at, id_len, reason_len, size, rest = raw.split(b"\n", 5)
    else:
        at, id_len, reason_len, rest = raw.split(b"\n", 3)
        size = b"-1"
    i, r = int(id_len), int(reason_len)
    return DeadLetter(
        id=rest[:i].decode(),
        queue=queue,
        reason=rest[i : i + r].decode(),
        body=rest[i + r :],
        at=float(at),
        size=int(size),
    )
