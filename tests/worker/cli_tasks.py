"""Tasks for the `aqueue worker` command tests. The app reads its URL from AQUEUE_BROKER_URL.

``BOOT`` changes every time the worker's interpreter starts: a task returning it tells the
test which life of a recycled worker ran it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

from aqueue import App, SoftTimeLimitExceeded, Task

app = App("clitest")
log = logging.getLogger(__name__)

#: this interpreter's life (a recycled worker re-executes itself: a new value)
BOOT = uuid.uuid4().hex[:12]
#: memory a task holds on purpose until the process ends
_hoard: list[bytes] = []


@app.task
async def add(x: int, y: int) -> int:
    log.info("adding inside the task")
    return x + y


@app.task
async def boom(secret: str) -> None:
    raise KeyError("missing-key")


@app.task(bind=True)
async def whoami(self: Task[[float], dict[str, object]], seconds: float) -> dict[str, object]:
    await asyncio.sleep(seconds)
    return {"pid": os.getpid(), "boot": BOOT, "attempt": self.request.attempt}


@app.task(bind=True)
async def hog(
    self: Task[[int, float], dict[str, object]], mib: int, hold: float
) -> dict[str, object]:
    _hoard.append(b"x" * (mib * 1024 * 1024))
    await asyncio.sleep(hold)
    return {"pid": os.getpid(), "boot": BOOT, "attempt": self.request.attempt}


@app.task
async def sleeper(seconds: float) -> str:
    try:
        await asyncio.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "soft limit"
    return "slept"


@app.task
def spin_def(seconds: float) -> str:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(100))
    return "spun"
