"""What only the ``memory://`` broker has to show beyond the conformance suite."""

from __future__ import annotations

import os
import uuid

import pytest

from aqueue.brokers.memory import MemoryBroker
from aqueue.core.errors import ConfigurationError
from aqueue.core.protocols import DEAD_LETTER_BODY_LIMIT, Outgoing


async def test_dead_letters_keep_the_start_of_a_big_body_and_its_size() -> None:
    # issue 11, defect 6: dead letters kept whole bodies (here: held in process memory)
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    big = os.urandom(3 * 1024 * 1024)
    await broker.publish([Outgoing(id="big", queue="q", body=big), Outgoing("s", "q", b"small")])
    for d in await broker.claim(["q"], limit=2, lease_seconds=30, owner="t", timeout=0):
        assert await d.dead_letter("undecodable")
    letters = {x.id: x for x in await broker.dead_letters("q")}
    assert (letters["big"].body, letters["big"].size) == (big[:DEAD_LETTER_BODY_LIMIT], len(big))
    assert (letters["s"].body, letters["s"].size) == (b"small", 5)
    await broker.close()


def test_an_unknown_option_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="takes no options; got prefx"):
        MemoryBroker("memory://x", prefx="typo")
