"""The orchestrator: runs scenarios one system at a time and measures them.

Every run starts and ends with ``FLUSHDB`` on Redis DB 15 (the benchmark's own DB) and the
system's own clean-up; every worker and producer is a separate process in its own process
group, killed (group and all) when its run ends, whether it passed, failed or timed out.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis

from .config import (
    AMQP_URL,
    DRAIN_CONCURRENCY,
    IO_CONCURRENCY,
    K_ARRIVED,
    K_DONE,
    K_GO,
    K_LAST,
    REDIS_URL,
    Sizes,
)
from .procs import Proc
from .systems import get
from .systems.base import PY, System

SCENARIOS = ("enqueue", "drain", "rtt", "io", "scale")
ENQUEUE_MODES = ("one", "concurrent", "bulk")
#: systems whose queue is not Redis: Redis command counts would only show the counter
NON_REDIS = {"aqueue-sqlite", "aqueue-amqp", "aqueue-amqp-rpc", "taskiq-amqp"}


class ScenarioError(Exception):
    """A run failed; the message is recorded instead of numbers."""


class Skip(Exception):
    """The system does not support this scenario; the reason is recorded as n/a."""


@dataclass
class Snapshot:
    t: float
    cpu: float  # worker process trees, user + system seconds
    redis_cpu: float
    cmds: dict[str, int] = field(default_factory=dict)
    steal: tuple[int, int] = (0, 0)  # (steal, total) jiffies from /proc/stat
    rabbit_cpu: float | None = None  # the RabbitMQ server's user + system seconds
    busy: tuple[int, int] = (0, 0)  # (busy, total) jiffies of the whole machine
    redis_net: int = 0  # bytes Redis received + sent (its clients' traffic, the harness's too)


def _cpu_jiffies() -> list[int]:
    """The machine's CPU times since boot, summed over its cores (``/proc/stat``'s first
    line: user, nice, system, idle, iowait, irq, softirq, steal...); empty if unreadable."""
    try:
        with open("/proc/stat") as fh:
            return [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def _steal() -> tuple[int, int]:
    """CPU time the hypervisor gave to someone else: noise on a shared VM."""
    fields = _cpu_jiffies()
    return (fields[7] if len(fields) > 7 else 0, sum(fields[:8]))


def busy() -> tuple[int, int]:
    """(busy, total) jiffies of every core since boot: where the machine's CPU went."""
    fields = _cpu_jiffies()
    total = sum(fields[:8])
    idle = sum(fields[3:5])  # idle + iowait
    return (total - idle, total)


