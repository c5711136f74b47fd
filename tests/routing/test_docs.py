"""Every ```python block of docs/routing.md runs, against memory:// and RabbitMQ.

The doc is a series of examples: a block starting with an import sets one up (module code:
the app, its settings, its tasks), the blocks after it run as one coroutine with the app
connected. The doc's broker URLs are replaced by the test's own (each example gets fresh
queues); what only RabbitMQ does (broadcast) runs on it alone.
"""

from __future__ import annotations

import re
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import aqueue
from aqueue import App

from ..conftest import RABBIT_HOST, RABBIT_PORT, rabbit_url, require_service

DOC = Path(__file__).resolve().parents[2] / "docs" / "routing.md"


def examples() -> list[tuple[str, list[str]]]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    groups: list[tuple[str, list[str]]] = []
    for block in blocks:
        if block.startswith(("from ", "import ")):
            groups.append((block, []))
        else:
            groups[-1][1].append(block)
    return groups


def test_the_doc_has_its_examples() -> None:
    groups = examples()
    assert len(groups) >= 5
    assert all(body for _, body in groups)


@pytest.mark.parametrize("kind", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def test_routing_doc_examples_run(
    kind: str, monkeypatch: pytest.MonkeyPatch, _rabbit_prefixes: list[str]
) -> None:
    if kind == "rabbitmq":
        require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    for index, (setup, body) in enumerate(examples()):
        if "Broadcast(" in setup and kind != "rabbitmq":
            continue  # RabbitMQ's alone (the refusals: tests/routing/test_delivery.py)
        unique = f"aqt-doc-{uuid.uuid4().hex[:10]}"
        if kind == "rabbitmq":
            _rabbit_prefixes.append(unique)
            url = rabbit_url(unique)
        else:
            url = f"memory://{unique}"

        class DocApp(App):
            """The doc's App, on the test's broker (results: rpc:// or memory://)."""

            def __init__(self, name: str, broker: Any = None, **kwargs: Any) -> None:
                super().__init__(name, broker=url, **kwargs)

        monkeypatch.setattr(aqueue, "App", DocApp)
        namespace: dict[str, Any] = {"__name__": f"doc{index}"}
        exec(compile(setup, f"{DOC}:example {index}", "exec"), namespace)
        source = "async def _example():\n" + textwrap.indent("\n".join(body), "    ")
        exec(compile(source, f"{DOC}:example {index}", "exec"), namespace)
        app = namespace["app"]
        async with app:
            try:
                await namespace["_example"]()
            finally:
                if kind == "rabbitmq":
                    router = app.router()
                    exchanges = {q.exchange.name for q in router.queues.values() if q.exchange}
                    await app.broker.delete_exchanges(sorted(exchanges))
