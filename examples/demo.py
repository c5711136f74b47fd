"""`make demo`: a worker process and a producer sharing only an embedded SQLite file.

Starts `aqueue worker demo_tasks:app` in a scratch directory, sends a small real workload
from this process, prints results as they arrive, then stops the worker with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def produce() -> int:
    import demo_tasks as t

    from aqueue import AsyncResult, TaskFailed

    started = time.perf_counter()
    adds = [await t.add.delay(i, i) for i in range(40)]
    muls = [await t.mul.delay(i, 3) for i in range(20)]
    failing = await t.fetch_invoice.delay(42)
    progress = await t.crunch.delay(5)
    print(f"sent {len(adds) + len(muls) + 2} tasks in {time.perf_counter() - started:.2f}s")

    async def show_progress() -> None:
        async for change in progress.events():
            print(f"  crunch[{progress.id[:8]}] {change.state} {change.info}")

    watcher = asyncio.create_task(show_progress())

    async def labelled(label: str, handle: AsyncResult[int]) -> tuple[str, int]:
        return label, await handle.wait(timeout=30)

    calls = [labelled(f"add({i}, {i})", h) for i, h in enumerate(adds)]
    calls += [labelled(f"mul({i}, 3)", h) for i, h in enumerate(muls)]
    total = 0
    for done in asyncio.as_completed(calls):
        label, value = await done
        total += value
        print(f"  {label} = {value}")
    expected = sum(2 * i for i in range(40)) + sum(3 * i for i in range(20))
    print(f"add/mul: 60 results as they arrived, sum {total} (expected {expected})")
    try:
        await failing.wait(timeout=30)
    except TaskFailed as exc:
        print(f"fetch_invoice failed remotely as expected: {exc.exc_type}: {exc.exc_message}")
    digest = await progress.wait(timeout=30)
    await watcher
    print(f"crunch finished: {digest}")
    print(f"all done in {time.perf_counter() - started:.2f}s")
    return 0


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="aqueue-demo-"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    os.chdir(workdir)  # producer and worker both use ./aqueue.db here
    sys.path.insert(0, str(HERE))
    url = os.environ.get("AQUEUE_BROKER_URL")
    if url:  # e.g. AQUEUE_BROKER_URL=redis://localhost:6379/0 make demo
        from aqueue.core.urls import redact

        print(f"demo: broker {redact(url)}")
    else:
        print(f"demo: embedded SQLite store at {workdir / 'aqueue.db'}")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aqueue.cli",
            "worker",
            "demo_tasks:app",
            "-c",
            "20",
            "-l",
            "warning",
            "-n",
            "demo@%h",
        ],
        env=env,
    )
    try:
        return asyncio.run(produce())
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        print(f"worker exited with status {code}")


if __name__ == "__main__":
    sys.exit(main())
