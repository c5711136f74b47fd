"""What signing costs (issue 19): HMAC-SHA256 per message and per record, then the drain
with signing off and on.

    PYTHONPATH=. python -m benchmarks.signing_cost [--tasks 20000] [--runs 3]

First the microseconds one sign plus one verify take for a typical task message and a
result record (``timeit``, best of five). Then the harness of ``events_cost.py``: each run
queues ``--tasks`` no-op tasks (untimed, ``delay_many``; signed in the ``signed`` mode),
then times one embedded worker (concurrency 100, burst mode, results stored and signed,
uvloop when installed) from its start until it has drained the queue: every message is
verified, every record signed. Redis DB 14 by default (``BENCH_REDIS_URL``), under a prefix
of its own that is deleted afterwards. With no keys set the worker runs the code it runs
without this feature (``off`` is the baseline, not a separate build).
"""

from __future__ import annotations

import secrets
import timeit
import uuid

import msgspec

from aqueue.core.message import MessageOut, ResultOut
from aqueue.core.signing import Keyring
from aqueue.runner import run as run_on_loop

from .cost import compare, delete_prefix, enqueue, noop_app, timed_drain

MODES = ("off", "signed")
KEYS = {"bench": secrets.token_hex(32)}


def per_message() -> None:
    """Print µs for one sign + one verify of a message and of a record."""
    keyring = Keyring(KEYS)
    tid = str(uuid.uuid4())
    bodies = {
        "message": msgspec.msgpack.encode(
            MessageOut(id=tid, task="proj.tasks.add", args=(2, 2), sent_at=1.7e9)
        ),
        "record": msgspec.msgpack.encode(
            ResultOut(id=tid, state="SUCCESS", value=4, attempt=1, worker="w@h", date_done=1.7e9)
        ),
        "message, 10 KiB of arguments": msgspec.msgpack.encode(
            MessageOut(id=tid, task="proj.tasks.add", args=("x" * 10240,))
        ),
    }
    for name, body in bodies.items():
        context = tid.encode() if name == "record" else b""
        frame = keyring.sign(body, context=context)
        n = 20000
        sign = min(
            timeit.repeat(lambda b=body, c=context: keyring.sign(b, context=c), number=n, repeat=5)
        )
        check = min(
            timeit.repeat(lambda f=frame, c=context: keyring.verify(f, c), number=n, repeat=5)
        )
        print(
            f"{name:30} {len(body):6} bytes: sign {sign / n * 1e6:5.2f} µs, "
            f"verify {check / n * 1e6:5.2f} µs, +{len(frame) - len(body)} bytes",
            flush=True,
        )


async def drain(mode: str, prefix: str, tasks: int) -> tuple[float, float]:
    app = noop_app("signbench", prefix)
    if mode == "signed":
        app.conf.update(signing_keys=KEYS)
    async with app:
        await enqueue(app, tasks)
        return await timed_drain(app.worker(concurrency=100, burst=True), tasks)


def run(mode: str, tasks: int) -> tuple[float, float, str]:
    prefix = f"sgb-{uuid.uuid4().hex[:10]}"
    try:
        seconds, cpu = run_on_loop(lambda: drain(mode, prefix, tasks))
        return seconds, cpu, ""
    finally:
        delete_prefix(prefix)


if __name__ == "__main__":
    per_message()
    compare(MODES, run)