def rabbitmq_server(url: str) -> psutil.Process | None:
    """The RabbitMQ server process listening on ``url``'s port (read-only use: its CPU)."""
    port = urlsplit(url).port or 5672
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != "beam.smp":
            continue
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                    return proc
    return None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.r.ping()
        self.rabbit = rabbitmq_server(AMQP_URL)

    # -- plumbing -------------------------------------------------------------------------

    def reset(self, system: System) -> None:
        self.r.flushdb()  # DB 15 only: the benchmark's own
        system.cleanup()

    def producer(
        self,
        system: System,
        action: str,
        n: int,
        kind: str,
        env: dict[str, str],
        warmup: int = 0,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        proc = self.start_producer(system, action, n, kind, env, warmup)
        try:
            deadline = deadline or time.monotonic() + self.sizes.timeout
            while proc.alive():
                if time.monotonic() > deadline:
                    raise ScenarioError(f"producer {action} timed out")
                time.sleep(0.02)
            return self.producer_result(proc)
        finally:
            proc.kill()
            proc.remove_log()

    def start_producer(
        self, system: System, action: str, n: int, kind: str, env: dict[str, str], warmup: int
    ) -> Proc:
        cmd = [PY, "-m", "benchmarks.producer", system.name, action, str(n), kind, str(warmup)]
        return Proc(cmd, env, f"producer-{system.name}")

    @staticmethod
    def producer_result(proc: Proc) -> dict[str, Any]:
        lines = [ln for ln in proc.output().splitlines() if ln.strip()]
        try:
            out: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise ScenarioError(
                f"producer exited {proc.popen.returncode} without a result: {proc.log_tail(5)}"
            ) from None
        if "na" in out:
            raise Skip(out["na"])
        if "error" in out:
            raise ScenarioError(f"producer: {out['error']}")
        return out

    def start_workers(
        self, system: System, count: int, concurrency: int, results: bool, env: dict[str, str]
    ) -> list[Proc]:
        spec = system.worker(concurrency=concurrency, results=results)
        return [
            Proc(spec.cmd, {**env, **spec.env}, f"worker-{system.name}-{i}") for i in range(count)
        ]

    @staticmethod
    def check_alive(procs: list[Proc]) -> None:
        for p in procs:
            if not p.alive():
                raise ScenarioError(
                    f"worker exited with status {p.popen.returncode}: {p.log_tail(8)}"
                )

    def wait_arrivals(self, procs: list[Proc], deadline: float) -> int:
        """Wait until every worker process is blocked at the start gate."""
        want = len(procs)
        while True:
            arrived = int(self.r.get(K_ARRIVED) or 0)
            if arrived >= want:
                return arrived
            self.check_alive(procs)
            if time.monotonic() > deadline:
                if arrived:
                    log(f"    only {arrived}/{want} worker processes reached the gate; starting")
                    return arrived
                raise ScenarioError("no worker process ran a task (timed out at the gate)")
            time.sleep(0.01)

    def snapshot(self, procs: list[Proc]) -> Snapshot:
        cpu = 0.0
        for proc in procs:
            for p in proc.tree():
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    cpu += t.user + t.system
        info = self.r.info("cpu")
        net = self.r.info("stats")
        stats = self.r.info("commandstats")
        cmds = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        rabbit_cpu = None
        if self.rabbit is not None:
            with contextlib.suppress(psutil.Error):
                t = self.rabbit.cpu_times()
                rabbit_cpu = t.user + t.system
        return Snapshot(
            time.time(),
            cpu,
            float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            cmds,
            _steal(),
            rabbit_cpu,
            busy(),
            int(net["total_net_input_bytes"]) + int(net["total_net_output_bytes"]),
        )

    @staticmethod
    def peak_rss_mib(procs: list[Proc]) -> float:
        """Sum of VmHWM (peak resident set) over every worker process tree."""
        total_kib = 0
        for proc in procs:
            for p in proc.tree():
                with contextlib.suppress(OSError), open(f"/proc/{p.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            total_kib += int(line.split()[1])
        return total_kib / 1024

    # -- scenarios --------------------------------------------------------------------------

    def enqueue(self, system: System, mode: str) -> dict[str, Any]:
        if f"enqueue-{mode}" in system.unsupported:
            raise Skip(system.unsupported[f"enqueue-{mode}"])
        self.reset(system)
        try:
            out = self.producer(
                system, f"enqueue-{mode}", self.sizes.enqueue, "noop", system.env(results=False)
            )
        finally:
            self.reset(system)
        return {"rate": out["rate"], "seconds": out["seconds"]}

    def drain(
        self,
        system: System,
        *,
        n: int,
        workers: int = 1,
        concurrency: int = DRAIN_CONCURRENCY,
        kind: str = "noop",
    ) -> dict[str, Any]:
        """Queue n tasks, start the workers, open the gate, time until all n completed."""
        self.reset(system)
        env = system.env(results=False)
        procs: list[Proc] = []
        try:
            fill = self.producer(system, "fill", n, kind, env)
            deadline = time.monotonic() + self.sizes.timeout
            procs = self.start_workers(system, workers, concurrency, False, env)
            arrived = self.wait_arrivals(procs, min(deadline, time.monotonic() + 90))
            before = self.snapshot(procs)
            t_go = time.time()
            self.r.set(K_GO, "1")
            polls = 0
            while True:
                polls += 1
                done = float(self.r.get(K_DONE) or 0)
                if done >= n:
                    break
                self.check_alive(procs)
                if time.monotonic() > deadline:
                    raise ScenarioError(f"timed out with {int(done)}/{n} tasks done")
                time.sleep(0.01)
            after = self.snapshot(procs)
            rss = self.peak_rss_mib(procs)
            lasts = [float(v) for v in self.r.mget(list(self.r.scan_iter(f"{K_LAST}*"))) if v]
            elapsed = max(lasts) - t_go
            cmds = self._own_commands_removed(before, after, polls)
            total_cmds = sum(cmds.values())
            out: dict[str, Any] = {
                "rate": n / elapsed,
                "seconds": elapsed,
                "rss_mib": rss,
                "cpu_us": (after.cpu - before.cpu) / n * 1e6,
                "workers_at_gate": arrived,
                "steal_pct": 100
                * (after.steal[0] - before.steal[0])
                / max(1, after.steal[1] - before.steal[1]),
                "fill": fill.get("method"),
            }
            if "amqp" in system.name and before.rabbit_cpu is not None and after.rabbit_cpu:
                out["rabbit_cpu_us"] = (after.rabbit_cpu - before.rabbit_cpu) / n * 1e6
            window = max(after.t - before.t, 1e-9)
            # where the limit is: how busy each part was during the drain (100 = one core)
            out["worker_busy_pct"] = 100 * (after.cpu - before.cpu) / window
            out["machine_busy_pct"] = (
                100 * (after.busy[0] - before.busy[0]) / max(1, after.busy[1] - before.busy[1])
            )
            if system.name not in NON_REDIS:
                out["redis_cmds"] = total_cmds / n
                out["redis_cpu_us"] = (after.redis_cpu - before.redis_cpu) / n * 1e6
                out["redis_busy_pct"] = 100 * (after.redis_cpu - before.redis_cpu) / window
                out["redis_net_bytes"] = (after.redis_net - before.redis_net) / n
                out["cmd_breakdown"] = {
                    k: round(v / n, 3)
                    for k, v in sorted(cmds.items(), key=lambda kv: -kv[1])
                    if v / n >= 0.005
                }
            return out
        finally:
            for p in procs:
                p.kill()
                p.remove_log()
            self.reset(system)

    @staticmethod
    def _own_commands_removed(before: Snapshot, after: Snapshot, polls: int) -> dict[str, int]:
        """Redis commands between the snapshots, less the harness's and the counter's."""
        delta = {k: v - before.cmds.get(k, 0) for k, v in after.cmds.items()}
        flushes = delta.pop("incrbyfloat", 0)
        delta["set"] = delta.get("set", 0) - flushes - 1  # the counter's SETs and K_GO
        delta["get"] = delta.get("get", 0) - polls
        delta.pop("info", None)
        return {k: v for k, v in delta.items() if v > 0}

    def rtt(self, system: System) -> dict[str, Any]:
        self.reset(system)
        env = system.env(results=True)
        procs: list[Proc] = []
        producer: Proc | None = None
        try:
            procs = self.start_workers(system, 1, DRAIN_CONCURRENCY, True, env)
            producer = self.start_producer(
                system, "rtt", self.sizes.rtt, "noop", env, self.sizes.rtt_warmup
            )
            deadline = time.monotonic() + self.sizes.timeout
            opened = False
            while producer.alive():
                if not opened and int(self.r.get(K_ARRIVED) or 0) >= 1:
                    self.r.set(K_GO, "1")
                    opened = True
                self.check_alive(procs)
                if time.monotonic() > deadline:
                    raise ScenarioError("round trips timed out")
                time.sleep(0.005 if not opened else 0.05)
            out = self.producer_result(producer)
            return out
        finally:
            for p in [*procs, *([producer] if producer else [])]:
                p.kill()
                p.remove_log()
            self.reset(system)

    def run_one(self, scenario: str, system_name: str, **kw: Any) -> dict[str, Any]:
        """One run; returns metrics, ``{"na": reason}`` or ``{"error": message}``."""
        system = get(system_name)
        try:
            if scenario.startswith("enqueue-"):
                return self.enqueue(system, scenario.removeprefix("enqueue-"))
            if scenario == "drain":
                return self.drain(system, n=self.sizes.drain)
            if scenario == "io":
                return self.drain(system, n=self.sizes.io, concurrency=IO_CONCURRENCY, kind="sleep")
            if scenario.startswith("scale-"):
                workers = int(scenario.removeprefix("scale-"))
                return self.drain(system, n=self.sizes.drain, workers=workers)
            if scenario == "rtt":
                return self.rtt(system)
            raise ValueError(scenario)
        except Skip as exc:
            return {"na": str(exc)}
        except ScenarioError as exc:
            return {"error": str(exc)[:600]}
        except Exception as exc:  # a harness-side failure: record it and go on
            return {"error": f"{type(exc).__name__}: {exc}"[:600]}
