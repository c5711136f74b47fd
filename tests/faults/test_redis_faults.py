"""docs/reliability.md rows 9-13 and the indeterminate enqueue, against real Redis servers.

Every fault is injected on a private ``redis-server`` started by the test (the shared one on
6379 is never touched) or on a TCP proxy in front of one. Each test prints its figures:
N, lost/N, extra executions/N and recovery seconds (from the end of the fault to the first
task executed after it). Workers are embedded; executions are counted in-process by task
argument.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from aqueue import App
from aqueue.backends.redis import RedisBackend
from aqueue.brokers.redis import RedisBroker
from aqueue.core.errors import BackendError, BrokerError, IndeterminatePublish, PublishTimeout
from aqueue.core.protocols import Outgoing
from aqueue.core.result import AsyncResult

from .redis_server import HOST, RedisServer, running_server
from .tcp_proxy import TcpProxy

pytestmark = [pytest.mark.faults, pytest.mark.redis, pytest.mark.slow]

PASSWORD = "s3cret-pw"
#: errors a producer may see from delay(); each is answered by re-sending the same task id
SEND_ERRORS = (PublishTimeout, IndeterminatePublish, BrokerError)


# -- bookkeeping ------------------------------------------------------------------------------


class Tally:
    """Executions by task argument, with their times, and a way to await a condition."""

    def __init__(self) -> None:
        self.runs: Counter[int] = Counter()
        self.times: list[float] = []
        self._changed = asyncio.Event()

    def record(self, i: int) -> None:
        self.runs[i] += 1
        self.times.append(time.monotonic())
        self._changed.set()

    def lost(self, ids: range | list[int]) -> int:
        return sum(1 for i in ids if self.runs[i] == 0)

    def extra(self, ids: range | list[int]) -> int:
        return sum(max(0, self.runs[i] - 1) for i in ids)

    def first_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first execution after it."""
        later = [x for x in self.times if x >= t]
        return min(later) - t if later else None

    async def until(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                if predicate():
                    return
                await self._changed.wait()


@dataclass
class Stats:
    """What producers and waiters saw."""

    send_errors: Counter[str] = field(default_factory=Counter)
    wait_errors: Counter[str] = field(default_factory=Counter)
    #: every exception a producer or waiter caught (checked for secrets)
    exceptions: list[BaseException] = field(default_factory=list)
    #: (started, seconds, outcome) of every publish attempt
    publishes: list[tuple[float, float, str]] = field(default_factory=list)
    #: monotonic time each id's send was confirmed
    confirmed: dict[int, float] = field(default_factory=dict)

    def slowest(self, outcome: str | None = None) -> float:
        took = [s for _, s, o in self.publishes if outcome is None or o == outcome]
        return max(took, default=0.0)


def make_app(url: str, tally: Tally, **settings: Any) -> tuple[App, Any]:
    app = App("faults", broker=url, **settings)

    @app.task(name="faults.work")
    async def work(i: int) -> int:
        tally.record(i)
        return i * 2

    return app, work


def make_slow_app(url: str, tally: Tally, seconds: float, **settings: Any) -> tuple[App, Any]:
    app = App("faults", broker=url, **settings)

    @app.task(name="faults.slow")
    async def slow(i: int) -> int:
        await asyncio.sleep(seconds)
        tally.record(i)
        return i * 2

    return app, slow


async def send(
    task: Any, i: int, stats: Stats, *, prefix: str, pause: float = 0.05, **options: Any
) -> Any:
    """Send task ``i`` with a fixed id, re-sending the same id until the broker confirms.

    Re-sending the same id after an error is the documented answer to PublishTimeout and
    IndeterminatePublish: the broker refuses an id it already has.
    """
    tid = f"{prefix}-{i}"
    while True:
        t0 = time.monotonic()
        try:
            handle = await task.apply_async((i,), task_id=tid, **options)
        except SEND_ERRORS as exc:
            stats.publishes.append((t0, time.monotonic() - t0, type(exc).__name__))
            stats.send_errors[type(exc).__name__] += 1
            stats.exceptions.append(exc)
            await asyncio.sleep(pause)
            continue
        now = time.monotonic()
        stats.publishes.append((t0, now - t0, "ok"))
        stats.confirmed[i] = now
        return handle


async def collect(handle: AsyncResult[Any], i: int, stats: Stats) -> None:
    """Wait for task ``i``'s result; a backend error is counted and the wait started over."""
    while True:
        try:
            value = await handle.wait(timeout=60)
        except BackendError as exc:
            stats.wait_errors[type(exc).__name__] += 1
            stats.exceptions.append(exc)
            await asyncio.sleep(0.05)
            continue
        assert value == 2 * i, (i, value)
        return


async def drained(app: App, timeout: float) -> None:
    """Wait until the default queue (celery) is empty (ready, delayed and in flight).

    A message whose hand-back failed during a fault stays leased until its lease expires,
    then runs again: only once the queue is empty is the extra-executions figure final.
    """
    async with asyncio.timeout(timeout):
        while await app.broker.size("celery"):
            await asyncio.sleep(0.1)


def report(row: str, **figures: Any) -> None:
    parts = []
    for k, v in figures.items():
        parts.append(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}")
    print(f"\n[{row}] " + " ".join(parts))


def fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.2f}s"


