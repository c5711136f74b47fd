"""The boundaries every broker and result backend implements.

A broker moves opaque message bodies; it never decodes them and never imports the worker.
Settlement lives on the :class:`Delivery` (``await delivery.ack()``). Every broker passes the
shared conformance suite in ``tests/conformance/``.

Delivery semantics every broker keeps (docs/architecture.md, "Delivery semantics"):

* ``claim`` is atomic and increments the message's delivery count;
* a claimed message holds a lease until ``lease_seconds`` from the claim or the last
  ``renew``; an expired lease makes it claimable again;
* ``ack`` / ``requeue`` / ``release`` / ``dead_letter`` by a holder whose lease was taken over
  (its token no longer matches) do nothing and return ``False`` (fencing);
* ``claim`` is cancel-safe: a cancelled claim leaves no message leased;
* a constructor option a broker does not know is refused with ``ConfigurationError``
  (a typo must not silently change behaviour);
* ``publish`` of an id that is still queued or in flight does not create a second message;
* messages with an ``eta`` are stored by due time on the broker side, never in worker memory;
* a dead letter keeps at most ``DEAD_LETTER_BODY_LIMIT`` bytes of the body, and its size.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from .context import Request
    from .message import ErrorInfo, MessageIn
    from .nodes import Node
    from .result import AsyncResult, GroupResult
    from .routing import Router


class Outgoing(msgspec.Struct, frozen=True, gc=False):
    """A message to publish: the broker sees an id, routing data and opaque bytes.

    A frozen msgspec Struct rather than a dataclass: a bulk publish builds one per message,
    and a frozen dataclass costs about 25 times more to construct.
    """

    id: str
    queue: str
    body: bytes
    priority: int = 0
    #: due time, unix seconds; ``None`` means now
    eta: float | None = None
    #: publish to this exchange with ``routing_key`` instead of straight to ``queue`` (which
    #: names the queue the route aimed at); only a broker with :class:`RoutesByExchange`
    #: is ever given one
    exchange: str = ""
    routing_key: str = ""


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of a claim: the message id and a fencing token.

    The token changes with every claim of the message and is never reused (not the
    delivery count, which ``requeue`` resets), so a holder whose lease expired can never
    settle a later claim of the same message.
    """

    id: str
    queue: str
    token: int


#: bytes of a dead letter's body a broker keeps (the start of it); ``DeadLetter.size`` says
#: how big the message was
DEAD_LETTER_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the broker set aside, with why.

    ``body`` is the message's first ``DEAD_LETTER_BODY_LIMIT`` bytes (enough to see what it
    was); ``size`` is its whole length, ``len(body)`` unless given.
    """

    id: str
    queue: str
    reason: str
    body: bytes
    at: float
    size: int = -1

    def __post_init__(self) -> None:
        if self.size < 0:
            object.__setattr__(self, "size", len(self.body))


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker does natively; core chooses fallbacks for the rest."""

    #: messages with an eta wait on the broker
    delayed_delivery: bool = True
    #: higher priority first within a queue
    priorities: bool = True
    #: a dead-letter store that can be listed
    dead_letters: bool = True
    #: visible to other processes (False for ``memory://``)
    shared: bool = True
    #: leases expire and need renewing (False where the connection is the lease)
    leases: bool = True
    #: ``size()`` counts every message; False where some are invisible for a moment (a
    #: delayed message moving between RabbitMQ's delay queues, another process's unacked)
    exact_size: bool = True


@runtime_checkable
class Delivery(Protocol):
    """One claimed message, settled exactly one way."""

    @property
    def id(self) -> str:
        """The task id."""

    @property
    def queue(self) -> str:
        """The queue it was claimed from."""

    @property
    def body(self) -> bytes:
        """The message bytes as published."""

    @property
    def delivery_count(self) -> int:
        """Claims of this message since it was (re-)enqueued; 1 on the first delivery."""

    @property
    def lease(self) -> Lease:
        """The lease this delivery holds."""

    @property
    def prior(self) -> bytes | None:
        """The task's stored record, read by the claim itself (a broker with
        :class:`ClaimsRecords`); ``None`` if there is none or the broker does not read it."""

    async def ack(self) -> bool:
        """Remove the message: it was handled. ``False`` if the lease had been lost."""

    async def release(self, *, executed: bool) -> bool:
        """Hand the message back, claimable at once.

        Args:
            executed: whether it started running; if not, the claim does not count
                towards ``max_deliveries``.
        """

    async def requeue(self, body: bytes, *, eta: float | None) -> bool:
        """Atomically replace the message with ``body`` due at ``eta``, delivery count reset."""

    async def dead_letter(self, reason: str) -> bool:
        """Move the message to the dead-letter store with ``reason``."""


