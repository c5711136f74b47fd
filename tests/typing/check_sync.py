"""The blocking API's types, checked by `mypy --strict` (never run): ``.sync`` keeps the
task's argument types (ParamSpec) and result type, and a canvas's handle becomes its
blocking view."""

from __future__ import annotations

from typing import Any, assert_type

from aqueue import App, SyncGroupResult, SyncResult, group

app = App("typing-sync", broker="memory://typing-sync")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
def label(n: int) -> str:
    return str(n)


def sends() -> None:
    assert_type(add.sync.delay(2, 2), SyncResult[int])
    assert_type(add.sync.delay(2, 2).get(timeout=10), int)
    assert_type(label.sync.apply_async((1,), countdown=5), SyncResult[str])
    assert_type(add.options(countdown=1).sync.delay(1, 2), SyncResult[int])
    assert_type(add.sync.options(priority=1).delay(1, 2), SyncResult[int])
    add.sync.delay("2", 2)  # type: ignore[arg-type]
    add.sync.delay(2)  # type: ignore[call-arg]
    assert_type(app.sync.send_task("x", (1,)), SyncResult[Any])
    assert_type(add.sync.AsyncResult("id"), SyncResult[int])
    assert_type(app.sync.AsyncResult("id").state, str)


def canvases() -> None:
    assert_type(add.s(1, 2).sync.apply_async(), SyncResult[int])
    assert_type((add.s(1, 2) | label.s()).sync.apply_async(), SyncResult[str])
    assert_type(group(add.s(1, 2), add.s(3, 4)).sync.apply_async(), SyncGroupResult[int])
    assert_type(app.sync.apply(add.s(1, 2)), SyncResult[int])
    assert_type(app.sync.apply(group(add.s(1, 2), add.s(3, 4))), SyncGroupResult[int])
    assert_type(group(add.s(1, 2), add.s(3, 4)).sync.apply_async().get(timeout=1), list[int])
