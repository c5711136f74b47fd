"""Rate limits and concurrency limits: over-limit tasks wait on the broker, not in a loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from aqueue import App, ConfigurationError
from aqueue.core.admission import Rate, gcra_reserve, parse_rate


def test_parse_rate() -> None:
    assert parse_rate("10/s") == Rate(10, 1)
    assert parse_rate("100/m") == Rate(100, 60)
    assert parse_rate("1000/h") == Rate(1000, 3600)
    assert parse_rate("5/10s") == Rate(5, 10)
    for bad in ("10", "x/s", "0/s", "10/d", ""):
        with pytest.raises(ConfigurationError):
            parse_rate(bad)


def test_gcra_burst_then_spacing() -> None:
    rate = Rate(10, 1.0)
    tat, now, slots = 0.0, 1000.0, []
    for _ in range(15):
        slot, tat = gcra_reserve(tat, now, rate)
        slots.append(round(slot - now, 6))
    assert slots[:10] == [0.0] * 10  # a burst of 10
    assert slots[10:] == [0.1, 0.2, 0.3, 0.4, 0.5]  # then one every 100 ms


def test_bad_rate_fails_at_decoration() -> None:
    app = App("x", broker="memory://bad-rate")
    with pytest.raises(ConfigurationError):

        @app.task(rate_limit="fast")
        async def t() -> None: ...


async def test_rate_limit_spaces_executions(app: App) -> None:
    times: list[float] = []

    @app.task(name="ad.limited", rate_limit="20/s")
    async def limited() -> None:
        times.append(time.monotonic())

    async with app.worker(concurrency=50):
        handles = [await limited.delay() for _ in range(30)]
        await asyncio.gather(*(h.wait(timeout=20) for h in handles))
    times.sort()
    # burst of 20, then one every 50 ms: the last 10 take at least ~0.45 s after the burst
    assert times[-1] - times[0] >= 0.4
    assert len(times) == 30


async def test_concurrency_limit(app: App) -> None:
    running = 0
    peak = 0

    @app.task(name="ad.exclusive", concurrency_limit=2)
    async def exclusive() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    async with app.worker(concurrency=20):
        handles = [await exclusive.delay() for _ in range(8)]
        await asyncio.gather(*(h.wait(timeout=30) for h in handles))
    assert peak == 2


@pytest.mark.redis
async def test_rate_limit_holds_across_workers_on_redis(tmp_path: Any) -> None:
    from ..conftest import delete_redis_prefix, make_url

    url = make_url("redis", tmp_path)
    times: list[float] = []
    apps = [App("fleet", broker=url) for _ in range(2)]
    for a in apps:

        @a.task(name="ad.fleet", rate_limit="10/s")
        async def fleet() -> None:
            times.append(time.monotonic())

    try:
        async with (
            apps[0],
            apps[1],
            apps[0].worker(queues=["a"], concurrency=20),
            apps[1].worker(queues=["b"], concurrency=20),
        ):
            # each worker gets its own 10: per-worker buckets would run all 20 at once
            handles = [await apps[0].send_task("ad.fleet", queue=q) for q in "ab" * 10]
            await asyncio.gather(*(h.wait(timeout=30) for h in handles))
    finally:
        delete_redis_prefix(url.rsplit("prefix=", 1)[1])
    times.sort()
    # one shared bucket: a burst of 10, then 10 more at 100 ms spacing (~0.9 s)
    assert times[-1] - times[0] >= 0.8


async def test_local_throttle_over_simulated_hours() -> None:
    from aqueue.core.admission import LocalThrottle

    now = [1_000_000.0]
    throttle = LocalThrottle(clock=lambda: now[0])
    rate = parse_rate("1000/h")
    # 3 000 calls at one instant: 1 000 now, then one every 3.6 s for two more hours
    slots = [await throttle.reserve_rate("k", rate.limit, rate.period) for _ in range(3000)]
    offsets = [s - now[0] for s in slots]
    assert offsets[:1000] == [0.0] * 1000
    assert offsets[1000] == pytest.approx(3.6) and offsets[-1] == pytest.approx(2000 * 3.6)
    now[0] += 3 * 3600  # three hours later the bucket is full again
    assert await throttle.reserve_rate("k", rate.limit, rate.period) == now[0]
    # concurrency slots are leases: a dead holder's slot frees itself when its lease passes
    assert await throttle.acquire_slot("c", "a", 1, lease_seconds=30)
    assert not await throttle.acquire_slot("c", "b", 1, lease_seconds=30)
    now[0] += 31
    assert await throttle.acquire_slot("c", "b", 1, lease_seconds=30)


async def test_a_reservation_that_comes_back_late_still_runs_the_task_at_once(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot is compared with the clock after the reservation returned: one that took
    50 ms to come back (a loaded machine or server) is a slot for now, and the task runs,
    received once, instead of going back to the broker to wait for a moment already past."""
    from aqueue.brokers.redis.throttle import RedisThrottle
    from aqueue.core.admission import LocalThrottle

    for cls in (LocalThrottle, RedisThrottle):
        original = cls.reserve_rate

        async def late(
            self: Any, key: str, limit: float, period: float, _o: Any = original
        ) -> float:
            await asyncio.sleep(0.05)
            return float(await _o(self, key, limit, period))

        monkeypatch.setattr(cls, "reserve_rate", late)

    @app.task(name="ad.late-slot", rate_limit="100/s")
    async def once() -> int:
        return 1

    async with app.worker() as worker:
        assert await (await once.delay()).wait(timeout=20) == 1
        assert worker.executor.counts == {"ad.late-slot": 1}