class BaseDelivery:
    """What every broker's delivery holds, as plain attributes (the worker reads them often).

    A broker's delivery class subclasses it and adds the four settlements of
    :class:`Delivery`: ``ack``, ``release``, ``requeue`` and ``dead_letter``.
    """

    __slots__ = ("body", "delivery_count", "id", "lease", "prior", "queue")

    def __init__(
        self, lease: Lease, body: bytes, delivery_count: int, prior: bytes | None = None
    ) -> None:
        self.lease = lease
        #: the task id
        self.id = lease.id
        #: the queue it was claimed from
        self.queue = lease.queue
        #: the message bytes as published
        self.body = body
        #: claims of this message since it was (re-)enqueued; 1 on the first delivery
        self.delivery_count = delivery_count
        #: the task's stored record when the claim read it (see :class:`ClaimsRecords`)
        self.prior = prior

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} id={self.id!r} queue={self.queue!r} "
            f"count={self.delivery_count} token={self.lease.token}>"
        )


@runtime_checkable
class Broker(Protocol):
    """A queue of opaque messages with leases. Chosen by URL scheme."""

    capabilities: Capabilities

    async def connect(self) -> None:
        """Open connections; idempotent."""

    async def close(self) -> None:
        """Close connections; idempotent."""

    async def publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Store messages; per message, ``False`` if that id was already queued or in flight."""

    async def claim(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        lease_seconds: float,
        owner: str,
        timeout: float,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due messages, highest priority first, earlier queues first.

        Waits up to ``timeout`` seconds for one to be available; returns ``[]`` if none.
        Cancel-safe: if the caller is cancelled, messages the claim took are handed back
        (as by ``release(executed=False)``), so a stopping worker can cancel an idle claim.
        """

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        """Extend leases. **Blocking and thread-safe**: the worker calls it from a thread
        so that a blocked event loop cannot starve it. Returns the leases that were lost."""

    async def size(self, queue: str) -> int:
        """Messages in ``queue``: ready, delayed and in flight (not dead letters)."""

    async def purge(self, queue: str) -> int:
        """Delete the messages of ``queue`` that are not in flight; return how many."""

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""


@runtime_checkable
class ResultBackend(Protocol):
    """Stores result and state records by task id, with a TTL, fenced by attempt."""

    async def connect(self) -> None:
        """Open connections; idempotent."""

    async def close(self) -> None:
        """Close connections; idempotent."""

    async def store(
        self, task_id: str, record: bytes, *, state: str, attempt: int, ttl: float | None
    ) -> bool:
        """Store ``record`` unless fenced; return whether it was stored.

        A write is refused when the stored record has a higher attempt, or the same attempt
        and a ready state (SUCCESS, FAILURE, REVOKED). Writers are told subscribers.
        """

    async def get(self, task_id: str) -> bytes | None:
        """The stored record, or ``None``."""

    def watch(self, task_id: str) -> AsyncGenerator[bytes, None]:
        """Yield the stored record (if any), then each newer record.

        Subscribes before reading, so a record stored in between is never missed. A polling
        backend may merge updates stored in quick succession; the latest always arrives.
        """

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """The stored records of several tasks in one round trip (``None`` where absent)."""

    async def forget(self, task_id: str) -> None:
        """Delete the record."""

    async def chord_join(
        self, chord_id: str, member_id: str, size: int, *, failed: bool, ttl: float | None
    ) -> bool:
        """Record that a chord member finished; atomically decide who fires the chord.

        Adds ``member_id`` to the chord's set (idempotent: a member that ran twice counts
        once). Returns ``True`` for exactly one call per chord: the first ``failed`` one, or
        the one after which ``size`` distinct members have joined, whichever comes first.
        """


# -- optional capabilities: declared here, checked with isinstance() once (at connect or
# -- start), never guessed with hasattr() ---------------------------------------------------


