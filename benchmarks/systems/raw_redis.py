"""The raw limit: bare redis-py (hiredis) + msgspec, no task queue at all.

The producer RPUSHes msgspec-encoded messages onto one list; the consumer
(``python -m benchmarks.systems.raw_redis worker C``) pops up to C at a time with BLMPOP,
decodes each and runs it as an asyncio task under a semaphore of C. No acks, no leases,
no retries, no results unless asked (then an RPUSH onto a per-message reply list that the
producer BLPOPs). It is the floor under what any Redis-backed queue in Python can do with
these client libraries on this machine.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

import msgspec

from .. import counter
from ..config import IO_SLEEP, REDIS_URL
from .base import PY, System, WorkerSpec

QUEUE = "raw:q"


class Msg(msgspec.Struct, array_like=True):
    id: str
    task: str
    args: tuple[Any, ...] = ()
    reply: str | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Msg).decode


class RawRedisSystem(System):
    name = "raw-redis"
    is_async = True
    settings = {
        "client": "redis.asyncio + hiredis, uvloop on both sides; one-at-a-time and round "
        "trip on a single-connection client (no pool: the bare round trip), the concurrent "
        "gather on `BlockingConnectionPool(max_connections=100)`",
        "message": "msgspec msgpack Struct (id, task, args, reply)",
        "enqueue": "RPUSH per message; bulk: RPUSH of 1 000 messages per command, one pipeline",
        "consumer": "BLMPOP ... COUNT C, one asyncio task per message under a semaphore of C; "
        "no acks, leases, retries or result storage",
        "round trip": "RPUSH with a reply key; the consumer RPUSHes the reply; producer BLPOPs",
    }

    def version(self) -> str:
        from importlib.metadata import version

        return f"redis-py {version('redis')}, hiredis {version('hiredis')}"

    def worker(self, *, concurrency: int, results: bool) -> WorkerSpec:
        return WorkerSpec([PY, "-m", "benchmarks.systems.raw_redis", "worker", str(concurrency)])

    async def connect(self, *, results: bool) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis

        self._r: Any = Redis.from_url(REDIS_URL, single_connection_client=True)
        self._pool: Any = Redis(
            connection_pool=BlockingConnectionPool.from_url(REDIS_URL, max_connections=100)
        )
        await self._r.ping()

    async def close(self) -> None:
        await self._r.aclose()
        await self._pool.aclose()

    @staticmethod
    def _msg(kind: str, reply: str | None = None) -> bytes:
        return _encode(Msg(id=uuid.uuid4().hex, task=kind, reply=reply))

    async def enqueue_one(self, n: int, kind: str) -> None:
        r = self._r
        for _ in range(n):
            await r.rpush(QUEUE, self._msg(kind))

    async def enqueue_concurrent(self, n: int, kind: str) -> None:
        r = self._pool
        await asyncio.gather(*(r.rpush(QUEUE, self._msg(kind)) for _ in range(n)))

    async def enqueue_bulk(self, n: int, kind: str) -> None:
        async with self._r.pipeline(transaction=False) as pipe:
            for start in range(0, n, 1000):
                pipe.rpush(QUEUE, *(self._msg(kind) for _ in range(min(1000, n - start))))
            await pipe.execute()

    async def round_trip(self) -> Any:
        reply = f"raw:reply:{uuid.uuid4().hex}"
        await self._r.rpush(QUEUE, self._msg("noop", reply))
        got = await self._r.blpop([reply], timeout=10)
        if got is None:
            raise TimeoutError("no reply within 10 s")
        return msgspec.msgpack.decode(got[1])


# -- the consumer process ------------------------------------------------------------------


async def _noop() -> None:
    counter.tick()


async def _sleep() -> None:
    await asyncio.sleep(IO_SLEEP)
    counter.tick()


_TASKS = {"noop": _noop, "sleep": _sleep}


async def _consume(concurrency: int) -> None:
    from redis.asyncio import Redis

    r = Redis.from_url(REDIS_URL)
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def run(msg: Msg) -> None:
        try:
            result = await _TASKS[msg.task](*msg.args)
            if msg.reply is not None:
                await r.rpush(msg.reply, msgspec.msgpack.encode(result))
        finally:
            slots.release()

    while True:
        reply = await r.execute_command("BLMPOP", 1, 1, QUEUE, "LEFT", "COUNT", concurrency)
        if not reply:
            continue
        for raw in reply[1]:
            await slots.acquire()
            task = asyncio.create_task(run(_decode(raw)))
            running.add(task)
            task.add_done_callback(running.discard)


def main(argv: list[str]) -> None:
    import uvloop

    if argv[:1] != ["worker"] or len(argv) != 2:
        raise SystemExit("usage: python -m benchmarks.systems.raw_redis worker CONCURRENCY")
    os.environ.setdefault("BENCH_RESULTS", "0")
    uvloop.run(_consume(int(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
