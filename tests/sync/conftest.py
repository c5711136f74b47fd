"""A blocking app with an embedded worker on the blocking API's own loop, per broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aqueue import App
from aqueue.core import blocking
from tests.conftest import delete_redis_prefix, make_url, prefix_of

from .tasks import register


@pytest.fixture(params=["sqlite", "redis"])
def sync_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    url = make_url(request.param, tmp_path)
    app = App("synctests", broker=url, lease_seconds=5.0)
    register(app)
    try:
        with app.sync.worker(concurrency=16):
            yield app
    finally:
        app.sync.close()
        # the next test starts from a fresh portal, as a new process would
        blocking.shutdown()
        if request.param == "redis":
            delete_redis_prefix(prefix_of(url))