@runtime_checkable
class ClaimsRecords(Protocol):
    """Optional broker capability: a claim also returns the claimed tasks' stored records.

    Possible when the result backend shares the broker's store (Redis on one server and
    database): the worker then skips the lookup it otherwise makes per claimed batch (for
    revocations and finished duplicates), and reads :attr:`Delivery.prior` instead.
    """

    def bind_records(self, backend: ResultBackend) -> bool:
        """Read ``backend``'s records in every claim from now on, if possible; whether it is."""


@runtime_checkable
class CountsIds(Protocol):
    """Optional broker capability: count a queue's messages whose id ends with a suffix.

    ``aqueue status`` uses it to count internal timers (a chord's deadline message, id
    ``<chord id>.deadline``) apart from users' messages. A broker that cannot look at ids
    without consuming (AMQP) does not offer it.
    """

    async def count_ids(self, queue: str, suffix: str) -> int:
        """Messages of ``queue`` (ready, delayed and in flight) whose id ends with ``suffix``."""


@runtime_checkable
class ReplaysDeadLetters(Protocol):
    """Optional broker capability: dead letters can be put back in their queue, and purged.

    ``aqueue dlq replay`` / ``purge`` and ``app.control.dead_letters`` use it; core builds
    the message to enqueue (docs/fleet.md, "Dead letters").
    """

    async def replay_dead_letter(self, letter: DeadLetter, message: Outgoing) -> bool:
        """Remove ``letter`` (as ``dead_letters()`` returned it) from the store and enqueue
        ``message`` (same id, the letter's queue) as a new message: delivery count 0, and
        never refused because the id was enqueued before. ``False``, changing nothing, if
        the letter is no longer stored or the id is queued or in flight."""

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue`` (``None``: of every queue); how many."""


class WorkerInfo(msgspec.Struct, frozen=True):
    """What a running worker says about itself in the registry (:class:`WorkerRegistry`).

    ``id`` is unique per worker object (hostname, pid and a random part), so two workers
    of one process never share an entry; it is also the ``owner`` its claims give.
    """

    id: str
    hostname: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started: float
    #: ``{"aqueue": ..., "python": ...}``
    versions: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    """A registry entry as read back: the worker, its last heartbeat and what it held."""

    info: WorkerInfo
    #: unix time of its last heartbeat
    last_seen: float
    #: leases it held at its last heartbeat
    held: int
    #: its heartbeat lapsed and a live worker released its leases (it may come back)
    lost: bool


class WorkerRegistry(Protocol):
    """A registry of live workers, where dead ones' leases are freed (a broker's or a
    backend's, as :class:`KeepsWorkers` offers it).

    Every worker calls :meth:`beat` every ``worker_heartbeat_interval`` seconds from a
    thread of its own (so a blocked event loop does not make it look dead), and every beat
    also calls :meth:`reap`: a worker whose last beat is older than ``worker_lost_timeout``
    is marked lost and the leases it held are handed back at once, fenced by their tokens
    (a lease somebody else claimed since is left alone; the lost worker's own late
    settlement is refused as for any lost lease). See docs/fleet.md.
    """

    def beat(self, info: WorkerInfo, leases: Sequence[Lease], keep: float) -> None:
        """Record that ``info`` is alive now, holding ``leases``; a lost entry is live again.

        ``keep``: seconds an entry whose beats stopped stays listed (as lost) before it
        is dropped. **Blocking and thread-safe.**
        """

    def reap(self, lost_after: float) -> list[str]:
        """Mark workers silent for ``lost_after`` seconds lost and hand back their leases
        (as ``release(executed=True)``); return the ids marked now. Each lapsed worker is
        reaped once, by whoever gets there first. **Blocking and thread-safe.**"""

    def leave(self, worker_id: str) -> None:
        """Remove the entry (a graceful stop). **Blocking and thread-safe.**"""

    async def workers(self) -> list[WorkerSeen]:
        """Every entry, live or lost, by worker id."""


@runtime_checkable
class KeepsWorkers(Protocol):
    """Optional broker (or backend) capability: it keeps a :class:`WorkerRegistry`.

    On a broker, the registry also hands a lost worker's leases back; on a backend it
    serves a broker whose connection is the lease (RabbitMQ) and only lists workers.
    """

    @property
    def worker_registry(self) -> WorkerRegistry:
        """The registry this broker or backend keeps."""


#: topics whose name starts with this are point-to-point: one caller reads its replies
REPLY_TOPIC_PREFIX = "reply."


class Subscription(Protocol):
    """One reader of a topic of :class:`Topics`, established when ``subscribe`` returned:
    nothing published after that is missed (within the topic's cap)."""

    async def get(self, timeout: float) -> list[bytes]:
        """The next messages, in publish order; ``[]`` after ``timeout`` seconds of none.

        Raises:
            SubscriptionClosed: the subscription is closed, or closed while this waited
                (its broker closing closes it): never ``[]`` at once, which a reader
                looping until it is told to stop would spin on.
        """

    async def close(self) -> None:
        """Stop reading and free what the subscription holds. Idempotent."""


class Topics(Protocol):
    """Small messages beside the queues, for the fleet: remote control, replies, events.

    A topic is a capped, ordered log every subscriber reads on its own (a fan-out, not a
    queue): ``control`` (commands to every worker), ``events`` (the monitoring stream) and
    ``reply.<token>`` (one caller's replies, kept briefly). Delivery is best effort: a
    message beyond a topic's cap, or published while the server was unreachable, is gone;
    nothing here is a task. See docs/fleet.md.
    """

    async def publish(self, topic: str, bodies: Sequence[bytes], *, cap: int) -> None:
        """Append ``bodies`` to ``topic``, which keeps about its last ``cap`` messages
        (a reply topic: also at most a minute)."""

    async def subscribe(self, topic: str, *, since: float | None = None) -> Subscription:
        """Start reading ``topic``: messages published from now on, and also those still
        kept that were published at or after unix time ``since`` when it is given."""


@runtime_checkable
class KeepsTopics(Protocol):
    """Optional broker capability: it carries :class:`Topics` (every built-in broker)."""

    @property
    def topics(self) -> Topics:
        """The broker's topics."""


@runtime_checkable
class ListsScheduled(Protocol):
    """Optional broker capability: it can read the messages waiting for their ETA."""

    async def scheduled(self, queue: str, limit: int) -> list[tuple[float, bytes]]:
        """Up to ``limit`` messages of ``queue`` whose ETA is ahead, soonest first, as
        ``(eta, body)``; reading takes nothing."""


@runtime_checkable
class PeeksHead(Protocol):
    """Optional broker capability: it can read the message next in line without taking it
    (the fleet's metrics show how long it has waited)."""

    async def peek_head(self, queue: str) -> bytes | None:
        """The body of the ready message of ``queue`` that the next claim would take, or
        ``None`` when none is ready; reading takes nothing."""


@runtime_checkable
class SettlesInBackground(Protocol):
    """A broker that finishes some work of a cancelled call in the background (the Redis
    broker hands back what a cancelled claim took once its script answers)."""

    async def settled(self) -> None:
        """Return once that background work is done (each piece within the broker's own
        operation timeout): a worker about to run a message that may kill its process
        waits for it, so nothing a cancelled claim took is left counted and leased to a
        process that dies."""


@runtime_checkable
class StopsConsuming(Protocol):
    """Optional broker capability: a broker that buffers deliveries ahead of claims
    (RabbitMQ's consumers) stops that for a queue a worker no longer consumes."""

    async def stop_consuming(self, queue: str) -> None:
        """Stop receiving from ``queue`` and hand back what was received but not claimed."""


@runtime_checkable
class RoutesResults(Protocol):
    """Optional backend capability: results are pushed to the process that sent the task.

    The sender adds :meth:`reply_headers` to every message it sends; the worker tells the
    backend each message's headers (:meth:`observe`) before it stores that task's records.
    """

    def reply_headers(self) -> dict[str, str] | None:
        """Headers for messages this process sends (``None``: nothing to route yet)."""

    def observe(self, task_id: str, headers: Mapping[str, str]) -> None:
        """A worker received ``task_id`` with ``headers``: remember where its records go."""


@runtime_checkable
class RoutesByExchange(Protocol):
    """Optional broker capability: real exchanges (direct, topic, fanout), as RabbitMQ has.

    Such a broker is given messages as routed (``Outgoing.exchange`` and ``routing_key``)
    and the app's routing, from which it declares exchanges, queues and their bindings, and
    each consuming worker's own queue of a broadcast queue. A broker without it is only
    ever given messages the producer resolved to one queue
    (:meth:`~aqueue.core.routing.Router.target`), and no broadcast queue to consume.
    """

    def use_routing(self, router: Router) -> None:
        """Route by ``router`` from now on: ``router.spec(queue)`` is how to declare a queue
        (exchange, binding key, max priority, broadcast), ``router.bound(exchange)`` the
        queues to declare and bind before publishing to an exchange. No I/O."""

    async def declare_queues(self, queues: Sequence[str]) -> None:
        """Declare a starting worker's queues and their bindings (its own queue of each
        broadcast queue), so that what is routed to them from now on is kept for it."""


@runtime_checkable
class SharedThrottle(Protocol):
    """Optional: rate and concurrency limits that hold across every worker of a broker."""

    async def reserve_rate(self, key: str, limit: float, period: float) -> float:
        """Reserve the next slot for ``key`` (GCRA, burst ``limit``); return its unix time."""

    async def reset_rate(self, key: str) -> None:
        """Forget the slots reserved for ``key``: the next reservation is at once (its rate
        changed, so the old rate's reservations ahead must not hold the new one back)."""

    async def acquire_slot(self, key: str, holder: str, limit: int, lease_seconds: float) -> bool:
        """Take one of ``limit`` leased slots of ``key`` for ``holder``; ``False`` if full."""

    async def release_slot(self, key: str, holder: str) -> None:
        """Give a slot back."""

    def renew_slots(self, slots: Sequence[tuple[str, str]], lease_seconds: float) -> None:
        """Extend slot leases of ``(key, holder)`` pairs. Blocking and thread-safe."""


class Workflows(Protocol):
    """The workflow engine (``aqueue.workflows``), as core uses it through ``app.workflows``.

    Applying a chain, group or chord, and the worker's continuations: what a step that
    ended starts next. Core never imports the engine (see ``plugins.py``).
    """

    async def apply(
        self, node: Node, *, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
    ) -> AsyncResult[Any] | GroupResult[Any]:
        """Apply a frozen canvas (``Canvas.to_node()``); the handle of its result.

        ``args`` go before the first tasks' own arguments and ``kwargs`` over theirs. A
        canvas ending in a group gives a ``GroupResult``, any other an ``AsyncResult`` (the
        last step's), with ``parent`` links back through the workflow.
        """

    async def on_success(self, msg: MessageIn, value: Any) -> None:
        """A step succeeded with ``value``: apply its ``link`` callbacks, start its ``chain``'s
        next step or join its ``chord``. Called before its message is acked."""

    async def on_failure(self, msg: MessageIn, error: ErrorInfo) -> None:
        """A step failed (or was refused, revoked, expired): apply its ``link_error``
        callbacks, fail what is ahead of it in its ``chain`` and its ``chord``."""

    async def states(self, root_id: str) -> dict[str, str]:
        """The state of every node of the workflow started with ``root_id``."""

    async def replace(self, msg: MessageIn, node: Node, attempt: int) -> None:
        """Apply ``node`` in place of the task of ``msg``, which raised ``Replace``: its value
        becomes that task's result, then the task's callbacks, chain and chord follow."""

    async def add_to_chord(
        self, request: Request, node: Node
    ) -> AsyncResult[Any] | GroupResult[Any]:
        """Apply ``node`` as part of the chord ``request``'s task is a member of (the chord
        waits for it, its value follows the members'); the handle of its result."""


class BeatService(Protocol):
    """The periodic task scheduler (``aqueue.beat``), as ``app.beat()`` returns it.

    ``async with app.beat():`` runs it in the current loop; ``await beat.run()`` runs it
    until ``request_stop()``. Any number may run: one leads (see docs/periodic-tasks.md).
    """

    @property
    def is_leader(self) -> bool:
        """Whether this scheduler holds the leader lease (as of its last look)."""

    async def run(self) -> None:
        """Run until :meth:`request_stop`."""

    def request_stop(self) -> None:
        """Stop soon, giving the lease up."""

    async def __aenter__(self) -> BeatService:
        """Start running in the background; return once the first round is done."""

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop and wait for it."""
