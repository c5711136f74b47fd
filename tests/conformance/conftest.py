"""The conformance suite runs on every broker kind of the whole suite, and on a Redis
Cluster too (a private one per test process: ``tests/conftest.py``, ``private_cluster``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BROKER_KINDS, CLUSTER_KIND, broker_url_of


@pytest.fixture(params=[*BROKER_KINDS, CLUSTER_KIND])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from broker_url_of(request, tmp_path)
