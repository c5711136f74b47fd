"""Every ```python block of docs/workflows.md, run in order against a real worker."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"


async def test_workflow_docs_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 7
    setup, *examples = blocks
    namespace: dict[str, Any] = {"__name__": "proj"}
    exec(compile(setup, f"{DOC}:setup", "exec"), namespace)
    body = "\n".join(examples)
    source = "async def _examples():\n" + textwrap.indent(body, "    ")
    exec(compile(source, f"{DOC}:examples", "exec"), namespace)
    app = namespace["app"]
    async with app, app.worker(concurrency=50):
        await namespace["_examples"]()