class LogTimes(logging.Handler):
    """Remembers (monotonic time, logger, message) of every record it sees."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.items: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.items.append((time.monotonic(), record.name, record.getMessage()))

    def first(self, after: float, logger: str, text: str) -> float | None:
        for t, name, message in self.items:
            if t >= after and name == logger and text in message:
                return t
        return None


@pytest.fixture
def log_times() -> Iterator[LogTimes]:
    handler = LogTimes()
    logger = logging.getLogger("aqueue")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_server(tmp_path / "redis") as s:
        yield s


async def admin_call(server: RedisServer, *args: Any, timeout: float = 10.0) -> Any:
    """One command on a fresh blocking connection straight to the server, in a thread."""

    def call() -> Any:
        client = server.admin(timeout=timeout)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    return await asyncio.to_thread(call)


def client_ids(server: RedisServer) -> set[int]:
    """Ids of the server's client connections, except admin ones."""
    client = server.admin()
    try:
        return {int(c["id"]) for c in client.client_list() if c.get("name") != "fault-admin"}
    finally:
        client.close()


# -- row 9: connections killed server-side ---------------------------------------------------


def _texts_of(exc: BaseException) -> list[str]:
    out = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen = {id(exc)}
    inner = exc.__cause__ or exc.__context__
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        out += [str(inner), repr(inner)]
        inner = inner.__cause__ or inner.__context__
    return out


