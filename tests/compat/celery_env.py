"""Real Celery for the compat tests, kept out of aqueue's dependencies.

Celery is installed into a virtualenv of its own under the user's cache directory (built
once with uv, reused after), and runs only as subprocesses: a producer script and
``celery worker --pool solo``. Its Redis side uses database :data:`CELERY_DB` with queue
names unique to each test; nothing is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.conftest import RABBIT_HOST, RABBIT_PORT, REDIS_HOST, REDIS_PORT, delete_rabbit_queues

#: what the virtualenv holds (a change rebuilds it)
CELERY_REQUIREMENT = "celery[redis]>=5.3,<6"
#: the Redis database the Celery side uses in these tests (aqueue's keys stay in 0)
CELERY_DB = 11
CELERY_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{CELERY_DB}"
#: Celery's RabbitMQ (its queues are unique to each test, and deleted after it)
CELERY_AMQP_URL = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}//"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aqueue-tests"


def celery_python() -> Path:
    """The Python of the Celery virtualenv, built if missing (atomically: two test workers
    may build at once; the first rename wins)."""
    home = _cache_dir() / "venv-celery"
    stamp = home / ".requirement"
    if stamp.exists() and stamp.read_text() == CELERY_REQUIREMENT:
        return home / "bin" / "python"
    home.parent.mkdir(parents=True, exist_ok=True)
    building = home.parent / f"venv-celery.{uuid.uuid4().hex[:8]}"
    uv = Path(sys.executable).parent / "uv"
    try:
        subprocess.run(
            [str(uv), "venv", "-q", "--python", sys.executable, str(building)],
            check=True,
            timeout=300,
        )
        subprocess.run(
            [
                str(uv),
                "pip",
                "install",
                "-q",
                "--python",
                str(building / "bin" / "python"),
                CELERY_REQUIREMENT,
            ],
            check=True,
            timeout=600,
        )
        (building / ".requirement").write_text(CELERY_REQUIREMENT)
        if home.exists():
            shutil.rmtree(home, ignore_errors=True)
        with contextlib.suppress(OSError):  # another builder won the rename
            building.rename(home)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return home / "bin" / "python"


#: the Celery project both sides name tasks from: ``mig.c_*`` live on Celery, ``mig.aq_*``
#: moved to aqueue (Celery keeps a stub, routed to the queue aqueue relays)
CELERY_PROJECT = textwrap.dedent(
    """
    import os
    from celery import Celery

    app = Celery("mig", broker=os.environ["MIG_CELERY_URL"], backend=os.environ["MIG_BACKEND"])
    app.conf.update(
        task_default_queue=os.environ["MIG_CELERY_QUEUE"],
        task_routes={"mig.aq_*": {"queue": os.environ["MIG_AQUEUE_QUEUE"]}},
        accept_content=["json"],
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="mig.c_add")
    def c_add(x, y):
        return x + y

    @app.task(name="mig.aq_mul")
    def aq_mul(x, y):
        raise NotImplementedError("moved to aqueue")
    """
)

#: the producer: one command, its outcome printed as one JSON line
CELERY_PRODUCER = textwrap.dedent(
    """
    import json, sys
    from celery import chain
    from celery.exceptions import CeleryError
    from mig import app, c_add, aq_mul

    command = sys.argv[1]
    try:
        if command == "delay":
            result = aq_mul.delay(6, 7)
        elif command == "chain":
            result = chain(c_add.s(1, 2), aq_mul.s(10), c_add.s(5)).apply_async()
        elif command == "pickle":
            result = aq_mul.apply_async((1, 2), serializer="pickle")
        print(json.dumps({"id": result.id, "sent": True}), flush=True)
        value = result.get(timeout=float(sys.argv[2]))
        print(json.dumps({"id": result.id, "value": value}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
    """
)


@dataclass
class CeleryProject:
    """A Celery project in a directory, on this test's own queues."""

    python: Path
    root: Path
    celery_queue: str
    aqueue_queue: str
    #: Celery's broker and result backend
    broker: str = CELERY_URL
    backend: str = CELERY_URL

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
        env.update(
            PYTHONPATH=str(self.root),
            MIG_CELERY_URL=self.broker,
            MIG_BACKEND=self.backend,
            MIG_CELERY_QUEUE=self.celery_queue,
            MIG_AQUEUE_QUEUE=self.aqueue_queue,
        )
        return env

    async def produce(self, command: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Run the producer: what it printed (the sent id, then the value or the error)."""
        proc = await asyncio.create_subprocess_exec(
            str(self.python),
            str(self.root / "producer.py"),
            command,
            str(timeout),
            env=self.env(),
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(timeout + 30):  # a safety net: get() has its own
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        assert lines, f"the Celery producer printed nothing: {err.decode()[-2000:]}"
        return lines

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        """``celery worker --pool solo`` on the Celery queue, ready when entered."""
        proc = await asyncio.create_subprocess_exec(
            str(self.python),
            "-m",
            "celery",
            "-A",
            "mig",
            "worker",
            "--pool",
            "solo",
            "-Q",
            self.celery_queue,
            "-n",
            f"{self.celery_queue}@%h",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
            env=self.env(),
            cwd=self.root,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(60):  # a safety net: it is ready in ~2 s
                while True:
                    line = (await proc.stderr.readline()).decode()
                    if not line:
                        raise AssertionError("celery worker exited:\n" + "".join(seen[-40:]))
                    seen.append(line)
                    if " ready." in line:
                        break
            drain = asyncio.create_task(_drain(proc.stderr, seen))
            yield
        finally:
            if proc.returncode is None:
                # nothing of the test is left for it to finish (a warm shutdown on RabbitMQ
                # takes ten seconds)
                proc.kill()
                await proc.wait()
            with contextlib.suppress(NameError):
                drain.cancel()


async def _drain(stream: asyncio.StreamReader, seen: list[str]) -> None:
    while line := await stream.readline():
        seen.append(line.decode())


def make_project(
    python: Path, root: Path, broker: str = CELERY_URL, backend: str = CELERY_URL
) -> CeleryProject:
    unique = uuid.uuid4().hex[:10]
    root.mkdir(parents=True, exist_ok=True)
    (root / "mig.py").write_text(CELERY_PROJECT)
    (root / "producer.py").write_text(CELERY_PRODUCER)
    return CeleryProject(python, root, f"mig-c-{unique}", f"mig-aq-{unique}", broker, backend)


@contextlib.contextmanager
def celery_keys_deleted(project: CeleryProject) -> Iterator[None]:
    """Delete this test's Celery-side keys afterwards (its lists, their bindings), and its
    RabbitMQ queues and exchanges."""
    try:
        yield
    finally:
        if project.broker.startswith("amqp://"):
            names = [project.celery_queue, project.aqueue_queue]
            delete_rabbit_queues(names, names)
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=CELERY_DB)
        try:
            queues = (project.celery_queue, project.aqueue_queue)
            # what a killed Celery worker still held (it would be restored in an hour)
            for tag, entry in client.hscan_iter("unacked"):
                if json.loads(entry)[2] in queues:
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
            for queue in queues:
                client.delete(queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))
                for key in client.scan_iter(match="_kombu.binding*"):
                    if key.decode().endswith(queue):
                        client.delete(key)
                    elif client.type(key) == b"set":
                        client.srem(
                            key, *[m for m in client.smembers(key) if queue.encode() in m] or [b""]
                        )
                    elif client.type(key) == b"zset":
                        client.zrem(
                            key,
                            *[m for m in client.zrange(key, 0, -1) if queue.encode() in m] or [b""],
                        )
        finally:
            client.close()
