"""Every ```python block of docs/workflows.md and docs/bulk.md, run in order against a worker."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[2] / "docs"


async def _run_examples(doc: Path, at_least: int) -> None:
    """Run the first block as module code, the rest as one coroutine, with a worker running."""
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) >= at_least
    setup, *examples = blocks
    namespace: dict[str, Any] = {"__name__": "proj"}
    exec(compile(setup, f"{doc}:setup", "exec"), namespace)
    body = "\n".join(examples)
    source = "async def _examples():\n" + textwrap.indent(body, "    ")
    exec(compile(source, f"{doc}:examples", "exec"), namespace)
    app = namespace["app"]
    async with app, app.worker(concurrency=50):
        await namespace["_examples"]()


async def test_workflow_docs_examples_run() -> None:
    await _run_examples(DOCS / "workflows.md", 7)


async def test_bulk_docs_examples_run() -> None:
    await _run_examples(DOCS / "bulk.md", 5)