async def test_row9_client_kill_with_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    n = 300
    tally, stats = Tally(), Stats()
    kills: list[float] = []
    killed: Counter[str] = Counter()
    reprs: list[str] = []
    rng = random.Random(9)
    with running_server(tmp_path / "redis", password=PASSWORD) as server:
        url = server.url(prefix="row9")
        app, work = make_app(url, tally, lease_seconds=3.0)
        stop_killing = asyncio.Event()

        async def killer() -> None:
            while not stop_killing.is_set():
                try:
                    async with asyncio.timeout(1.0):
                        await stop_killing.wait()
                    return
                except TimeoutError:
                    pass
                for kind in ("normal", "pubsub"):
                    killed[kind] += int(await admin_call(server, "CLIENT", "KILL", "TYPE", kind))
                kills.append(time.monotonic())

        async with app, app.worker(concurrency=20) as worker:
            reprs += [repr(app), repr(app.broker), repr(app.backend), repr(worker)]
            # the settings, and a client made from them as the broker's own is
            reprs += [repr(app.broker.settings), repr(app.broker.settings.async_client())]
            reprs.append(str(app.conf.as_dict()))
            kill_task = asyncio.create_task(killer())
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(75):
                    waiters = []
                    for i in range(n):
                        # a third wait a while (ETA), so some watchers are always subscribed
                        # when the pub/sub connection is killed
                        later = {"countdown": rng.uniform(0.5, 2.5)} if i % 3 == 0 else {}
                        handle = await send(work, i, stats, prefix="row9", **later)
                        waiters.append(asyncio.create_task(collect(handle, i, stats)))
                        await asyncio.sleep(0.01)
                    await asyncio.gather(*waiters)
            finally:
                stop_killing.set()
                await kill_task
            elapsed = time.monotonic() - t0
            await drained(app, 15)

    last = max(tally.times)
    recoveries = [r for k in kills if k < last and (r := tally.first_after(k)) is not None]
    lost, extra = tally.lost(range(n)), tally.extra(range(n))
    report(
        "row 9 CLIENT KILL",
        N=n,
        lost=f"{lost}/{n}",
        extra=f"{extra}/{n}",
        kill_rounds=len(kills),
        killed_normal=killed["normal"],
        killed_pubsub=killed["pubsub"],
        recovery_max=fmt(max(recoveries, default=None)),
        recovery_median=fmt(sorted(recoveries)[len(recoveries) // 2] if recoveries else None),
        send_errors=dict(stats.send_errors),
        wait_errors=dict(stats.wait_errors),
        seconds=elapsed,
    )
    assert kills and killed["normal"] > 0 and killed["pubsub"] > 0, "the fault was not injected"
    assert lost == 0
    # row 29: the password never shows in logs, reprs or exception text
    texts = list(reprs)
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(str(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            texts += _texts_of(record.exc_info[1])
        if record.exc_text:
            texts.append(record.exc_text)
    for exc in stats.exceptions:
        texts += _texts_of(exc)
    leaks = [t for t in texts if PASSWORD in t]
    print(
        f"[row 29] checked {len(caplog.records)} log records, {len(stats.exceptions)} "
        f"exceptions, {len(reprs)} reprs: {len(leaks)} contain the password"
    )
    assert not leaks, leaks[:3]
    assert "***" in reprs[1]  # the broker's repr shows where it points, password masked


# -- row 10: server frozen ---------------------------------------------------------------------


async def test_row10_frozen_server(server: RedisServer) -> None:
    n = 200
    freeze_seconds = 3
    publish_timeout = 1.0
    bound = publish_timeout + 1.0  # the publish deadline plus scheduling slack
    tally, stats = Tally(), Stats()
    url = server.url(prefix="row10", operation_timeout=1, socket_timeout=1, health_check_interval=1)
    app, work = make_app(url, tally, lease_seconds=5.0, publish_timeout=publish_timeout)
    attempts: list[tuple[int, float, float, str]] = []  # (i, started, seconds, outcome)
    handles: dict[int, AsyncResult[Any]] = {}

    async def attempt(i: int) -> None:
        t0 = time.monotonic()
        try:
            handles[i] = await work.apply_async((i,), task_id=f"row10-{i}")
            outcome = "ok"
        except (PublishTimeout, BrokerError) as exc:
            outcome = type(exc).__name__
            stats.exceptions.append(exc)
        attempts.append((i, t0, time.monotonic() - t0, outcome))

    async with app, app.worker(concurrency=20):
        async with asyncio.timeout(60):
            for i in range(50):
                handles[i] = await send(work, i, stats, prefix="row10")
            await tally.until(lambda: len(tally.runs) >= 50, 20)

            def debug_sleep() -> float:
                client = server.admin(timeout=freeze_seconds + 10)
                try:
                    client.execute_command("DEBUG", "SLEEP", freeze_seconds)
                finally:
                    client.close()
                return time.monotonic()

            t_freeze = time.monotonic()
            freeze = asyncio.create_task(asyncio.to_thread(debug_sleep))
            waves: list[asyncio.Task[None]] = []
            ids = iter(range(50, 110))
            for at in (0.2, 1.3, 2.4):
                await asyncio.sleep(max(0.0, t_freeze + at - time.monotonic()))
                waves += [asyncio.create_task(attempt(next(ids))) for _ in range(20)]
            await asyncio.gather(*waves)
            t_thaw = await freeze
            # the failed ones are re-sent with the same id; then the rest
            failed = sorted(i for i, _, _, o in attempts if o != "ok")
            for i in failed:
                handles[i] = await send(work, i, stats, prefix="row10")
            for i in range(110, n):
                handles[i] = await send(work, i, stats, prefix="row10")
            await asyncio.gather(*(collect(h, i, stats) for i, h in handles.items()))
        await drained(app, 15)

    during = [a for a in attempts if a[1] < t_thaw]
    worst = max(s for _, _, s, _ in attempts)
    outcomes = Counter(o for _, _, _, o in attempts)
    first_wave = [o for i, _, _, o in attempts if i < 70]
    lost, extra = tally.lost(range(n)), tally.extra(range(n))
    report(
        "row 10 DEBUG SLEEP",
        N=n,
        lost=f"{lost}/{n}",
        extra=f"{extra}/{n}",
        freeze=f"{t_thaw - t_freeze:.2f}s",
        enqueues_during_freeze=len(during),
        outcomes=dict(outcomes),
        slowest_enqueue=f"{worst:.2f}s",
        bound=f"{bound:.1f}s",
        recovery=fmt(tally.first_after(t_thaw)),
        send_errors=dict(stats.send_errors),
        wait_errors=dict(stats.wait_errors),
    )
    assert len(during) == 60
    assert all(o == "PublishTimeout" for o in first_wave), "the server was not frozen"
    assert worst <= bound, f"an enqueue took {worst:.2f}s, past its {bound}s bound"
    assert lost == 0
    assert extra == 0  # every re-send of an id that got through was refused by the broker


def _debug_sleep(server: RedisServer, seconds: float) -> float:
    """Freeze the server for ``seconds`` (blocking); return when it thawed."""
    client = server.admin(timeout=seconds + 10)
    try:
        client.execute_command("DEBUG", "SLEEP", seconds)
    finally:
        client.close()
    return time.monotonic()


async def _until_frozen(server: RedisServer) -> None:
    """Until the server stops answering: a DEBUG SLEEP sent from a thread has begun."""

    def answers() -> bool:
        client = redis.Redis(
            host=HOST,
            port=server.port,
            socket_timeout=0.2,
            socket_connect_timeout=0.2,
            retry=Retry(NoBackoff(), 0),  # one try: a retried probe could outlast the freeze
        )
        try:
            client.ping()
            return True
        except redis.exceptions.TimeoutError:
            return False
        finally:
            client.close()

    async with asyncio.timeout(10):
        while await asyncio.to_thread(answers):
            pass


async def test_renewal_answered_after_its_holders_acks_loses_nothing(
    server: RedisServer,
) -> None:
    """Issue 11, defect 9: after a freeze the heartbeat reported "N lease(s) lost" although
    nobody else took those tasks and nothing ran twice.

    The heartbeat takes its list of leases; tasks among them finish, and their acks reach
    the frozen server before the renewal: at the thaw the server serves the connections it
    already had before the ones opened during the freeze (the renewal's client opens its
    first connection then). The renewal then finds those messages gone: their own holder
    settled them, they were not lost. A lease that ran out during the freeze while nobody
    claimed it is taken back silently; one that another claim took is still reported.
    """
    url = server.url(prefix="raced", socket_timeout=10, health_check_interval=60)
    broker, rival = RedisBroker(url), RedisBroker(url)
    try:
        await broker.publish([Outgoing(id=f"m{i}", queue="q", body=b"x") for i in range(5)])
        held = await broker.claim(["q"], limit=3, lease_seconds=30, owner="a", timeout=0)
        [short] = await broker.claim(["q"], limit=1, lease_seconds=0.3, owner="a", timeout=0)
        # runs out during the freeze below; nobody claims it
        [lapsing] = await broker.claim(["q"], limit=1, lease_seconds=1, owner="a", timeout=0)
        # the short lease runs out, and another worker's claim (woken at the deadline) takes it
        [taken] = await rival.claim(["q"], limit=1, lease_seconds=30, owner="b", timeout=5)
        assert taken.id == short.id
        snapshot = [d.lease for d in (*held, short, lapsing)]  # what the heartbeat renews

        freeze = asyncio.create_task(asyncio.to_thread(_debug_sleep, server, 2))
        await _until_frozen(server)
        acks = [asyncio.create_task(d.ack()) for d in held[:2]]
        lost = await asyncio.to_thread(broker.renew, snapshot, 30.0)
        await freeze
        assert await asyncio.gather(*acks) == [True, True]
        assert lost == [short.lease]
        assert await held[2].ack() is True
        assert await lapsing.ack() is True  # still its holder's
        assert await taken.ack() is True
    finally:
        await broker.close()
        await rival.close()


# -- row 11: server restarted ------------------------------------------------------------------


async def test_row11a_restart_without_persistence(server: RedisServer) -> None:
    n_before, n_after = 200, 200
    tally, stats = Tally(), Stats()
    url = server.url(
        prefix="row11a", operation_timeout=2, socket_timeout=2, health_check_interval=1
    )
    app, slow = make_slow_app(url, tally, 0.05, lease_seconds=3.0, publish_timeout=2.0)
    before = range(n_before)
    after = range(n_before, n_before + n_after)
    async with app, app.worker(concurrency=4):
        async with asyncio.timeout(60):
            for i in before:
                await send(slow, i, stats, prefix="row11a")
            await tally.until(lambda: len(tally.runs) >= 40, 20)
            t_stop = time.monotonic()
            await asyncio.to_thread(server.restart)  # SIGTERM; no RDB, no AOF: data gone
            t_up = time.monotonic()
            handles = [(await send(slow, i, stats, prefix="row11a"), i) for i in after]
            await asyncio.gather(*(collect(h, i, stats) for h, i in handles))
            await drained(app, 15)
    lost_before = tally.lost(before)
    lost_after = tally.lost(after)
    report(
        "row 11a restart, no persistence",
        N=n_after,
        lost=f"{lost_after}/{n_after}",
        extra=f"{tally.extra(after)}/{n_after}",
        lost_with_the_data=f"{lost_before}/{n_before} (sent before the restart; expected)",
        extra_before=tally.extra(before),
        downtime=f"{t_up - t_stop:.2f}s",
        recovery=fmt(tally.first_after(t_up)),
        send_errors=dict(stats.send_errors),
        wait_errors=dict(stats.wait_errors),
    )
    assert lost_after == 0
    assert tally.extra(after) == 0


async def test_row11b_crash_with_aof_everysec(tmp_path: Path) -> None:
    n = 300
    tally, stats = Tally(), Stats()
    with running_server(tmp_path / "redis", appendonly=True) as server:
        url = server.url(
            prefix="row11b", operation_timeout=2, socket_timeout=2, health_check_interval=1
        )
        # the worker (40 tasks/s) is slower than the producer (~90/s): a backlog builds up
        app, slow = make_slow_app(url, tally, 0.1, lease_seconds=3.0, publish_timeout=2.0)
        handles: dict[int, AsyncResult[Any]] = {}

        async def produce() -> None:
            for i in range(n):
                handles[i] = await send(slow, i, stats, prefix="row11b")
                await asyncio.sleep(0.01)

        async with app, app.worker(concurrency=4):
            async with asyncio.timeout(60):
                t_start = time.monotonic()
                producer = asyncio.create_task(produce())
                await asyncio.sleep(2.0)  # the fault loop: crash 2 s into the run
                t_crash = time.monotonic()
                confirmed_before = {i for i, t in stats.confirmed.items() if t <= t_crash}
                last_second = {i for i in confirmed_before if stats.confirmed[i] > t_crash - 1.0}
                backlog = len(confirmed_before - set(tally.runs))
                # SIGKILL: a crash, not a clean shutdown (which would fsync the AOF)
                await asyncio.to_thread(server.restart, kill=True)
                t_up = time.monotonic()
                await producer
            # everything confirmed before the crash and kept by the AOF runs: wait for it
            # with a deadline (a lost message never runs), then count what never ran
            try:
                await tally.until(lambda: tally.lost(range(n)) == 0, 30)
            except TimeoutError:
                pass
            async with asyncio.timeout(30):
                await asyncio.gather(
                    *(collect(h, i, stats) for i, h in handles.items() if tally.runs[i])
                )
            await drained(app, 15)

    lost_before = sum(1 for i in confirmed_before if tally.runs[i] == 0)
    lost_total = tally.lost(range(n))
    report(
        "row 11b crash (SIGKILL), AOF everysec",
        N=n,
        lost=f"{lost_total}/{n}",
        extra=f"{tally.extra(range(n))}/{n}",
        confirmed_before_crash=len(confirmed_before),
        queued_at_crash=backlog,
        lost_of_confirmed_before_crash=f"{lost_before}/{len(confirmed_before)}",
        confirmed_in_last_second=len(last_second),
        produced_for=f"{t_crash - t_start:.2f}s before the crash",
        downtime=f"{t_up - t_crash:.2f}s",
        recovery=fmt(tally.first_after(t_up)),
        send_errors=dict(stats.send_errors),
        wait_errors=dict(stats.wait_errors),
    )
    assert backlog > 0, "nothing was queued at the crash: the row was not exercised"
    # AOF everysec may lose the last second of writes, never more
    assert lost_before <= len(last_second)
    lost_after = sum(1 for i in range(n) if i not in confirmed_before and tally.runs[i] == 0)
    assert lost_after == 0, "workers did not resume after the restart"


# -- row 12: network blackhole ------------------------------------------------------------------


async def test_row12_network_blackhole(server: RedisServer, log_times: LogTimes) -> None:
    n = 200
    op_timeout = 1.0
    blackhole = 3 * op_timeout
    tally, stats = Tally(), Stats()
    async with TcpProxy(HOST, server.port) as proxy:
        url = server.url(
            proxy.port,
            prefix="row12",
            operation_timeout=op_timeout,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            health_check_interval=op_timeout,
        )
        app, work = make_app(url, tally, lease_seconds=5.0, publish_timeout=op_timeout)
        handles: dict[int, AsyncResult[Any]] = {}

        async def produce() -> None:
            for i in range(n):
                handles[i] = await send(work, i, stats, prefix="row12")
                await asyncio.sleep(0.02)

        async with app, app.worker(concurrency=10):
            async with asyncio.timeout(75):
                producer = asyncio.create_task(produce())
                await tally.until(lambda: len(tally.runs) >= 40, 20)
                t_pause = time.monotonic()
                proxy.pause()
                await asyncio.sleep(blackhole)
                proxy.resume()
                t_resume = time.monotonic()
                await producer
                await asyncio.gather(*(collect(h, i, stats) for i, h in handles.items()))
            await drained(app, 15)
    detected = log_times.first(t_pause, "aqueue.worker", "claim failed")
    detection = None if detected is None else detected - t_pause
    failed = [s for t, s, o in stats.publishes if o != "ok" and t_pause <= t <= t_resume]
    lost, extra = tally.lost(range(n)), tally.extra(range(n))
    report(
        "row 12 blackhole",
        N=n,
        lost=f"{lost}/{n}",
        extra=f"{extra}/{n}",
        blackhole=f"{blackhole:.1f}s",
        detected_after=fmt(detection),
        recovery=fmt(tally.first_after(t_resume)),
        enqueues_failed_in_blackhole=len(failed),
        slowest_failed_enqueue=fmt(max(failed, default=None)),
        send_errors=dict(stats.send_errors),
        wait_errors=dict(stats.wait_errors),
    )
    # the worker notices before the network heals (its deadline is the operation timeout plus
    # one blocking wait of at most half the socket timeout)
    assert detection is not None and detection < blackhole
    assert all(s <= op_timeout + 1.0 for s in failed)
    assert lost == 0


# -- row 13: cancelled command mid-reply ----------------------------------------------------------


async def test_row13_cancelled_command_mid_reply(server: RedisServer) -> None:
    n = 200
    rng = random.Random(13)
    async with TcpProxy(HOST, server.port) as proxy:
        url = server.url(proxy.port, prefix="row13")
        backend = RedisBackend(url)
        broker = RedisBroker(url)
        wrong = 0
        cancelled = 0
        answered = 0
        try:
            writer = RedisBackend(url)
            try:
                await asyncio.gather(
                    *(
                        writer.store(f"r{i}", b"value-%d" % i, state="SUCCESS", attempt=1, ttl=600)
                        for i in range(n)
                    )
                )
            finally:
                await writer.close()
            await backend.connect()
            assert await backend.get("r0") == b"value-0"
            before = await asyncio.to_thread(client_ids, server)
            assert len(before) == 1, before  # the backend's one pooled connection

            # a get cancelled while its reply is held by the proxy
            proxy.reply_delay = 0.5
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await backend.get("r1")
            # the cancelled connection is dropped, never handed to the next caller
            async with asyncio.timeout(5):
                while before & await asyncio.to_thread(client_ids, server):
                    await asyncio.sleep(0.02)

            async def get(i: int, limit: float | None) -> None:
                nonlocal wrong, cancelled, answered
                try:
                    async with asyncio.timeout(limit):
                        value = await backend.get(f"r{i}")
                except TimeoutError:
                    cancelled += 1
                    return
                answered += 1
                if value != b"value-%d" % i:
                    wrong += 1

            # concurrent gets in waves smaller than the pool (so none waits for a connection),
            # 15 of each 50 with a deadline at a random point of their 0.2 s round trip:
            # most are cancelled while their reply is held by the proxy
            proxy.reply_delay = 0.2
            for _ in range(n // 35 + 1):
                calls = [get(rng.randrange(n), None) for _ in range(35)]
                calls += [get(rng.randrange(n), rng.uniform(0.02, 0.3)) for _ in range(15)]
                rng.shuffle(calls)
                await asyncio.gather(*calls)
            # then every id in turn, on the same backend object
            proxy.reply_delay = 0.0
            for i in range(n):
                await get(i, None)

            # the same on the broker: queue q<k> holds k messages
            sizes = {f"q{k}": k for k in range(1, 11)}
            await broker.publish(
                [
                    Outgoing(id=f"{q}-{j}", queue=q, body=b"x")
                    for q, k in sizes.items()
                    for j in range(k)
                ]
            )
            proxy.reply_delay = 0.5
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await broker.size("q3")
            proxy.reply_delay = 0.1
            wrong_sizes = 0
            for _ in range(3):
                got = await asyncio.gather(*(broker.size(q) for q in sizes))
                wrong_sizes += sum(1 for q, g in zip(sizes, got, strict=True) if g != sizes[q])
        finally:
            await backend.close()
            await broker.close()
    report(
        "row 13 cancelled mid-reply",
        N=answered,
        wrong_answers=f"{wrong}/{answered}",
        cancelled_calls=cancelled + 2,
        wrong_sizes=f"{wrong_sizes}/30",
    )
    assert answered >= n
    assert wrong == 0 and wrong_sizes == 0


# -- indeterminate enqueue -------------------------------------------------------------------------


async def test_indeterminate_enqueue(server: RedisServer) -> None:
    n = 200
    tally, stats = Tally(), Stats()
    indeterminate = 0
    stored_anyway = 0
    async with TcpProxy(HOST, server.port) as proxy:
        url = server.url(proxy.port, prefix="ind")
        app, work = make_app(url, tally, lease_seconds=5.0)
        dedupe = "ind:{q:celery}:dedupe"
        handles: list[tuple[AsyncResult[Any], int]] = []
        async with app, app.worker(concurrency=20):
            async with asyncio.timeout(60):
                for i in range(n):
                    tid = f"ind-{i}"
                    if i % 10 == 5:  # (not the first publish: its script is not loaded yet)
                        # the publish reaches Redis and runs; its reply is lost with the
                        # connection. Had it been re-sent automatically, delay() would have
                        # returned normally instead of raising.
                        proxy.drop_reply_after(tid.encode())
                        with pytest.raises(IndeterminatePublish) as info:
                            await work.apply_async((i,), task_id=tid)
                        stats.exceptions.append(info.value)
                        assert proxy.reply_dropped.is_set()
                        indeterminate += 1
                        if await admin_call(server, "ZSCORE", dedupe, tid) is not None:
                            stored_anyway += 1
                    # (re-)send with the same id: refused if the first one got through
                    handles.append((await work.apply_async((i,), task_id=tid), i))
                await asyncio.gather(*(collect(h, i, stats) for h, i in handles))
            await drained(app, 15)
    lost, extra = tally.lost(range(n)), tally.extra(range(n))
    report(
        "indeterminate enqueue",
        N=n,
        lost=f"{lost}/{n}",
        extra=f"{extra}/{n}",
        indeterminate=indeterminate,
        stored_before_the_reply_was_lost=f"{stored_anyway}/{indeterminate}",
        replies_dropped=proxy.dropped,
    )
    assert indeterminate == n // 10 and stored_anyway == indeterminate
    assert lost == 0 and extra == 0
