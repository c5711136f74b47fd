"""Tasks the conformance suite registers on each test's app."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import msgspec

from aqueue import App, Task


class Point(msgspec.Struct, frozen=True):
    x: int
    y: int


@dataclass
class Recorder:
    """What tasks observed, for assertions."""

    calls: list[Any] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    progress_seen: asyncio.Event = field(default_factory=asyncio.Event)


class HookedTask(Task[Any, Any]):
    recorder: Recorder | None = None

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        assert self.recorder is not None
        self.recorder.hooks.append(f"success:{retval}")

    async def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
    ) -> None:
        assert self.recorder is not None
        self.recorder.hooks.append(f"failure:{type(exc).__name__}")

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: str | None
    ) -> None:
        assert self.recorder is not None
        self.recorder.hooks.append(f"after:{status}")


def register(app: App, rec: Recorder) -> Any:
    """Register the suite's tasks on ``app``; returns a namespace of them."""

    @app.task(name="t.add")
    async def add(x: int, y: int) -> int:
        rec.calls.append(("add", x, y))
        return x + y

    @app.task(name="t.mul")
    def mul(x: int, y: int) -> int:
        rec.calls.append(("mul", x, y))
        return x * y

    @app.task(name="t.when")
    async def when(p: Point, at: dt.datetime) -> dt.datetime:
        return at + dt.timedelta(days=p.x)

    @app.task(name="t.point")
    async def point(x: int) -> Point:
        return Point(x, x * 2)

    @app.task(name="t.boom")
    async def boom(text: str) -> None:
        raise ValueError(text)

    @app.task(name="t.boom_sync")
    def boom_sync() -> None:
        raise KeyError("missing")

    @app.task(name="t.request", bind=True)
    async def request(self: Task[[], dict[str, Any]], tag: str = "") -> dict[str, Any]:
        r = self.request
        return {
            "id": r.id,
            "attempt": r.attempt,
            "queue": r.queue,
            "retries": r.retries,
            "headers": r.headers,
            "task": r.task,
            "tag": tag,
            "hostname": r.hostname,
        }

    @app.task(name="t.hooked", base=HookedTask)
    async def hooked(fail: bool) -> str:
        if fail:
            raise RuntimeError("hooked failure")
        return "fine"

    HookedTask.recorder = rec

    @app.task(name="t.block")
    async def block() -> str:
        rec.started.set()
        await rec.release.wait()
        return "released"

    @app.task(name="t.progress", bind=True)
    async def progress(self: Task[[int], int], steps: int) -> int:
        for i in range(steps):
            await self.update_state("PROGRESS", meta={"done": i + 1})
            if i == 0:  # until a watcher has seen the first progress report
                await rec.progress_seen.wait()
        return steps

    @app.task(name="t.silent", ignore_result=True)
    async def silent() -> None:
        rec.calls.append(("silent",))

    @app.task(name="t.unencodable")
    async def unencodable() -> Any:
        return object()

    class NS:
        pass

    ns = NS()
    for t in (
        add,
        mul,
        when,
        point,
        boom,
        boom_sync,
        request,
        hooked,
        block,
        progress,
        silent,
        unencodable,
    ):
        setattr(ns, t.name.split(".")[1], t)
    return ns
