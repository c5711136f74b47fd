"""``python -m benchmarks.chaos``: a fault and load run anyone can repeat (``make chaos``).

Per broker, N worker processes (``--concurrency`` each) drain M tasks of 0.2 s, sent at an
even pace over ``--seconds``, while K faults are injected at random times from a seeded
schedule (one at a time, each at least ``--gap`` seconds after the previous one ended; if
that makes them run past the window, sending goes on at the same pace until the last is
over, so the run may send more than M); at
the end it prints what was lost, what ran twice and how long recovery took. Exit status 1 if
any task the broker acknowledged never completed (or the drain timed out).

The faults:

* ``kill``: ``kill -9`` a worker process (its process group), then start a replacement;
* ``stop``: ``SIGSTOP`` a worker for 1-6 s (longer than ``worker_lost_timeout``, 3 s, about
  half the time: its tasks are handed to others and its late acks refused), then ``SIGCONT``;
* ``restart`` (Redis, RabbitMQ): ``kill -9`` the server, down 0.5-3 s, start it again with
  its data (Redis: AOF with ``appendfsync always``; RabbitMQ: quorum queues on disk);
* ``partition`` (Redis, RabbitMQ): every connection, producer's and workers', goes through
  a TCP proxy (``tests/faults/tcp_proxy.py``); it stops forwarding for 1-5 s (a blackhole:
  sockets stay open, what was sent meanwhile arrives late).

SQLite has no server: only the worker faults apply (its ``kill -9`` lands mid-write often
enough, and a ``SIGSTOP`` can freeze a worker holding the write lock).

The servers are PRIVATE: a ``redis-server`` (``tests/faults/redis_server.py``) and a RabbitMQ
node (``tests/faults/rabbitmq_node.py``) started by this run on free loopback ports, in a
temporary directory, stopped by PID at the end. The shared servers on 6379/5672 are never
used.

Bookkeeping: each task (``benchmarks/chaos_app.py``) appends ``S`` when it starts and ``D``
when it is done to a file of its worker process's own. The producer sends each task under a
fixed id, re-sending the same id after an error until the broker acknowledges it (or gives
up after ``--send-deadline`` seconds: "unsent", not lost). Then:

* lost: acknowledged, never done;
* duplicated: done more than once (at-least-once allows it: what a killed or frozen worker
  was running, or had finished but not yet acknowledged);
* recovery, per fault: ``kill``/``stop``: from the signal until every task the worker had
  started and not finished was going again (started by another worker, or finished by the
  resumed one); ``restart``/``partition``: from the server
  being back (port open) / the network healed until the first task that *started* after
  that was done. A fault still recovering when a server fault began is marked overlapped
  and left out of the maxima (its figure would be the next fault's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aqueue import App
from aqueue.core.errors import BrokerError
from tests.faults.rabbitmq_node import RabbitNode
from tests.faults.redis_server import HOST, RedisServer
from tests.faults.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
BROKERS = ("sqlite", "redis", "rabbitmq")
WORKER_FAULTS = ("kill", "stop")
SERVER_FAULTS = ("restart", "partition")


# -- the schedule -------------------------------------------------------------------------


@dataclass
class Fault:
    at: float  # seconds after the start of sending
    kind: str
    target: int  # worker slot (kill, stop)
    seconds: float  # how long it lasts (stop, restart, partition)
    started: float = 0.0  # unix time it was injected
    ended: float = 0.0  # unix time it was over (SIGCONT sent, server back, network healed)
    pid: int = 0  # the worker it hit
    recovery: float | None = None
    overlapped: bool = False  # a server fault began before it had recovered: not counted

    def describe(self) -> str:
        what = f"worker {self.target}" if self.kind in WORKER_FAULTS else "server"
        length = "" if self.kind == "kill" else f" for {self.seconds:.1f}s"
        return f"{self.at:6.2f}s {self.kind:9} {what}{length}"


def schedule(rng: random.Random, kinds: list[str], k: int, seconds: float, n: int) -> list[Fault]:
    """K faults at random times in the middle 80% of the sending window."""
    times = sorted(rng.uniform(0.1 * seconds, 0.9 * seconds) for _ in range(k))
    faults = []
    for at in times:
        kind = rng.choice(kinds)
        length = {"kill": 0.0, "stop": rng.uniform(1, 6), "restart": rng.uniform(0.5, 3)}.get(
            kind, rng.uniform(1, 5)
        )
        faults.append(Fault(at, kind, rng.randrange(n), round(length, 2)))
    return faults


# -- worker processes -----------------------------------------------------------------------


class Worker:
    """One ``aqueue worker`` process in its own process group, output to a log file."""

    def __init__(self, slot: int, gen: int, env: dict[str, str], concurrency: int, logs: Path):
        self.slot = slot
        self._log = open(logs / f"worker{slot}-{gen}.log", "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "aqueue.cli", "worker", "benchmarks.chaos_app:app"),
                *("-n", f"chaos{slot}-{gen}@%h", "-c", str(concurrency), "-l", "warning"),
            ],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()

    def stop_gracefully(self, timeout: float = 10.0) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


def worker_env(url: str, chaos_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUEUE_")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["AQUEUE_BROKER_URL"] = url
    env["CHAOS_DIR"] = str(chaos_dir)
    return env


# -- servers -------------------------------------------------------------------------------


class Server:
    """The broker's server, if it has one: restartable, behind a proxy."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.redis: RedisServer | None = None
        self.rabbit: RabbitNode | None = None
        if kind == "redis":
            self.redis = RedisServer(directory / "redis", appendonly=True, appendfsync="always")
        elif kind == "rabbitmq":
            self.rabbit = RabbitNode(directory / "rabbit")
        self.proxy: TcpProxy | None = None

    @property
    def port(self) -> int:
        server = self.redis or self.rabbit
        assert server is not None
        return server.port

    async def start(self) -> None:
        if self.redis is not None:
            await asyncio.to_thread(self.redis.start)
        elif self.rabbit is not None:
            await asyncio.to_thread(self.rabbit.start, 120.0)
        if self.redis or self.rabbit:
            self.proxy = TcpProxy(HOST, self.port)
            await self.proxy.start()

    def url(self, chaos_dir: Path) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{chaos_dir / 'broker.db'}"
        assert self.proxy is not None
        if self.kind == "redis":
            return f"redis://{HOST}:{self.proxy.port}/0?prefix=chaos"
        return f"amqp://guest:guest@{HOST}:{self.proxy.port}/%2F?prefix=chaos"

    async def restart(self, down: float) -> None:
        """kill -9 the server, leave it down ``down`` seconds, start it again (its data kept)."""
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop, kill=True)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.redis.start)
        elif self.rabbit is not None:
            await asyncio.to_thread(self.rabbit.stop, kill=True)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.rabbit.start, 120.0)

    async def partition(self, seconds: float) -> None:
        assert self.proxy is not None
        self.proxy.pause()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.proxy.resume()

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)
        if self.rabbit is not None:
            await asyncio.to_thread(self.rabbit.stop)


