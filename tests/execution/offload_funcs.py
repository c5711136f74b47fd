"""Module-level functions that the offload tests run in child processes.

Children import this module by name, so everything here must work at import time in a fresh
interpreter (the App uses an in-memory broker: nothing is opened).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec

from aqueue import App
from aqueue.core.errors import SoftTimeLimitExceeded
from aqueue.core.offload_child import rss_kib

app = App("offload-tests", broker="memory://offload-tests")


class Point(msgspec.Struct):
    x: int
    y: int


class CustomError(Exception):
    pass


def echo(value: Any) -> Any:
    return value


def add(x: int, y: int) -> int:
    return x + y


def swap(point: Point) -> Point:
    assert isinstance(point, Point)  # decoded against the annotation in the child
    return Point(point.y, point.x)


def pair(a: int, b: str) -> tuple[int, str]:
    return (a, b)


def getpid() -> int:
    return os.getpid()


def rss() -> int:
    return rss_kib()


def noisy() -> str:
    print("offload_funcs.noisy writes to stdout")  # must not corrupt the reply frames
    return "quiet"


def fail(message: str) -> None:
    raise ValueError(message)


def missing_key(key: str) -> None:
    empty: dict[str, int] = {}
    empty[key]


def custom(message: str) -> None:
    raise CustomError(message)


def unencodable() -> object:
    return object()


def spin() -> None:
    while True:
        pass


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def touch_and_sleep(path: str, seconds: float) -> str:
    """Signal the test that the call is running, then sleep."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def catch_soft() -> str:
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        return "cleaned"
    return "slept"


def timed_sleep(seconds: float) -> tuple[int, float, float]:
    # CLOCK_MONOTONIC is system-wide, so intervals from different processes compare.
    start = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), start, time.monotonic()


def crash(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_hoard: list[bytes] = []


def hoard(mib: int) -> int:
    """Keep ``mib`` MiB of touched memory referenced, as a leaking task would."""
    _hoard.append(b"\x01" * (mib * 2**20))
    return os.getpid()


def make_nested() -> Any:
    def nested() -> None:
        pass

    return nested


@app.task
def multiply(x: int, y: int) -> int:
    return x * y


@app.task(bind=True)
def whoami(self: Any) -> str:
    return str(self.name)


@app.task
async def async_task() -> None:
    pass
