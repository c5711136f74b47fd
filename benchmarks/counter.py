"""Completion signal and start gate, imported by every system's tasks module.

Each benchmark task calls :func:`tick` once when it is done. ``tick`` costs a lock and a
``time.time()`` in the worker process: the count and the time of the last completion are
sent to Redis DB 15 by a background thread every ``FLUSH_INTERVAL`` seconds, so the signal
adds no Redis command per task. The orchestrator reads ``bench:done`` to know when a run is
over and ``bench:last:<pid>`` to know exactly when it ended.

The first call of ``tick`` in a process is a *start gate*: it registers the process
(``INCR bench:arrived``) and blocks until the orchestrator sets ``bench:go``. A blocked
event loop (async workers) or blocked threads (thread-pool workers) cannot complete a task,
so every worker process is up, connected and holding its first batch before the clock
starts, and the measured window excludes interpreter start-up and imports. The commands of
the flusher (INCRBYFLOAT + SET, always paired) are subtracted from the Redis command counts.
"""

from __future__ import annotations

import os
import threading
import time

from .config import K_ARRIVED, K_DONE, K_GO, K_LAST, REDIS_URL

FLUSH_INTERVAL = 0.01
GATE_TIMEOUT = 180.0

_lock = threading.Lock()
_count = 0
_last = 0.0
_open = False
_pid = 0
_gate_lock = threading.Lock()


def _client():  # type: ignore[no-untyped-def]
    import redis  # the bench venv always has redis-py, whatever the system uses

    return redis.Redis.from_url(REDIS_URL)


def _gate() -> None:
    """Block until the orchestrator opens the gate (once per process)."""
    global _open, _pid
    with _gate_lock:
        if _open and _pid == os.getpid():
            return
        client = _client()
        client.incr(K_ARRIVED)
        deadline = time.monotonic() + GATE_TIMEOUT
        while not client.exists(K_GO) and time.monotonic() < deadline:
            time.sleep(0.002)
        client.close()
        _pid = os.getpid()
        threading.Thread(target=_flush_forever, name="bench-counter", daemon=True).start()
        _open = True


def tick() -> None:
    """Record one completed task."""
    global _count, _last
    if not _open or _pid != os.getpid():
        _gate()
    with _lock:
        _count += 1
        _last = time.time()


def _flush_forever() -> None:
    client = _client()
    key_last = f"{K_LAST}{os.getpid()}"
    sent = 0
    while True:
        time.sleep(FLUSH_INTERVAL)
        with _lock:
            count, last = _count, _last
        if count == sent:
            continue
        pipe = client.pipeline(transaction=False)
        pipe.incrbyfloat(K_DONE, count - sent)
        pipe.set(key_last, repr(last))
        try:
            pipe.execute()
        except Exception:  # Redis flushed between runs: nothing to report to
            continue
        sent = count
