"""The README's quickstart: run a worker with `aqueue worker proj.tasks:app -c 50 -l info`."""

from aqueue import App

app = App("proj")  # no URL: the embedded SQLite file aqueue.db in the working directory


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task  # plain def works too: runs in a thread
def mul(x: int, y: int) -> int:
    return x * y


async def main() -> int:
    h = await add.delay(4, 4)
    return await h.wait(timeout=10)
