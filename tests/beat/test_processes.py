"""Real scheduler processes: several run at once, the leader is killed with SIGKILL, and
every slot of a per-second and a per-minute entry still runs exactly once.

Redis: two ``aqueue beat`` processes and an ``aqueue worker --beat``; SQLite: two
``aqueue beat`` processes and a worker. The kill falls a second before a minute boundary,
so the cron slot falls due while nobody leads. Figures (takeover, the lateness of the slots
after the kill) are printed; ``AQUEUE_BEAT_SOAK=<seconds>`` runs longer for the record.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from aqueue import App
from aqueue.beat import BeatSchedule

from ..conftest import delete_redis_prefix, make_url, prefix_of

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.beat.proc_app:app"
#: seconds the fleet runs before and after the kill (longer runs for the record)
SOAK = float(os.environ.get("AQUEUE_BEAT_SOAK", "8"))


def fleet_env(kind: str, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AQUEUE_")},
        "AQUEUE_BROKER_URL": make_url(kind, tmp_path),
        "AQUEUE_TEST_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }


class Fleet:
    """The processes of one test, each logging to a file; all stopped at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "aqueue.cli", *args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def by_pid(self, pid: int) -> str:
        return next(name for name, proc in self.procs.items() if proc.pid == pid)

    async def stop(self, name: str) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(proc.wait, 40)  # the other fleet's loop runs on

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for p in sorted(self.logs.glob("*.log"))
            if p.name != "executions.log"
        )


async def leader(schedule: BeatSchedule) -> str | None:
    return await schedule.leader()


async def wait_for(what: str, check, limit: float = 30.0):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() - start < limit, f"{what}: not within {limit} s"
        await asyncio.sleep(0.05)


@pytest.mark.redis
@pytest.mark.waits_for_the_clock
@pytest.mark.timeout(3 * SOAK + 150)  # waiting for a minute boundary, the run, the drain
async def test_every_slot_runs_once_through_a_leader_kill(tmp_path: Path) -> None:
    """Redis and SQLite side by side (both wait for the same minute boundary)."""
    runs = {kind: tmp_path / kind for kind in ("redis", "sqlite")}
    for path in runs.values():
        path.mkdir()
    envs = {kind: fleet_env(kind, path) for kind, path in runs.items()}
    try:
        await asyncio.gather(*(run_fleet(kind, envs[kind], runs[kind]) for kind in runs))
    finally:
        delete_redis_prefix(prefix_of(envs["redis"]["AQUEUE_BROKER_URL"]))


async def run_fleet(kind: str, env: dict[str, str], tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    fleet = Fleet(env, logs)
    app = App("beatproc", broker=env["AQUEUE_BROKER_URL"])
    try:
        async with app, BeatSchedule(app) as schedule:
            fleet.start("beat-1", "beat", APP, "-l", "info")
            fleet.start("beat-2", "beat", APP, "-l", "info")
            await wait_for("a leader", lambda: leader(schedule))
            worker_args = ["worker", APP, "-c", "50", "-l", "info"]
            if kind == "redis":
                worker_args.append("--beat")  # a third scheduler, inside the worker
            fleet.start("worker", *worker_args)
            # kill a second before a minute boundary: the cron slot falls in the takeover
            now = time.time()
            kill_at = (now + SOAK) // 60 * 60 + 59
            if kill_at < now + SOAK:
                kill_at += 60
            await asyncio.sleep(kill_at - time.time())
            holder = await leader(schedule)
            assert holder is not None, fleet.tail()
            victim = fleet.by_pid(int(holder.split(":")[-2]))
            assert victim.startswith("beat-"), holder  # the worker started after one led
            fleet.procs[victim].send_signal(signal.SIGKILL)
            killed = time.time()
            successor = await wait_for(
                "a new leader",
                lambda: _other(schedule, holder),
                limit=20,
            )
            takeover = time.time() - killed
            await asyncio.sleep(SOAK + 2)
            for name in fleet.procs:
                if name != victim:
                    assert await fleet.stop(name) == 0, fleet.tail()
            # what the schedulers published and the worker had not yet run
            drain = fleet.start("drain", "worker", APP, "--burst", "-l", "info")
            assert await asyncio.to_thread(drain.wait, 60) == 0, fleet.tail()
            entries = {e.name: e for e in await schedule.entries(results=False)}
    finally:
        fleet.close()
    runs = [line.split() for line in (tmp_path / "executions.log").read_text().splitlines()]
    per_slot = Counter((entry, slot) for _, entry, slot, _ in runs)
    duplicates = {key: n for key, n in per_slot.items() if n > 1}
    seconds = sorted(
        datetime.fromisoformat(s).timestamp() for e, s in per_slot if e == "every-second"
    )
    gaps = [(a, b) for a, b in itertools.pairwise(seconds) if b - a != 1]
    minutes = sorted(
        datetime.fromisoformat(s).timestamp() for e, s in per_slot if e == "every-minute"
    )
    last_second = entries["every-second"].last_run
    assert last_second is not None
    late = [
        float(at) - datetime.fromisoformat(slot).timestamp()
        for at, entry, slot, _ in runs
        if entry == "every-second" and killed - 1 <= datetime.fromisoformat(slot).timestamp()
    ]
    successor_name = fleet.by_pid(int(str(successor).split(":")[-2]))
    print(
        f"\n{kind}: {len(seconds)} per-second slots and {len(minutes)} cron slots ran; "
        f"duplicates {len(duplicates)}, gaps {len(gaps)}; leader {victim} killed, "
        f"{successor_name} led {takeover:.2f} s later; slots due after the kill ran at most "
        f"{max(late):.2f} s late (median of all: {sorted(late)[len(late) // 2]:.2f} s)"
    )
    assert not duplicates and not gaps
    assert seconds[-1] == last_second.timestamp()  # every slot published also ran
    boundary = kill_at + 1
    assert boundary in minutes  # the cron slot that fell due while nobody led
    assert all(b - a == 60 for a, b in itertools.pairwise(minutes))
    assert takeover < 15  # the lease (5 s) and a standby's next try (1 s), with slack


async def _other(schedule: BeatSchedule, old: str) -> str | None:
    holder = await schedule.leader()
    return holder if holder is not None and holder != old else None


def _at(slot: str) -> float:
    return datetime.fromisoformat(slot).timestamp()
