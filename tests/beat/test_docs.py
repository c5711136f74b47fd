"""Every ```python block of docs/periodic-tasks.md, run in order against a worker: the
first as module code, the rest as one coroutine."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "periodic-tasks.md"


async def test_periodic_tasks_docs_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    setup, *examples = blocks
    namespace: dict[str, Any] = {"__name__": "proj"}
    exec(compile(setup, f"{DOC}:setup", "exec"), namespace)
    source = "async def _examples():\n" + textwrap.indent("\n".join(examples), "    ")
    exec(compile(source, f"{DOC}:examples", "exec"), namespace)
    app = namespace["app"]
    async with app, app.worker(concurrency=50):
        await namespace["_examples"]()
