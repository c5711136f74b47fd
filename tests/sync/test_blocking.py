"""The blocking API (``.sync``) against a live worker, on SQLite and Redis."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aqueue import App, ConfigurationError, SyncResult, SyncUsageError, TaskFailed, TaskRevoked
from aqueue import states as st
from aqueue.core import blocking
from tests.conftest import delete_redis_prefix, make_url, prefix_of

from .tasks import register

TIMEOUT = 20.0


def portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aqueue-sync"]


def test_delay_get_state(sync_app: App) -> None:
    add = sync_app.tasks["sync.add"]
    result = add.sync.delay(2, 2)
    assert isinstance(result, SyncResult)
    assert result.get(timeout=TIMEOUT) == 4
    assert result.state == st.SUCCESS
    assert result.status == st.SUCCESS
    assert result.result == 4
    assert result.ready() and result.successful() and not result.failed()
    # a later request that only has the id
    again = sync_app.sync.AsyncResult(result.id)
    assert again.get(timeout=TIMEOUT) == 4
    assert again == result


def test_apply_async_options_and_send_task(sync_app: App) -> None:
    mul = sync_app.tasks["sync.mul"]
    assert mul.sync.apply_async((3, 4), task_id="fixed-id").get(timeout=TIMEOUT) == 12
    assert sync_app.sync.AsyncResult("fixed-id").state == st.SUCCESS
    assert mul.sync.options(priority=3).delay(5, 5).get(timeout=TIMEOUT) == 25
    assert mul.options(priority=3).sync.delay(2, 5).get(timeout=TIMEOUT) == 10
    by_name = sync_app.sync.send_task("sync.sub", (10, 4))
    assert by_name.get(timeout=TIMEOUT) == 6


def test_day4_chain_and_status_walk(sync_app: App) -> None:
    div, mul = sync_app.tasks["sync.div"], sync_app.tasks["sync.mul"]
    add, sub = sync_app.tasks["sync.add"], sync_app.tasks["sync.sub"]
    workflow = (div.s(4, 2) | mul.s(3) | add.s(6) | sub.s(2)).sync.apply_async()
    assert workflow.get(timeout=TIMEOUT) == 10  # 4 / 2 * 3 + 6 - 2
    # the day-6 walk: parents back to the first step, each one's state
    walked: list[SyncResult[Any]] = []
    node: Any = workflow
    while node is not None:
        walked.append(node)
        node = node.parent
    assert len(walked) == 4
    assert [r.state for r in reversed(walked)] == [st.SUCCESS] * 4
    root = walked[-1].id
    assert list(sync_app.sync.workflow_states(root).values()) == [st.SUCCESS] * 4
    # app.sync.apply and a group
    assert sync_app.sync.apply(div.s(9, 3)).get(timeout=TIMEOUT) == 3
    from aqueue import group

    grouped = group(add.s(1, 1), mul.s(2, 3)).sync.apply_async()
    assert grouped.get(timeout=TIMEOUT) == [2, 6]
    assert grouped.completed_count() == 2 and grouped.successful()


def test_failure_propagates(sync_app: App) -> None:
    result = sync_app.tasks["sync.boom"].sync.delay("no report today")
    with pytest.raises(TaskFailed) as failed:
        result.get(timeout=TIMEOUT)
    assert failed.value.exc_type == "ValueError"
    assert "no report today" in str(failed.value)
    assert result.state == st.FAILURE and result.failed()
    returned = result.get(timeout=TIMEOUT, propagate=False)
    assert isinstance(returned, TaskFailed)


def test_timeout_then_revoke(sync_app: App) -> None:
    # sent to a queue nobody consumes: it cannot finish, so the wait must time out
    result = sync_app.tasks["sync.add"].sync.apply_async((1, 2), queue="nobody-listens")
    with pytest.raises(TimeoutError):
        result.get(timeout=0.3)
    assert result.state == st.PENDING
    result.revoke()
    assert result.state == st.REVOKED
    with pytest.raises(TaskRevoked):
        result.get(timeout=TIMEOUT)


def test_threads_share_one_portal_and_one_connection(sync_app: App) -> None:
    add = sync_app.tasks["sync.add"]
    add.sync.delay(0, 0).get(timeout=TIMEOUT)
    broker, backend = sync_app.broker, sync_app.backend

    def client(n: int) -> list[float]:
        sent = [add.sync.delay(n, i) for i in range(20)]
        return [r.get(timeout=TIMEOUT) for r in sent]

    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(client, range(16)))
    assert got == [[n + i for i in range(20)] for n in range(16)]
    # one loop thread and the same connections throughout: none per call, none per thread
    assert len(portal_threads()) == 1
    assert sync_app.broker is broker and sync_app.backend is backend


def test_refused_inside_a_running_loop(sync_app: App, caplog: pytest.LogCaptureFixture) -> None:
    add = sync_app.tasks["sync.add"]
    done = add.sync.delay(1, 1)

    async def inside() -> None:
        with pytest.raises(SyncUsageError, match=r"await task\.delay"):
            add.sync.delay(1, 2)
        with pytest.raises(SyncUsageError, match=r"await result\.wait"):
            done.get(timeout=1)
        with pytest.raises(SyncUsageError, match=r"await result\.state"):
            _ = done.state

    asyncio.run(inside())
    # the refused send built no coroutine: nothing reported as never awaited
    assert "never awaited" not in caplog.text
    assert done.get(timeout=TIMEOUT) == 2


def test_async_use_of_a_sync_app_is_refused(sync_app: App) -> None:
    add = sync_app.tasks["sync.add"]
    add.sync.delay(1, 1).get(timeout=TIMEOUT)

    async def elsewhere() -> None:
        await add.delay(1, 2)

    with pytest.raises(ConfigurationError, match="blocking API"):
        asyncio.run(elsewhere())


# Redis only: SQLite's own rule is no connection across fork, and a child forked while a
# parent's thread holds the SQLite file can find it locked for good (2 forks in 12 did,
# before this was restricted); the SQLite case a pre-fork server has is the next test
@pytest.mark.parametrize("sync_app", ["redis"], indirect=True)
def test_forked_child_sends_with_its_own_portal(sync_app: App) -> None:
    add = sync_app.tasks["sync.add"]
    assert add.sync.delay(1, 1).get(timeout=TIMEOUT) == 2
    parent_portal = blocking.portal()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send, wait, report the id, exit with a status
        status = 1
        try:
            os.close(read)
            result = add.sync.delay(20, 22)
            ok = result.get(timeout=TIMEOUT) == 42 and blocking.portal() is not parent_portal
            os.write(write, result.id.encode())
            # what a long-lived child (a gunicorn worker) eventually does with what it
            # inherited: collect it. That must not touch the parent's loop (its epoll set)
            gc.collect()
            status = 0 if ok else 2
        except BaseException as exc:  # said on stderr: the parent only sees the status
            os.write(2, f"child: {exc!r}\n".encode())
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_id = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's portal and connections still work, and see the child's result
    assert blocking.portal() is parent_portal
    assert sync_app.sync.AsyncResult(child_id).get(timeout=TIMEOUT) == 42
    assert add.sync.delay(2, 3).get(timeout=TIMEOUT) == 5


@pytest.mark.slow
def test_process_exit_closes_the_portals_connections(tmp_path: Path) -> None:
    """A script that sends and exits: the portal closes its connections at exit, quietly."""
    url = make_url("redis", tmp_path)
    script = (
        "from aqueue import App\n"
        f"app = App('exit', broker={url!r})\n"
        "@app.task(name='sync.add')\n"
        "async def add(x: int, y: int) -> int:\n"
        "    return x + y\n"
        "print(add.sync.delay(1, 2).id)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
    finally:
        delete_redis_prefix(prefix_of(url))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert done.stderr == ""


def test_an_app_connected_in_another_running_loop_is_refused(tmp_path: Path) -> None:
    app = App("elsewhere", broker=f"sqlite:///{tmp_path / 'a.db'}")
    register(app)
    connected, release = threading.Event(), threading.Event()

    async def hold() -> None:
        async with app:
            connected.set()
            await asyncio.to_thread(release.wait)

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert connected.wait(TIMEOUT)
        with pytest.raises(ConfigurationError, match="another running event loop"):
            app.tasks["sync.add"].sync.delay(1, 2)
    finally:
        release.set()
        holder.join(TIMEOUT)
        blocking.shutdown()


def test_the_rest_of_the_blocking_surface(sync_app: App) -> None:
    add, boom = sync_app.tasks["sync.add"], sync_app.tasks["sync.boom"]
    failed = boom.sync.delay("bad input")
    assert failed.wait(timeout=TIMEOUT, propagate=False) is not None
    assert failed.traceback and "ValueError" in failed.traceback
    assert "bad input" in str(failed.info)
    done = add.sync.delay(3, 4)
    assert done.get(timeout=TIMEOUT) == 7
    done.forget()
    assert done.state == st.PENDING
    # app.sync.call runs any coroutine function on the portal
    assert sync_app.sync.call(sync_app.workflow_states, "no-such-workflow") == {}
    # app.sync.revoke by ids, on tasks nobody will run
    waiting = [add.sync.apply_async((i, i), queue="nobody-listens") for i in range(2)]
    sync_app.sync.revoke([r.id for r in waiting])
    assert [r.state for r in waiting] == [st.REVOKED, st.REVOKED]
    from aqueue import group

    grouped = group(add.s(1, 1), add.s(2, 2)).sync.apply_async()
    assert grouped.get(timeout=TIMEOUT) == [2, 4]
    assert grouped.ready() and not grouped.failed() and len(grouped) == 2
    assert [r.get(timeout=TIMEOUT) for r in grouped] == [2, 4]
    held = group(add.s(1, 1), add.s(2, 2)).sync.apply_async(queue="nobody-listens")
    held.revoke()
    assert {r.state for r in held} == {st.REVOKED}
    # the blocking view of an async handle
    assert grouped.async_result.sync.get(timeout=TIMEOUT) == [2, 4]
    assert done.async_result.sync.id == done.id


def test_close_releases_the_app_for_another_loop(tmp_path: Path) -> None:
    app = App("released", broker=f"sqlite:///{tmp_path / 'a.db'}")
    register(app)
    add = app.tasks["sync.add"]
    sent = add.sync.delay(1, 2)
    app.sync.close()

    async def elsewhere() -> str:
        async with app:
            return await app.AsyncResult(sent.id).state()

    try:
        assert asyncio.run(elsewhere()) == st.PENDING  # no worker ran it: only sent
    finally:
        blocking.shutdown()


def test_forked_child_on_sqlite_when_the_parent_holds_no_connection(tmp_path: Path) -> None:
    """gunicorn's and uWSGI's pattern: the master imports the app (connecting nothing) and
    forks; each child connects on its first ``.sync`` call."""
    app = App("prefork", broker=f"sqlite:///{tmp_path / 'a.db'}")
    register(app)
    add = app.tasks["sync.add"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read)
            os.write(write, add.sync.delay(20, 22).id.encode())
            status = 0
        except BaseException as exc:
            os.write(2, f"child: {exc!r}\n".encode())
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_id = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    try:
        with app.sync.worker():
            assert app.sync.AsyncResult(child_id).get(timeout=TIMEOUT) == 42
    finally:
        app.sync.close()
        blocking.shutdown()
