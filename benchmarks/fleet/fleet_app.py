"""The app the fleet benchmark's worker processes run (its broker from AQUEUE_BROKER_URL)."""

from __future__ import annotations

import os
import time

import redis

from aqueue import App

app = App("fleetbench")
_log = redis.Redis.from_url(os.environ.get("FLEET_LOG_URL", "redis://127.0.0.1:6379/14"))


@app.task(name="fleetbench.tick", rate_limit="200/s", ignore_result=True)
def tick(run: str) -> None:
    """Record when it ran (a plain function: it runs in the worker's thread pool)."""
    _log.rpush(f"fleetbench:{run}", repr(time.time()))
