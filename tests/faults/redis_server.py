"""Private ``redis-server`` processes for the Redis fault tests.

The shared Redis on 127.0.0.1:6379 must never be restarted, frozen or have its connections
killed: a test that injects a fault on the server side starts its own server here, on a
free loopback port, in its own directory, as a child process it owns (no daemonize), and
stops it by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
HOST = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` child process; ``restart()`` keeps its port and directory.

    Args:
        directory: its working directory (RDB/AOF files and the log go there).
        password: ``requirepass``; clients must use it.
        appendonly: AOF on (the durability variant), with ``appendfsync`` (default
            ``everysec``; ``always``: nothing acknowledged is lost to a crash).
        tls: ``(certificate, key)`` files: TLS on ``tls_port`` too; plaintext stays on
            ``port`` (for the test's own admin client).
        tls_ca: the CA file the server trusts client certificates from (default: the
            certificate itself).
        tls_auth_clients: whether clients must show a certificate signed by ``tls_ca``.
        unix_socket: listen on ``socket_path`` too.
        extra_args: more ``redis-server`` arguments (``--replicaof``, ``--masterauth``).
        cluster: a Redis Cluster node (``cluster-enabled``), failed over by its peers
            after ``cluster_node_timeout`` ms of silence (see :mod:`.redis_cluster`).
    """

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
        tls_ca: Path | None = None,
        tls_auth_clients: bool = False,
        unix_socket: bool = False,
        extra_args: tuple[str, ...] = (),
        cluster: bool = False,
        cluster_node_timeout: int = 2000,
    ) -> None:
        self.directory = directory
        self.password = password
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.tls_ca = tls_ca
        self.tls_auth_clients = tls_auth_clients
        self.socket_path = directory / "redis.sock" if unix_socket else None
        self.extra_args = extra_args
        self.cluster = cluster
        self.cluster_node_timeout = cluster_node_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- URLs and clients -----------------------------------------------------------------

    def url(self, port: int | None = None, **query: object) -> str:
        """A ``redis://`` URL for this server (or for a proxy in front of it on ``port``)."""
        auth = f":{self.password}@" if self.password else ""
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis://{auth}{HOST}:{port or self.port}/0" + (f"?{tail}" if tail else "")

    def admin(self, timeout: float = 10.0) -> redis.Redis:
        """A blocking client straight to the server (not through any proxy)."""
        client = redis.Redis(
            host=HOST,
            port=self.port,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=2,
            client_name="fault-admin",
        )
        return client

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            "--enable-debug-command",
            "local",
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
            if self.cluster:  # a replica authenticates to its master
                args += ["--masterauth", self.password]
        if self.tls is not None:
            cert, key = self.tls
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(cert)]
            args += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(self.tls_ca or cert)]
            args += ["--tls-auth-clients", "yes" if self.tls_auth_clients else "no"]
        if self.socket_path is not None:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        args += self.extra_args
        if self.cluster:
            args += ["--cluster-enabled", "yes"]
            args += ["--cluster-config-file", str(self.directory / f"nodes-{self.port}.conf")]
            args += ["--cluster-node-timeout", str(self.cluster_node_timeout)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.starts += 1
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the server answers PING (and has loaded its data)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = self.directory / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {tail}")
            client = self.admin(timeout=1.0)
            try:
                if client.ping():
                    return
            except redis.exceptions.BusyLoadingError as exc:
                last = exc
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                last = exc
            finally:
                client.close()
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} not ready: {last}")

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server by PID: SIGTERM (or SIGKILL at once), SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL for a crash) and start again on the same port and dir."""
        self.stop(kill=kill)
        self.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Startable(Protocol):
    """What :func:`running` runs: a server, a cluster, a Sentinel setup."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


@contextlib.contextmanager
def running(processes: S, directory: Path) -> Iterator[S]:
    """``processes`` started, stopped afterwards, and ``directory`` (theirs) then removed,
    unless ``AQUEUE_KEEP_REDIS_DIRS`` is set."""
    try:
        processes.start()
        yield processes
    finally:
        processes.stop()
        if os.environ.get("AQUEUE_KEEP_REDIS_DIRS") is None:
            shutil.rmtree(directory, ignore_errors=True)


def running_server(
    directory: Path, **options: object
) -> contextlib.AbstractContextManager[RedisServer]:
    """A started :class:`RedisServer`, stopped (and its directory removed) afterwards."""
    return running(RedisServer(directory, **options), directory)  # type: ignore[arg-type]
