"""The process pool behind ``offload="process"`` and ``await aqueue.offload(...)``."""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aqueue.core import limits
from aqueue.core.errors import ConfigurationError, SoftTimeLimitExceeded, TimeLimitExceeded
from aqueue.core.offload import (
    ProcessPool,
    RemoteError,
    RemoteTraceback,
    WorkerLostError,
    close_default_pool,
    offload,
    reset_current_pool,
    set_current_pool,
)

from . import offload_funcs as funcs

pytestmark = pytest.mark.slow

DEADLINE = 10.0  # seconds any single wait may take before the test fails


def _offload_children() -> list[int]:
    """Pool processes (zombies included) whose parent is this test process."""
    found = []
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:"))
        if ppid == me and b"aqueue.core.offload_child" in cmdline:
            found.append(int(entry.name))
    return found


def _reaped(pid: int) -> bool:
    """True once ``pid`` is gone and reaped (a zombie still accepts signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    assert _offload_children() == []
    yield
    assert _offload_children() == [], "pool processes outlived their pool"


@pytest.fixture
async def pool() -> AsyncIterator[ProcessPool]:
    async with ProcessPool(1) as the_pool:
        yield the_pool


async def _wait_for(path: Path) -> None:
    async with asyncio.timeout(DEADLINE):
        while not path.exists():
            await asyncio.sleep(0.01)


# -- values and errors ---------------------------------------------------------------------


async def test_values_round_trip(pool: ProcessPool) -> None:
    for value in (7, -(2**63), 1.5, "héllo", b"\x00\xff", [1, "a", None], {"k": [1, {"n": b""}]}):
        assert await pool.run(funcs.echo, (value,), {}) == value
    assert await pool.run(funcs.add, (2,), {"y": 3}) == 5
    # Decoded against the annotations on both sides: a Struct and a tuple stay themselves.
    assert await pool.run(funcs.swap, (funcs.Point(1, 2),), {}) == funcs.Point(2, 1)
    assert await pool.run(funcs.pair, (1, "b"), {}) == (1, "b")
    assert await pool.run(funcs.noisy, (), {}) == "quiet"  # print() did not break the pipe


async def test_a_builtin_exception_keeps_type_message_and_remote_traceback(
    pool: ProcessPool,
) -> None:
    with pytest.raises(ValueError, match=r"^bad value$") as info:
        await pool.run(funcs.fail, ("bad value",), {})
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "offload_funcs.py" in cause.traceback
    assert "in fail" in cause.traceback
    assert "raise ValueError(message)" in "".join(traceback.format_exception(info.value))

    with pytest.raises(KeyError) as key_info:
        await pool.run(funcs.missing_key, ("k",), {})
    assert str(key_info.value) == "'k'"  # rebuilt from its args, not from the message


async def test_other_exceptions_become_remote_errors_named_like_the_original(
    pool: ProcessPool,
) -> None:
    with pytest.raises(RemoteError, match=r"^custom trouble$") as info:
        await pool.run(funcs.custom, ("custom trouble",), {})
    exc = info.value
    assert type(exc).__qualname__ == "CustomError"  # what the worker records
    assert exc.exc_type == "CustomError"
    assert exc.exc_module == "tests.execution.offload_funcs"
    assert "raise CustomError(message)" in exc.traceback
    assert not isinstance(exc, funcs.CustomError)


async def test_unencodable_arguments_and_results_fail_clearly(pool: ProcessPool) -> None:
    with pytest.raises(TypeError, match=r"arguments of .*echo cannot be sent"):
        await pool.run(funcs.echo, (object(),), {})
    pid = await pool.run(funcs.getpid, (), {})
    with pytest.raises(TypeError, match=r"result of .*unencodable cannot be sent back"):
        await pool.run(funcs.unencodable, (), {})
    assert await pool.run(funcs.getpid, (), {}) == pid  # the child lives on


async def test_functions_must_be_importable_by_name(pool: ProcessPool) -> None:
    with pytest.raises(ConfigurationError, match="lambdas and nested functions"):
        await pool.run(lambda: 1, (), {})
    with pytest.raises(ConfigurationError, match="lambdas and nested functions"):
        await pool.run(funcs.make_nested(), (), {})
    with pytest.raises(ConfigurationError, match="async function"):
        await pool.run(funcs.async_task, (), {})
    assert pool.pids and await pool.run(funcs.add, (1, 1), {}) == 2


async def test_tasks_run_their_function(pool: ProcessPool) -> None:
    assert await pool.run(funcs.multiply, (6, 7), {}) == 42
    # bind=True: the child's own Task object is passed as self.
    assert await pool.run(funcs.whoami, (), {}) == "tests.execution.offload_funcs.whoami"


# -- limits ----------------------------------------------------------------------------------


async def test_hard_limit_kills_the_child_and_the_slot_is_reused(pool: ProcessPool) -> None:
    [pid] = pool.pids
    with pytest.raises(TimeLimitExceeded, match=r"time limit \(0.5s\) exceeded"):
        await pool.run(funcs.spin, (), {}, hard=0.5)
    assert _reaped(pid)
    new_pid = await pool.run(funcs.getpid, (), {})
    assert new_pid != pid


async def test_soft_limit_is_raised_inside_the_function(pool: ProcessPool) -> None:
    pid = await pool.run(funcs.getpid, (), {})
    assert await pool.run(funcs.catch_soft, (), {}, soft=0.2, hard=DEADLINE) == "cleaned"
    with pytest.raises(SoftTimeLimitExceeded, match=r"soft time limit \(0.2s\) exceeded"):
        await pool.run(funcs.sleep, (30,), {}, soft=0.2)
    assert await pool.run(funcs.getpid, (), {}) == pid  # soft limits do not cost the child


async def test_offload_follows_the_calling_tasks_limits(pool: ProcessPool) -> None:
    token = set_current_pool(pool)
    try:
        # The coroutine's soft limit is forwarded into the child, where the function sees it.
        cleaned = await limits.run_coroutine(offload(funcs.catch_soft), soft=0.2, hard=DEADLINE)
        assert cleaned == "cleaned"
        [pid] = pool.pids
        with pytest.raises(TimeLimitExceeded):
            await limits.run_coroutine(offload(funcs.spin), soft=None, hard=0.3)
        assert await offload(funcs.add, 2, 2) == 4
        assert pid not in pool.pids
    finally:
        reset_current_pool(token)


async def test_a_cancelled_call_kills_its_child(pool: ProcessPool) -> None:
    [pid] = pool.pids
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await pool.run(funcs.sleep, (30,), {})
    assert await pool.run(funcs.getpid, (), {}) != pid


# -- crashes, recycling, concurrency, shutdown ------------------------------------------------


async def test_a_dying_child_fails_only_its_own_call() -> None:
    async with ProcessPool(2) as pool:
        calls = [pool.run(funcs.add, (i, 1), {}) for i in range(20)]
        for at in (3, 10, 17):
            calls.insert(at, pool.run(funcs.crash, (1,), {}))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        lost = [o for o in outcomes if isinstance(o, WorkerLostError)]
        assert len(lost) == 3
        assert all(o.exitcode == 1 and "exited with code 1" in str(o) for o in lost)
        assert [o for o in outcomes if not isinstance(o, WorkerLostError)] == [
            i + 1 for i in range(20)
        ]
        assert type(lost[0]).__qualname__ == "WorkerLostError"

        with pytest.raises(WorkerLostError, match="killed by signal SIGKILL"):
            await pool.run(funcs.kill_self, (), {})
        assert await pool.run(funcs.add, (1, 2), {}) == 3


async def test_max_tasks_per_child_replaces_the_child_between_calls() -> None:
    async with ProcessPool(1, max_tasks_per_child=2) as pool:
        pids = [await pool.run(funcs.getpid, (), {}) for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert all(_reaped(pid) for pid in set(pids))


async def test_max_memory_per_child_replaces_a_child_that_grew() -> None:
    limit_kib = 60 * 1024
    async with ProcessPool(1, max_memory_per_child=limit_kib) as pool:
        assert await pool.run(funcs.rss, (), {}) < limit_kib  # a fresh child is under it
        first = await pool.run(funcs.getpid, (), {})
        assert await pool.run(funcs.getpid, (), {}) == first
        assert await pool.run(funcs.hoard, (50,), {}) == first  # the call itself completes
        assert await pool.run(funcs.getpid, (), {}) != first


async def test_calls_one_at_a_time_reuse_one_child() -> None:
    pool = ProcessPool(3)  # not started: children start on demand
    try:
        pids = [await pool.run(funcs.getpid, (), {}) for _ in range(4)]
    finally:
        await pool.close()
    assert len(set(pids)) == 1


async def test_concurrency_is_bounded_by_size() -> None:
    async with ProcessPool(2) as pool:
        spans = await asyncio.gather(*(pool.run(funcs.timed_sleep, (0.3,), {}) for _ in range(4)))
    assert len({pid for pid, _, _ in spans}) <= 2
    most = max(sum(1 for _, s, e in spans if s <= start < e) for _, start, _ in spans)
    assert most <= 2
    assert max(e for _, _, e in spans) - min(s for _, s, _ in spans) >= 0.6


async def test_close_stops_idle_and_busy_children(tmp_path: Path) -> None:
    pool = ProcessPool(3)
    await pool.start()
    pids = pool.pids
    assert len(pids) == 3
    marker = tmp_path / "running"
    busy = asyncio.ensure_future(pool.run(funcs.touch_and_sleep, (str(marker), 30), {}))
    await _wait_for(marker)
    await pool.close(timeout=1.0)
    with pytest.raises(WorkerLostError, match="pool was closed"):
        await busy
    assert pool.pids == []
    assert all(_reaped(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(funcs.getpid, (), {})


async def test_offload_outside_a_worker_uses_a_default_pool() -> None:
    try:
        assert await offload(funcs.add, 2, 3) == 5
        assert await offload(funcs.pair, 1, b="x") == (1, "x")
    finally:
        await close_default_pool()


async def test_close_during_a_child_start_fails_the_waiting_call_cleanly() -> None:
    pool = ProcessPool(1)  # not started: the call starts the child itself
    call = asyncio.ensure_future(pool.run(funcs.getpid, (), {}))
    await asyncio.sleep(0)  # the call is now waiting for its child to start
    await pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await call


async def test_a_child_that_died_while_idle_is_replaced_without_failing_a_call(
    pool: ProcessPool,
) -> None:
    [pid] = pool.pids
    os.kill(pid, 9)
    async with asyncio.timeout(DEADLINE):
        while pid in pool.pids:  # until the pool has noticed the exit
            await asyncio.sleep(0.01)
    assert await pool.run(funcs.getpid, (), {}) != pid