# -- what ran --------------------------------------------------------------------------------


@dataclass
class Runs:
    """The workers' execution records: per task number, (time, pid) of starts and dones."""

    starts: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    dones: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def read(cls, chaos_dir: Path) -> Runs:
        runs = cls()
        for path in chaos_dir.glob("exec-*.log"):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) != 5:  # cannot happen (one write per line), but never crash
                    continue
                event, i, _attempt, t, pid = parts
                into = runs.starts if event == "S" else runs.dones
                into[int(i)].append((float(t), int(pid)))
        return runs

    def done(self, i: int) -> bool:
        return bool(self.dones.get(i))

    def back_after(self, i: int, t: float, pid: int) -> float | None:
        """When task ``i``, interrupted at ``t`` on ``pid``, was going again: started by
        another process, or done by anyone (a frozen worker resumed it)."""
        later = [x for x, p in self.starts.get(i, []) if x > t and p != pid]
        later += [x for x, _ in self.dones.get(i, []) if x >= t]
        return min(later) if later else None


def recovery(fault: Fault, runs: Runs) -> float | None:
    """Seconds from the fault to recovery (module docstring); None if nothing to measure."""
    if fault.kind in WORKER_FAULTS:
        hit = [
            i
            for i, starts in runs.starts.items()
            if any(pid == fault.pid and t <= fault.started for t, pid in starts)
            and not any(pid == fault.pid and t <= fault.started for t, pid in runs.dones.get(i, []))
        ]
        if not hit:
            return None
        ends = [runs.back_after(i, fault.started, fault.pid) for i in hit]
        if any(e is None for e in ends):
            return None  # never ran again: counted as lost
        return max(e for e in ends if e is not None) - fault.started
    after = [
        min(t for t, _ in runs.dones[i])
        for i, starts in runs.starts.items()
        if min(t for t, _ in starts) >= fault.ended and runs.dones.get(i)
    ]
    return min(after) - fault.ended if after else None


