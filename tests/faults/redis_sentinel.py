"""A private Redis Sentinel setup for the Sentinel tests: a master, its replicas and three
sentinels, each a ``redis-server`` child process on a free loopback port with its own
directory, stopped by PID.

The shared Redis on 127.0.0.1:6379 is never involved. Sentinels are started with
``redis-server sentinel.conf --sentinel`` (there is no separate binary); their failure
detection is set short (``down-after-milliseconds``) so a crashed master is replaced within
a few seconds.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import redis

from .redis_server import HOST, REDIS_SERVER, RedisServer, free_port, running

MASTER_NAME = "mymaster"


class Sentinel:
    """One sentinel process."""

    def __init__(
        self,
        directory: Path,
        master_port: int,
        *,
        password: str | None,
        master_password: str | None,
        down_after_ms: int,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.master_password = master_password
        self.master_port = master_port
        self.down_after_ms = down_after_ms
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {self.port}",
            f"bind {HOST}",
            "daemonize no",
            f'dir "{self.directory}"',
            f'logfile "{self.directory / "sentinel.log"}"',
            f"sentinel monitor {MASTER_NAME} {HOST} {self.master_port} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} 10000",
            f"sentinel parallel-syncs {MASTER_NAME} 2",
        ]
        if self.master_password:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {self.master_password}")
        if self.password:
            # the sentinels' own password, which they also use with each other
            lines += [f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}"]
        conf = self.directory / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self, timeout: float = 5.0) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=self.port,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=2,
            decode_responses=True,
        )

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class SentinelSetup:
    """A master, ``replicas`` replicas and three sentinels watching them.

    Args:
        directory: one subdirectory per process goes here.
        replicas: how many replicas the master has.
        password: the master's (and replicas') ``requirepass``.
        sentinel_password: the sentinels' ``requirepass``.
        down_after_ms: how long a master stays silent before the sentinels call it down.
    """

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 1,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
    ) -> None:
        self.directory = directory
        self.password = password
        self.sentinel_password = sentinel_password
        # no wait before a full sync (the default waits 5 s for more replicas to join)
        auth = ("--repl-diskless-sync-delay", "0")
        auth += ("--masterauth", password) if password else ()
        self.master = RedisServer(directory / "master", password=password, extra_args=auth)
        self.replicas = [
            RedisServer(
                directory / f"replica{i}",
                password=password,
                extra_args=("--replicaof", HOST, str(self.master.port), *auth),
            )
            for i in range(replicas)
        ]
        self.servers = [self.master, *self.replicas]
        self.sentinels = [
            Sentinel(
                directory / f"sentinel{i}",
                self.master.port,
                password=sentinel_password,
                master_password=password,
                down_after_ms=down_after_ms,
            )
            for i in range(3)
        ]

    # -- URLs ----------------------------------------------------------------------------

    def url(self, db: int = 0, **query: object) -> str:
        """aqueue's spelling: ``redis+sentinel://[:pw@]h1:p1,h2:p2,h3:p3/mymaster/<db>``."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis+sentinel://{auth}{hosts}/{MASTER_NAME}/{db}" + (f"?{tail}" if tail else "")

    def celery_url(self, db: int = 0) -> str:
        """Celery's spelling: ``sentinel://[:pw@]h1:p1/<db>;sentinel://...`` (the master's
        name goes in the ``master_name`` option)."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{HOST}:{s.port}/{db}" for s in self.sentinels)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start everything; return once every sentinel sees the master, every replica and
        the two other sentinels (so a failover can be agreed on)."""
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_until(lambda: self._settled(self.master.port), timeout, "sentinels settled")

    def _settled(self, master_port: int) -> bool:
        for sentinel in self.sentinels:
            with contextlib.closing(sentinel.client(timeout=1.0)) as client:
                state = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
            if isinstance(state, list):
                state = dict(zip(state[::2], state[1::2], strict=True))
            if int(state["port"]) != master_port or "s_down" in state["flags"]:
                return False
            if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                return False
            live = sum(1 for s in self.servers if s.proc is not None and s.proc.poll() is None)
            if int(state["num-slaves"]) < live - 1:
                return False
        return self._replicas_in_sync(master_port)

    def _replicas_in_sync(self, master_port: int) -> bool:
        """Every live replica of ``master_port`` is connected and has caught up."""
        master = self.server(master_port)
        with contextlib.closing(master.admin(timeout=1.0)) as admin:
            info = admin.info("replication")
        if info.get("role") != "master":
            return False
        live = [s for s in self.servers if s is not master and s.proc and s.proc.poll() is None]
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return len(online) >= len(live) and all(v.get("state") == "online" for v in online)

    def wait_until(self, check: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if check():  # type: ignore[operator]
                    return
            except (redis.exceptions.RedisError, KeyError, OSError) as exc:
                last = exc
            time.sleep(0.05)
        raise TimeoutError(f"{what}: not within {timeout}s ({last!r})")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    # -- the master ----------------------------------------------------------------------

    def master_port(self) -> int:
        """The master's port as the first answering sentinel reports it."""
        for sentinel in self.sentinels:
            try:
                with contextlib.closing(sentinel.client(timeout=1.0)) as client:
                    _, port = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                    )
                return int(port)
            except redis.exceptions.ConnectionError:
                continue
        raise RuntimeError("no sentinel answers")

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def failover(self, timeout: float = 30.0) -> tuple[int, int]:
        """``SENTINEL FAILOVER``; returns (old port, new port) once every sentinel names the
        new master, the new master says it is one, and the old master follows it."""
        old = self.master_port()
        with contextlib.closing(self.sentinels[0].client()) as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        new = self._await_new_master(old, timeout)
        return old, new

    def crash_master(self, timeout: float = 30.0) -> tuple[int, int]:
        """``kill -9`` the master; returns (old port, new port) once a replica was promoted
        and every sentinel names it."""
        old = self.master_port()
        self.server(old).stop(kill=True)
        new = self._await_new_master(old, timeout)
        return old, new

    def _await_new_master(self, old: int, timeout: float) -> int:
        def moved() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                with contextlib.closing(sentinel.client(timeout=1.0)) as client:
                    _, port = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                    )
                ports.add(int(port))
            if len(ports) != 1 or old in ports:
                return False
            with contextlib.closing(self.server(ports.pop()).admin(timeout=1.0)) as admin:
                return bool(admin.info("replication").get("role") == "master")

        self.wait_until(moved, timeout, "a new master")
        return self.master_port()

    def await_settled(self, timeout: float = 30.0) -> None:
        """Every live server follows the current master and is in sync with it."""
        self.wait_until(lambda: self._settled(self.master_port()), timeout, "settled")


def running_sentinels(
    directory: Path, **options: object
) -> contextlib.AbstractContextManager[SentinelSetup]:
    """A started :class:`SentinelSetup`, stopped (and its directory removed) afterwards."""
    return running(SentinelSetup(directory, **options), directory)  # type: ignore[arg-type]
