"""The extension surface (docs/extending.md): objects instead of URLs, and schemes from
entry points. The conformance suite (tests/conformance) is what proves a broker."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from importlib import invalidate_caches
from pathlib import Path

import pytest

from aqueue import App, ConfigurationError
from aqueue.backends.memory import MemoryBackend
from aqueue.brokers.memory import MemoryBroker


async def test_broker_and_backend_objects_instead_of_urls() -> None:
    name = f"memory://obj-{uuid.uuid4().hex[:8]}"
    app = App("objects", broker=MemoryBroker(name), backend=MemoryBackend(name))

    @app.task(name="x.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app, app.worker():
        assert await (await add.delay(2, 3)).wait(timeout=10) == 5
    assert "MemoryBroker" in repr(app)


async def test_a_broker_object_without_a_backend_stores_no_results() -> None:
    app = App("no-results", broker=MemoryBroker(f"memory://{uuid.uuid4().hex[:8]}"))
    async with app:
        assert app.backend is None


@pytest.mark.parametrize("kind", ["broker", "backend"])
def test_an_object_that_is_not_a_broker_is_refused(kind: str) -> None:
    with pytest.raises(ConfigurationError, match=r"implementing aqueue.core.protocols") as info:
        App("bad", **{kind: object()})  # type: ignore[arg-type]
    assert "missing" in str(info.value) and "connect" in str(info.value)


@pytest.fixture
def fake_distribution(tmp_path: Path) -> Iterator[str]:
    """An installed distribution registering ``fakemq://`` in the aqueue.brokers group."""
    module = f"fakemq_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from aqueue.brokers.memory import MemoryBroker

            class FakeBroker(MemoryBroker):
                created = []

                def __init__(self, url, **options):
                    super().__init__("memory://" + url.split("://", 1)[1])
                    FakeBroker.created.append((url, options))
            """
        )
    )
    info = tmp_path / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[aqueue.brokers]\nfakemq = {module}:FakeBroker\n")
    sys.path.insert(0, str(tmp_path))
    invalidate_caches()
    try:
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)
        invalidate_caches()


async def test_a_scheme_registered_through_an_entry_point(fake_distribution: str) -> None:
    where = uuid.uuid4().hex[:8]
    app = App(
        "plugged",
        broker=f"fakemq://{where}",
        backend=f"memory://{where}",
        broker_options={"flavour": "test"},
    )

    @app.task(name="x.mul")
    async def mul(x: int, y: int) -> int:
        return x * y

    async with app, app.worker():
        assert await (await mul.delay(6, 7)).wait(timeout=10) == 42
    created = sys.modules[fake_distribution].FakeBroker.created
    assert created == [(f"fakemq://{where}", {"flavour": "test"})]


async def test_an_unknown_scheme_names_the_entry_point_group() -> None:
    app = App("unknown", broker="nosuchmq://x")
    with pytest.raises(ConfigurationError, match=r"aqueue\.brokers"):
        await app.connect()