def measure(faults: list[Fault], runs: Runs) -> None:
    """Each fault's recovery; one still recovering when a server fault began is marked
    overlapped (its figure would be the next fault's) and left out of the maxima."""
    for f in faults:
        f.recovery = recovery(f, runs)
        if f.recovery is None:
            continue
        origin = f.started if f.kind in WORKER_FAULTS else f.ended
        f.overlapped = any(
            g is not f and g.kind in SERVER_FAULTS and f.started < g.started < origin + f.recovery
            for g in faults
        )


# -- one broker ------------------------------------------------------------------------------


@dataclass
class Result:
    broker: str
    seed: int
    tasks: int
    acked: int
    unsent: int
    faults: list[Fault]
    lost: list[int]
    duplicated: int
    reruns: int
    send_errors: Counter[str]
    wall: float
    drained: bool

    def recoveries(self) -> dict[str, float]:
        best: dict[str, float] = {}
        for f in self.faults:
            if f.recovery is not None and not f.overlapped:
                best[f.kind] = max(best.get(f.kind, 0.0), f.recovery)
        return best


async def run_broker(kind: str, args: argparse.Namespace) -> Result:
    seed = args.seed
    rng = random.Random(f"{seed}:{kind}")
    kinds = [k for k in args.kinds if kind != "sqlite" or k in WORKER_FAULTS]
    faults = schedule(rng, kinds, args.faults, args.seconds, args.workers) if kinds else []
    print(
        f"\n== {kind}: {args.workers} workers x {args.concurrency}, {args.tasks} tasks over "
        f"{args.seconds:.0f}s, seed {seed}; faults:",
        flush=True,
    )
    for f in faults:
        print(f"   {f.describe()}", flush=True)

    base = Path(tempfile.mkdtemp(prefix=f"aqueue-chaos-{kind}-"))
    chaos_dir = base / "runs"
    chaos_dir.mkdir()
    server = Server(kind, base)
    workers: list[Worker] = []
    gens = Counter[int]()
    acked: dict[int, float] = {}
    unsent: list[int] = []
    send_errors: Counter[str] = Counter()
    run_id = uuid.uuid4().hex[:8]
    # the producer's reconnect warnings go to the run's directory, not the console
    log = logging.FileHandler(base / "producer.log")
    log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(log)
    try:
        await server.start()
        url = server.url(chaos_dir)
        env = worker_env(url, chaos_dir)
        workers = [Worker(s, 0, env, args.concurrency, base) for s in range(args.workers)]
        producer = App("chaos-producer", broker=url, publish_timeout=args.publish_timeout)
        async with producer:
            # the first workers are up before sending starts (their replacements are not
            # waited for: a fault hits whatever is running)
            async with asyncio.timeout(120):
                while len(await producer.control.inspect(timeout=1).ping()) < len(workers):
                    await asyncio.sleep(0.2)
            t0 = time.time()

            async def send(i: int) -> None:
                tid = f"chaos-{run_id}-{i}"
                give_up = time.monotonic() + args.send_deadline
                while True:
                    try:
                        await producer.send_task("chaos.work", (i, args.task_seconds), task_id=tid)
                    except (BrokerError, OSError, TimeoutError) as exc:
                        send_errors[type(exc).__name__] += 1
                        if time.monotonic() > give_up:
                            unsent.append(i)
                            return
                        await asyncio.sleep(0.2)
                        continue
                    acked[i] = time.time()
                    return

            # the faults run late when one waits for the previous one and the gap (a RabbitMQ
            # node takes 10-20 s to boot): sending goes on at the same pace past M tasks
            # until the last fault is over, so that every fault meets tasks to run
            faults_over = asyncio.Event()
            sent = [0]

            async def sender(lane: int, lanes: int) -> None:
                i = lane
                while i < args.tasks or not faults_over.is_set():
                    delay = t0 + i * args.seconds / args.tasks - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent[0] += 1
                    await send(i)
                    i += lanes

            async def inject() -> None:
                last_end = 0.0
                for f in faults:
                    # at its time, but never before --gap seconds after the previous fault
                    # ended (a RabbitMQ node takes 10-20 s to boot: faults would pile up)
                    due = max(t0 + f.at, last_end + args.gap)
                    if due - time.time() > 0:
                        await asyncio.sleep(due - time.time())
                    f.started = time.time()
                    if f.kind == "kill":
                        w = workers[f.target]
                        f.pid = w.pid
                        await asyncio.to_thread(w.kill)
                        gens[f.target] += 1
                        workers[f.target] = Worker(
                            f.target, gens[f.target], env, args.concurrency, base
                        )
                        f.ended = time.time()
                    elif f.kind == "stop":
                        w = workers[f.target]
                        f.pid = w.pid
                        w.signal(signal.SIGSTOP)
                        try:
                            await asyncio.sleep(f.seconds)
                        finally:
                            w.signal(signal.SIGCONT)
                        f.ended = time.time()
                    elif f.kind == "restart":
                        await server.restart(f.seconds)
                        f.ended = time.time()
                    else:
                        await server.partition(f.seconds)
                        f.ended = time.time()
                    last_end = f.ended
                    late = f.started - (t0 + f.at)
                    print(
                        f"   done: {f.describe()} (took {f.ended - f.started:.1f}s"
                        + (f", began {late:.1f}s late)" if late > 0.5 else ")"),
                        flush=True,
                    )

            lanes = 8

            async def inject_all() -> None:
                try:
                    await inject()
                finally:
                    faults_over.set()

            await asyncio.gather(inject_all(), *(sender(k, lanes) for k in range(lanes)))
            sent_at = time.time()
            print(
                f"   sent: {len(acked)} acknowledged, {len(unsent)} unsent, "
                f"{sum(send_errors.values())} send errors in {sent_at - t0:.1f}s",
                flush=True,
            )
            deadline = time.monotonic() + args.drain_timeout
            drained = False
            while time.monotonic() < deadline:
                runs = Runs.read(chaos_dir)
                if all(runs.done(i) for i in acked):
                    drained = True
                    break
                await asyncio.sleep(0.5)
            wall = time.time() - t0
            # late duplicates (a resumed or slow worker finishing what was handed on) land
            # within a lease; give them a moment so the count is honest
            await asyncio.sleep(args.settle)
        runs = Runs.read(chaos_dir)
        measure(faults, runs)
        (base / "faults.txt").write_text(
            "".join(f"{f.started:.3f} {f.ended:.3f} {f.pid} {f.describe()}\n" for f in faults)
        )
        for f in faults:
            none = "no task in flight" if f.kind in WORKER_FAULTS else "no task started after"
            shown = none if f.recovery is None else f"{f.recovery:.2f}s"
            if f.overlapped:
                shown += " (a server fault began meanwhile: not counted)"
            print(f"   recovery: {f.describe()}: {shown}", flush=True)
        lost = sorted(i for i in acked if not runs.done(i))
        duplicated = sum(max(0, len(runs.dones.get(i, [])) - 1) for i in acked)
        reruns = sum(max(0, len(runs.starts.get(i, [])) - 1) for i in acked)
        return Result(
            kind,
            seed,
            sent[0],
            len(acked),
            len(unsent),
            faults,
            lost,
            duplicated,
            reruns,
            send_errors,
            wall,
            drained,
        )
    finally:
        logging.getLogger().removeHandler(log)
        log.close()
        for w in workers:
            await asyncio.to_thread(w.stop_gracefully, 5.0)
        await server.close()
        if args.keep:
            print(f"   kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


# -- the report -----------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    head = ("broker", "tasks", "faults", "lost", "duplicated", "re-runs", "max recovery", "wall")
    rows = [head]
    for r in results:
        by_kind = Counter(f.kind for f in r.faults)
        faults = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items())) or "none"
        rec = r.recoveries()
        recov = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(rec.items())) or "-"
        tasks = f"{r.acked}/{r.tasks}" + (f" ({r.unsent} unsent)" if r.unsent else "")
        rows.append(
            (
                r.broker,
                tasks,
                faults,
                str(len(r.lost)),
                str(r.duplicated),
                str(r.reruns),
                recov,
                f"{r.wall:.1f}s",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--broker", default="all", choices=[*BROKERS, "all"])
    p.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    p.add_argument("--concurrency", type=int, default=10, help="per worker (default 10)")
    p.add_argument("--tasks", type=int, default=5000, help="tasks sent (default 5000)")
    p.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="the sending window; faults fall in its middle 80%% (default 60)",
    )
    p.add_argument("--faults", type=int, default=12, help="faults injected (default 12)")
    p.add_argument(
        "--kinds",
        default=",".join(WORKER_FAULTS + SERVER_FAULTS),
        help="fault kinds to draw from (default kill,stop,restart,partition; "
        "SQLite uses only the worker ones)",
    )
    p.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (printed)")
    p.add_argument(
        "--task-seconds", type=float, default=0.2, help="each task sleeps this (default 0.2)"
    )
    p.add_argument(
        "--gap",
        type=float,
        default=5.0,
        help="a fault begins at least this long after the previous one ended (default 5)",
    )
    p.add_argument("--publish-timeout", type=float, default=5.0)
    p.add_argument(
        "--send-deadline",
        type=float,
        default=120.0,
        help="give up re-sending one task after this many seconds (unsent)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=180.0,
        help="after sending, wait this long for every acknowledged task",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds to wait after the drain before counting duplicates",
    )
    p.add_argument("--keep", action="store_true", help="keep the run's directory and logs")
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - set(WORKER_FAULTS + SERVER_FAULTS)
    if unknown:
        p.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    return args


async def main(args: argparse.Namespace) -> int:
    brokers = list(BROKERS) if args.broker == "all" else [args.broker]
    print(f"chaos seed {args.seed} (repeat the schedule with --seed {args.seed})", flush=True)
    results = []
    for kind in brokers:
        results.append(await run_broker(kind, args))
    print("\n" + table(results))
    status = 0
    for r in results:
        if r.lost:
            shown = ", ".join(map(str, r.lost[:20]))
            print(f"{r.broker}: LOST {len(r.lost)} acknowledged tasks (seed {r.seed}): {shown}")
            status = 1
        if not r.drained:
            print(f"{r.broker}: not drained within --drain-timeout {args.drain_timeout:.0f}s")
            status = 1
    print(f"seed {args.seed}")
    return status


def run(argv: list[str] | None = None) -> Any:
    return asyncio.run(main(parse(argv)))


if __name__ == "__main__":
    sys.exit(run())
