"""Tasks of `make demo`: the seed tutorials' add/mul, a failing task and a progress task."""

from __future__ import annotations

import asyncio
import hashlib

from aqueue import App, Task

app = App("demo")  # no broker URL: the embedded SQLite store in the working directory


@app.task
async def add(x: int, y: int) -> int:
    await asyncio.sleep(0.01)  # pretend to do I/O
    return x + y


@app.task
def mul(x: int, y: int) -> int:  # a plain function: runs in the worker's thread pool
    return x * y


@app.task
async def fetch_invoice(invoice_id: int) -> str:
    raise LookupError(f"invoice {invoice_id} does not exist")


@app.task(bind=True)
async def crunch(self: Task[[int], str], rounds: int) -> str:
    digest = b"aqueue"
    for i in range(rounds):
        for _ in range(2000):
            digest = hashlib.sha256(digest).digest()
        await self.update_state("PROGRESS", meta={"done": i + 1, "total": rounds})
        await asyncio.sleep(0.05)
    return digest.hex()[:16]
