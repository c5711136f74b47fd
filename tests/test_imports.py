"""What a worker process imports: only what it uses.

Every imported module stays resident in every worker for its whole life, so these are
memory tests (docs/benchmarks.md, "worker peak RSS"): typer 0.29 alone put pydantic in the
worker (+9.6 MiB of a 48 MiB peak), which is why the command hands the worker over to a
fresh interpreter (aqueue.runner). The worker runs through the real CLI, and the check is
made when it stops, after it drained its queue, so imports made lazily count too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aqueue import App
from tests.conftest import delete_redis_prefix, make_url

pytestmark = pytest.mark.slow

#: never needed by a worker on Redis (or memory://): CLI frameworks, the RabbitMQ client
#: stack, SQLite
FORBIDDEN = {
    "typer",
    "click",
    "rich",
    "pydantic",
    "pydantic_core",
    "aio_pika",
    "aiormq",
    "pamqp",
    "yarl",
    "sqlite3",
    "_sqlite3",
    "aqueue.brokers.rabbitmq",
    "aqueue.transports.amqp",
    "aqueue.brokers.sqlite",
    "aqueue.backends.rpc",
    "aqueue.backends.sqlite",
    "aqueue.transports.sqlite",
    # integrations a worker loads only when asked (aqueue.django: --django and install())
    "django",
    "django_tasks",
    "aqueue.django",
    "aqueue.testing",
    "pytest",
}


def worker_modules(tmp_path: Path, broker: str) -> set[str]:
    """The modules of a CLI worker that ran ``imports.noop`` once and stopped (--burst)."""
    (tmp_path / "imports_app.py").write_text(
        textwrap.dedent(f"""
            import json, sys
            from pathlib import Path

            from aqueue import App, signals

            app = App("imports", broker={broker!r})


            @app.task(name="imports.noop")
            async def noop() -> None:
                pass


            @signals.worker_shutdown.connect
            def dump(sender, **kwargs) -> None:
                Path("modules.json").write_text(json.dumps(sorted(sys.modules)))
        """)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "aqueue.cli", "worker", "imports_app:app", "-c", "100", "--burst"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    modules: set[str] = set(json.loads((tmp_path / "modules.json").read_text()))
    assert "aqueue.core.worker" in modules  # the worker did run
    return modules


def test_memory_worker_imports_no_cli_framework_and_no_other_broker(tmp_path: Path) -> None:
    modules = worker_modules(tmp_path, "memory://imports")
    assert sorted(modules & FORBIDDEN) == []
    assert "redis" not in modules


@pytest.mark.redis
async def test_redis_worker_imports_only_redis(tmp_path: Path) -> None:
    url = make_url("redis", tmp_path)
    producer = App("imports", broker=url)
    try:
        async with producer:
            await producer.send_task("imports.noop", queue="celery")
        modules = worker_modules(tmp_path, url)
        async with producer:  # the worker ran the task: the queue is empty
            assert await producer.broker.size("celery") == 0
    finally:
        delete_redis_prefix(url.rsplit("prefix=", 1)[1])
    assert "redis.asyncio" in modules
    assert sorted(modules & FORBIDDEN) == []
