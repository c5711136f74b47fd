"""The memory broker's :class:`~aqueue.core.protocols.Topics`: a capped log per topic.

Each topic is a list of ``(seq, time, body)``; a subscription remembers the last ``seq`` it
read. Thread-safe (a memory store is shared by every event loop of the process), waking
readers through :class:`~aqueue.brokers.wakeup.Wakeup`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from ..core.errors import SubscriptionClosed
from ..core.protocols import REPLY_TOPIC_PREFIX
from .wakeup import Wakeup

#: seconds a reply topic is kept after its last message
REPLY_TTL = 60.0


class _Topic:
    def __init__(self) -> None:
        self.log: deque[tuple[int, float, bytes]] = deque()
        self.wakeup = Wakeup()
        self.touched = time.monotonic()


class MemoryTopics:
    """Topics of one ``memory://`` store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._seq = itertools.count(1)

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic()
        return topic

    async def publish(self, topic: str, bodies: Sequence[bytes], *, cap: int) -> None:
        now = time.time()
        with self._lock:
            self._forget_old_replies()
            t = self._topic(topic)
            t.log.extend((next(self._seq), now, body) for body in bodies)
            while len(t.log) > max(cap, 1):
                t.log.popleft()
            t.touched = time.monotonic()
        t.wakeup.notify()

    async def subscribe(self, topic: str, *, since: float | None = None) -> MemorySubscription:
        with self._lock:
            t = self._topic(topic)
            if since is None:
                after = t.log[-1][0] if t.log else 0
            else:
                after = next((seq - 1 for seq, ts, _ in t.log if ts >= since), 0)
                if after == 0 and t.log and t.log[-1][1] < since:
                    after = t.log[-1][0]
        return MemorySubscription(self, t, after)

    def read(self, topic: _Topic, after: int) -> list[tuple[int, bytes]]:
        with self._lock:
            return [(seq, body) for seq, _, body in topic.log if seq > after]

    def _forget_old_replies(self) -> None:
        limit = time.monotonic() - REPLY_TTL
        old = [
            name
            for name, t in self._topics.items()
            if name.startswith(REPLY_TOPIC_PREFIX) and t.touched < limit
        ]
        for name in old:
            del self._topics[name]


class MemorySubscription:
    """A reader of one memory topic."""

    def __init__(self, topics: MemoryTopics, topic: _Topic, after: int) -> None:
        self._topics = topics
        self._topic = topic
        self._after = after
        self._closed = False
        #: called once, by :meth:`close`
        self.on_close: Callable[[MemorySubscription], None] | None = None

    async def get(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while not self._closed:
            items = self._topics.read(self._topic, self._after)
            if items:
                self._after = items[-1][0]
                return [body for _, body in items]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            await self._topic.wakeup.wait(left)
        raise SubscriptionClosed("the subscription is closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._topic.wakeup.notify()  # a get waiting on it says so now
        if self.on_close is not None:
            self.on_close(self)


class BrokerTopics:
    """One broker object's view of its store's topics: the same topics (every broker object
    on a ``memory://`` name shares them), and the subscriptions this one made, closed with
    it as a server broker's are."""

    def __init__(self, topics: MemoryTopics) -> None:
        self._topics = topics
        self._open: set[MemorySubscription] = set()

    async def publish(self, topic: str, bodies: Sequence[bytes], *, cap: int) -> None:
        await self._topics.publish(topic, bodies, cap=cap)

    async def subscribe(self, topic: str, *, since: float | None = None) -> MemorySubscription:
        sub = await self._topics.subscribe(topic, since=since)
        sub.on_close = self._open.discard
        self._open.add(sub)
        return sub

    async def close(self) -> None:
        """Close the subscriptions still open (the broker is closing)."""
        for sub in list(self._open):
            await sub.close()
