"""The app of the multi-process scheduler tests: a per-second entry and a cron entry whose
tasks append one line per execution to ``$AQUEUE_TEST_DIR/executions.log``. The broker
comes from ``AQUEUE_BROKER_URL``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from aqueue import App, Task
from aqueue.beat import crontab

app = App("beatproc")
app.conf.beat_schedule = {
    "every-second": {"task": "beatproc.tick", "schedule": 1},
    "every-minute": {"task": "beatproc.tick", "schedule": crontab()},
}


@app.task(name="beatproc.tick", bind=True)
async def tick(self: Task[[], None]) -> None:
    headers = self.request.headers
    line = f"{time.time():.3f} {headers['beat-entry']} {headers['beat-slot']} {os.getpid()}\n"
    # one write with O_APPEND: lines from several worker processes never interleave
    fd = os.open(
        Path(os.environ["AQUEUE_TEST_DIR"], "executions.log"),
        os.O_WRONLY | os.O_APPEND | os.O_CREAT,
    )
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
