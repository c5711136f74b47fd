"""A private RabbitMQ node for the RabbitMQ fault tests.

The shared RabbitMQ on 127.0.0.1:5672 must never be stopped, restarted or have its
connections closed: other tests and other people use it. A test that stops the server
starts its own node here, as a child process it owns (its own session), and stops it by PID:

* its own Erlang node name (``aqtest-<random>@localhost``), AMQP port and distribution port
  (free loopback ports), all listening on 127.0.0.1 only;
* its own data, log and config under the test's directory (``RABBITMQ_MNESIA_BASE``,
  ``RABBITMQ_LOG_BASE``, an empty ``rabbitmq-env.conf``, a ``rabbitmq.conf`` with only its
  listener), so nothing of the machine's ``/etc/rabbitmq`` applies;
* no plugins (an empty enabled-plugins file), so it opens no other ports;
* its own Erlang cookie: ``HOME`` is a directory of its own holding ``.erlang.cookie``, used
  by the node and by the ``rabbitmqctl -n <node>`` calls made here, and by nothing else.

It runs the scripts of ``/usr/lib/rabbitmq/bin`` directly: ``/usr/sbin``'s wrappers switch
to the ``rabbitmq`` user (and that user's cookie) when run as root. The node process is the
Erlang VM itself (``RUNNING_UNDER_SYSTEMD`` makes the script ``exec`` it), which stops
cleanly on SIGTERM. An ``epmd`` is started by the node only if none runs (it is shared by
every Erlang node on the machine and outlives this one, as it is meant to).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_SBIN = shutil.which("rabbitmq-server")
BIN = Path("/usr/lib/rabbitmq/bin")
if not (BIN / "rabbitmq-server").exists() and _SBIN is not None:  # a layout without wrappers
    BIN = Path(_SBIN).resolve().parent


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class RabbitNode:
    """One private RabbitMQ node; ``halt()`` / ``resume()`` stop and start its application
    (the Erlang VM stays up), ``stop()`` / ``start()`` the whole node, by PID.

    Args:
        directory: where its data, logs, config and cookie live (created).
        tls: ``(ca, certificate, key)`` files: an AMQPS listener on ``tls_port`` too,
            presenting ``certificate``.
        tls_verify_clients: the TLS listener asks for a client certificate signed by
            ``ca`` and refuses a client without one (``verify_peer`` and
            ``fail_if_no_peer_cert``).
    """

    def __init__(
        self,
        directory: Path,
        *,
        tls: tuple[Path, Path, Path] | None = None,
        tls_verify_clients: bool = False,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.tls_verify_clients = tls_verify_clients
        self.tls_port = free_port() if tls else None
        self.name = f"aqtest-{secrets.token_hex(6)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.ctl_port = free_port()  # rabbitmqctl's own distribution port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: seconds the last start took, from spawning the VM to the AMQP port accepting
        self.started_in = 0.0

    # -- configuration ----------------------------------------------------------------------

    def url(self, vhost: str = "%2F", **query: object) -> str:
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"amqp://guest:guest@{HOST}:{self.port}/{vhost}" + (f"?{tail}" if tail else "")

    def _prepare(self) -> dict[str, str]:
        d = self.directory
        home = d / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        conf = f"listeners.tcp.1 = {HOST}:{self.port}\n"
        if self.tls is not None:
            ca, cert, key = self.tls
            verify = self.tls_verify_clients
            conf += (
                f"listeners.ssl.default = {HOST}:{self.tls_port}\n"
                f"ssl_options.cacertfile = {ca}\n"
                f"ssl_options.certfile = {cert}\n"
                f"ssl_options.keyfile = {key}\n"
                f"ssl_options.verify = {'verify_peer' if verify else 'verify_none'}\n"
                f"ssl_options.fail_if_no_peer_cert = {'true' if verify else 'false'}\n"
            )
        (d / "rabbitmq.conf").write_text(conf)
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[].\n")
        return {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RUNNING_UNDER_SYSTEMD": "true",  # exec the VM: the child's PID is the node's
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    # -- rabbitmqctl, on this node only ---------------------------------------------------

    def ctl(self, *args: str, node: str, timeout: float = 90.0) -> str:
        """``rabbitmqctl -n <node> ...`` with this node's cookie; raises if it fails."""
        assert node == self.name, "rabbitmqctl is only ever run against the private node"
        done = subprocess.run(
            [str(BIN / "rabbitmqctl"), "-q", "-n", node, *args],
            env=self._prepare(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def halt(self) -> None:
        """Stop the RabbitMQ application (the VM stays up): ``stop_app`` with ``-n <node>``."""
        self.ctl("stop_app", node=self.name)

    def resume(self) -> None:
        """Start the application again and wait until it has booted."""
        self.ctl("start_app", node=self.name)
        self.ctl("-t", "60", "await_startup", node=self.name)

    # -- the node process -------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> float:
        """Start the node and return once it accepts AMQP connections; seconds it took."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = self._prepare()
        t0 = time.monotonic()
        with open(self.directory / "server.out", "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "rabbitmq-server")],
                env=env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its helpers share its process group, killed with it
            )
        self.starts += 1
        deadline = t0 + timeout
        while not all(port_open(p) for p in (self.port, self.tls_port) if p is not None):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"RabbitMQ node {self.name} exited with {self.proc.returncode}: "
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ node {self.name} not up after {timeout}s")
            time.sleep(0.05)
        self.started_in = time.monotonic() - t0
        return self.started_in

    def stop(self, *, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop the node by PID: SIGTERM (a clean shutdown) or SIGKILL, then SIGKILL to
        whatever is left of its process group."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own group: erl_child_setup, inet_gethost

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_tail(self, chars: int = 2000) -> str:
        out = self.directory / "server.out"
        return out.read_text(errors="replace")[-chars:] if out.exists() else ""


@contextlib.contextmanager
def running_node(directory: Path, **options: Any) -> Iterator[RabbitNode]:
    """A started :class:`RabbitNode` (``options`` as for it), stopped by PID afterwards (also
    when the test fails), its directory removed unless ``AQUEUE_KEEP_RABBIT_DIRS`` is set."""
    node = RabbitNode(directory, **options)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        if os.environ.get("AQUEUE_KEEP_RABBIT_DIRS") is None:
            shutil.rmtree(directory, ignore_errors=True)
