"""A private Redis Cluster for the tests: masters (and replicas) on free loopback ports.

Each node is a :class:`~.redis_server.RedisServer` child process with ``cluster-enabled``
in a directory of its own, joined by ``redis-cli --cluster create``; the cluster is ready
once every node reports ``cluster_state:ok`` and agrees on who serves every slot. Nodes
are stopped by PID. The shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from .redis_server import HOST, RedisServer, running

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
#: a node's cluster bus listens on its port + 10000
_BUS_OFFSET = 10000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A loopback port free for a cluster node: itself and its bus port (+10000), both
    below 65536 and outside the kernel's ephemeral range (where clients' ports come from)."""
    for _ in range(1000):
        port = random.randrange(20000, 30000)
        if port in taken or port + _BUS_OFFSET in taken:
            continue
        if _bindable(port) and _bindable(port + _BUS_OFFSET):
            taken.add(port)
            return port
    raise RuntimeError("no free port pair for a cluster node")


class PrivateCluster:
    """``masters`` masters, each with ``replicas`` replicas, on free loopback ports.

    Args:
        directory: a directory per node goes below it.
        appendonly: AOF on every node, with ``appendfsync`` (``always``: a restarted
            master has everything it acknowledged).
        node_timeout: ms of silence after which a master is failed over to its replica.
        password: ``requirepass`` (and ``masterauth``) of every node.
    """

    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        node_timeout: int = 2000,
        password: str | None = None,
    ) -> None:
        self.directory = directory
        self.password = password
        self.masters = masters
        self.replicas = replicas
        taken: set[int] = set()
        self.nodes = [
            RedisServer(
                directory / f"node{i}",
                port=free_cluster_port(taken),
                cluster=True,
                cluster_node_timeout=node_timeout,
                appendonly=appendonly,
                appendfsync=appendfsync,
                password=password,
            )
            for i in range(masters * (1 + replicas))
        ]

    def url(self, **query: object) -> str:
        """A ``redis+cluster://`` URL listing every node."""
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.nodes)
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}{hosts}/0" + (f"?{tail}" if tail else "")

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, create the cluster and wait until it serves every slot."""
        for node in self.nodes:
            node.start()
        if self.masters < 3:  # redis-cli creates clusters of 3 masters or more
            self._assign_slots()
        else:
            self._create()
        self.wait_ok(timeout, replicas=self.masters * self.replicas)

    def _assign_slots(self) -> None:
        """Make a cluster of 1 or 2 masters (and their replicas) by hand: slots split
        evenly, every node introduced to the first."""
        assert len(self.nodes) == self.masters * (1 + self.replicas)
        first = self.nodes[0]
        masters = self.nodes[: self.masters]
        for i, node in enumerate(masters):
            low, high = i * 16384 // self.masters, (i + 1) * 16384 // self.masters - 1
            client = node.admin()
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
                if node is not first:
                    client.execute_command("CLUSTER", "MEET", HOST, first.port)
            finally:
                client.close()
        for i, node in enumerate(self.nodes[self.masters :]):
            master = masters[i % self.masters]
            client = node.admin()
            try:
                client.execute_command("CLUSTER", "MEET", HOST, first.port)
                deadline = time.monotonic() + 10
                while True:  # the replica must know its master's id first
                    try:
                        master_id = self._node_id(master)
                        client.execute_command("CLUSTER", "REPLICATE", master_id)
                        break
                    except redis.exceptions.ResponseError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            finally:
                client.close()

    @staticmethod
    def _node_id(node: RedisServer) -> str:
        client = node.admin()
        try:
            raw = client.execute_command("CLUSTER", "MYID")
            return raw.decode() if isinstance(raw, bytes) else str(raw)
        finally:
            client.close()

    def _create(self) -> None:
        create = [REDIS_CLI, "--no-auth-warning", "--cluster", "create"]
        if self.password:
            create += ["-a", self.password]
        create += [f"{HOST}:{node.port}" for node in self.nodes]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")

    def live(self) -> list[RedisServer]:
        """The nodes whose process is running."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, timeout: float = 30.0, *, replicas: int | None = None) -> None:
        """Block until the cluster has settled: every running node says
        ``cluster_state:ok`` and they agree on the master of every slot, each such master
        is running (a killed one has been failed over), and every running replica's link
        to its master is up; with ``replicas``, that many replicas are running."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            last = self._unsettled(replicas)
            if not last:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the private cluster is not ok: {last}")

    def _unsettled(self, replicas: int | None) -> str:
        """Why the cluster has not settled yet ("" once it has)."""
        views: list[list[tuple[int, int, int]]] = []
        live = {node.port for node in self.live()}
        linked = 0
        for node in self.live():
            client = node.admin(timeout=2.0)
            try:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return f"node {node.port}: {text.splitlines()[0]}"
                slots = client.execute_command("CLUSTER", "SLOTS")
                views.append(sorted((s[0], s[1], int(s[2][1])) for s in slots))
                role = client.info("replication")
                if role.get("role") == "slave":
                    if role.get("master_link_status") != "up":
                        return f"replica {node.port}: link to its master is down"
                    linked += 1
            except redis.exceptions.RedisError as exc:
                return f"node {node.port}: {exc}"
            finally:
                client.close()
        if not views or any(v != views[0] for v in views):
            return "nodes disagree on the slot map"
        if sum(end - start + 1 for start, end, _ in views[0]) != 16384:
            return "not every slot is served"
        if any(port not in live for _, _, port in views[0]):
            return "a stopped master still serves slots"
        if replicas is not None and linked != replicas:
            return f"{linked} of {replicas} replicas are linked"
        return ""

    def master_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now."""
        for node in self.live():
            client = node.admin(timeout=2.0)
            try:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
            finally:
                client.close()
        raise LookupError(key)

    def stop(self) -> None:
        """Stop every node by PID."""
        for node in self.nodes:
            node.stop(kill=True)


def running_cluster(
    directory: Path, **options: object
) -> contextlib.AbstractContextManager[PrivateCluster]:
    """A started :class:`PrivateCluster`, stopped (its directory removed) afterwards."""
    return running(PrivateCluster(directory, **options), directory)  # type: ignore[arg-type]
