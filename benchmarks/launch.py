"""Run a peer's own worker CLI on uvloop: ``python -m benchmarks.launch arq SETTINGS``.

arq and SAQ create their event loop with ``asyncio.new_event_loop()`` /
``asyncio.get_event_loop()`` and have no uvloop switch, so the uvloop policy is installed
first and then the library's ``__main__`` runs unchanged (taskiq, streaq and aqueue pick
uvloop themselves; Celery and dramatiq are thread-based).
"""

from __future__ import annotations

import asyncio
import runpy
import sys

import uvloop

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
