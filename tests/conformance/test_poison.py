"""Issue 11: whatever a message or a failure does, handling ends in a recorded final state.

A message that cannot be used is dead-lettered with its reason and, when its task id can be
read, its task is marked FAILURE so that ``wait()`` returns. A result that cannot be encoded
is one FAILURE (``EncodeError``) after one run. A failure while storing, acking or
dead-lettering never turns into an endless hand-back: by ``max_deliveries`` the message has
a final state.
"""

from __future__ import annotations

import asyncio
import math
import os
import pickle
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aqueue import App, TaskFailed, states
from aqueue.core.errors import BackendError, BrokerError
from aqueue.core.protocols import Delivery, Lease, Outgoing

from .tasks import Recorder, register


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def t(app: App, rec: Recorder) -> Any:
    return register(app, rec)


async def _inject(app: App, fields: dict[str, Any], *, json: bool = False) -> str:
    tid = fields.setdefault("id", str(uuid.uuid4()))
    body = msgspec.json.encode(fields) if json else msgspec.msgpack.encode(fields)
    await app.broker.publish([Outgoing(id=tid, queue=app.conf.task_default_queue, body=body)])
    return tid


POISON_ENVELOPES = [
    pytest.param({"prior_attempts": 2**64 - 1}, id="prior_attempts-2**64-1"),
    pytest.param({"retries": -1}, id="negative-retries"),
    pytest.param({"priority": 999}, id="priority-999"),
    pytest.param({"eta": 1e300}, id="eta-1e300"),
    pytest.param({"expires": math.nan}, id="expires-nan"),
    pytest.param({"time_limit": -1.0}, id="time_limit-negative"),
    pytest.param({"time_limit": "soon"}, id="time_limit-string"),
    pytest.param({"headers": {"n": 1}}, id="header-int"),
    pytest.param({"parent_id": 5}, id="parent_id-int"),
    pytest.param({"queue": ""}, id="empty-queue"),
]


@pytest.mark.parametrize("fields", POISON_ENVELOPES)
async def test_poison_envelope_is_one_failure_and_one_dead_letter(
    app: App, t: Any, rec: Recorder, fields: dict[str, Any]
) -> None:
    """Defects 1 and 3: a bad field is a decode_error at once; its task is FAILURE."""
    tid = await _inject(app, {"task": "t.add", "args": [1, 2], **fields})
    async with app.worker():
        with pytest.raises(TaskFailed) as info:
            await app.AsyncResult(tid).wait(timeout=10)  # never hangs
        assert await (await t.add.delay(1, 1)).wait(timeout=10) == 2  # the worker is alive
    assert info.value.exc_type == "DecodeError"
    assert ("add", 1, 2) not in rec.calls
    letters = [(d.id, d.reason) for d in await app.broker.dead_letters()]
    assert letters == [(tid, "decode_error")]
    assert await app.broker.size(app.conf.task_default_queue) == 0


async def test_decode_error_with_readable_id_fails_the_task_json(app: App, t: Any) -> None:
    tid = await _inject(app, {"task": "t.add", "args": [1, 2], "priority": "5"}, json=True)
    async with app.worker():
        with pytest.raises(TaskFailed, match="DecodeError"):
            await app.AsyncResult(tid).wait(timeout=10)


async def test_unreadable_garbage_is_still_dead_lettered(app: App, t: Any) -> None:
    tid = str(uuid.uuid4())
    await app.broker.publish(
        [Outgoing(id=tid, queue=app.conf.task_default_queue, body=b"\x93\x01\x02")]
    )
    async with app.worker():
        assert await (await t.add.delay(2, 2)).wait(timeout=10) == 4
    assert [(d.id, d.reason) for d in await app.broker.dead_letters()] == [(tid, "decode_error")]
    assert await app.AsyncResult(tid).state() == states.PENDING  # no id in it to fail


@pytest.mark.parametrize(
    "value", [pytest.param(2**65, id="int-above-64-bits"), pytest.param("cycle", id="cycle")]
)
async def test_unencodable_result_runs_once_and_fails(app: App, value: Any) -> None:
    """Defect 2: the task ran 5 times, then was blamed on a dead worker."""
    runs: list[int] = []

    @app.task(name="t.huge")
    async def huge() -> Any:
        runs.append(1)
        if value == "cycle":
            loop: list[Any] = []
            loop.append(loop)
            return loop
        return value

    async with app.worker():
        with pytest.raises(TaskFailed) as info:
            await (await huge.delay()).wait(timeout=10)
    assert info.value.exc_type == "EncodeError"
    assert runs == [1]
    assert await app.broker.size(app.conf.task_default_queue) == 0
    assert await app.broker.dead_letters() == []


# -- failures injected where a delivery is stored and settled ------------------------------


class Faults:
    """Which settlements fail, what was claimed, and an event per settlement that worked."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        #: the delivery count of every claim
        self.deliveries: list[int] = []
        self.dead_lettered = asyncio.Event()
        self.acked = asyncio.Event()


class FaultyDelivery:
    """A real delivery whose ``ack`` / ``dead_letter`` raise while ``faults`` says so."""

    def __init__(self, real: Delivery, faults: Faults) -> None:
        self.real = real
        self.faults = faults
        self.prior = getattr(real, "prior", None)

    @property
    def id(self) -> str:
        return self.real.id

    @property
    def queue(self) -> str:
        return self.real.queue

    @property
    def body(self) -> bytes:
        return self.real.body

    @property
    def delivery_count(self) -> int:
        return self.real.delivery_count

    @property
    def lease(self) -> Lease:
        return self.real.lease

    async def ack(self) -> bool:
        if "ack" in self.faults.failing:
            raise BrokerError("injected: ack failed")
        done = await self.real.ack()
        self.faults.acked.set()
        return done

    async def release(self, *, executed: bool) -> bool:
        return await self.real.release(executed=executed)

    async def requeue(self, body: bytes, *, eta: float | None) -> bool:
        return await self.real.requeue(body, eta=eta)

    async def dead_letter(self, reason: str) -> bool:
        if "dead_letter" in self.faults.failing:
            raise BrokerError("injected: dead-letter write failed")
        done = await self.real.dead_letter(reason)
        self.faults.dead_lettered.set()
        return done


def inject_faults(monkeypatch: pytest.MonkeyPatch, app: App, failing: set[str]) -> Faults:
    """Wrap every delivery the app's broker claims from now on."""
    faults = Faults(failing)
    broker = app.broker
    claim: Callable[..., Awaitable[Sequence[Delivery]]] = broker.claim

    async def faulty_claim(*args: Any, **kwargs: Any) -> list[Delivery]:
        out: list[Delivery] = []
        for d in await claim(*args, **kwargs):
            faults.deliveries.append(d.delivery_count)
            out.append(FaultyDelivery(d, faults))
        return out

    monkeypatch.setattr(broker, "claim", faulty_claim)
    return faults


@pytest.fixture
def few_deliveries(app: App) -> App:
    app.conf.update(max_deliveries=3)
    return app


async def test_store_failing_ends_in_a_dead_letter_within_max_deliveries(
    few_deliveries: App, t: Any, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = few_deliveries
    backend = app.backend
    assert backend is not None
    store = backend.store
    doomed: set[str] = set()

    async def failing_store(task_id: str, *args: Any, **kwargs: Any) -> bool:
        if task_id in doomed:
            raise BackendError("injected: store failed")
        return await store(task_id, *args, **kwargs)

    monkeypatch.setattr(backend, "store", failing_store)
    faults = inject_faults(monkeypatch, app, set())
    h = await t.add.delay(3, 4)
    doomed.add(h.id)
    async with app.worker():
        ok = await t.add.delay(5, 5)
        assert await ok.wait(timeout=10) == 10
        await asyncio.wait_for(faults.dead_lettered.wait(), 20)
    assert [(d.id, d.reason) for d in await app.broker.dead_letters()] == [(h.id, "worker_error")]
    assert rec.calls.count(("add", 3, 4)) <= app.conf.max_deliveries
    assert max(faults.deliveries) <= app.conf.max_deliveries


async def test_ack_failing_runs_the_task_once_and_keeps_its_success(
    few_deliveries: App, t: Any, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = few_deliveries
    if not app.broker.capabilities.leases:
        pytest.skip("on RabbitMQ the connection is the lease: a failed ack is redelivered there")
    faults = inject_faults(monkeypatch, app, {"ack"})
    h = await t.add.delay(3, 4)
    async with app.worker():
        assert await h.wait(timeout=10) == 7
        await asyncio.wait_for(faults.dead_lettered.wait(), 20)
    assert rec.calls.count(("add", 3, 4)) == 1  # redeliveries saw the stored SUCCESS
    assert await h.state() == states.SUCCESS  # not overwritten by the worker's last resort
    assert [(d.id, d.reason) for d in await app.broker.dead_letters()] == [(h.id, "worker_error")]
    assert max(faults.deliveries) == app.conf.max_deliveries


async def test_dead_letter_write_failing_still_fails_the_task(
    few_deliveries: App, t: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = few_deliveries
    faults = inject_faults(monkeypatch, app, {"dead_letter"})
    tid = await _inject(app, {"task": "t.add", "args": [1, 2], "priority": 999})
    async with app.worker():
        with pytest.raises(TaskFailed, match="DecodeError"):
            await app.AsyncResult(tid).wait(timeout=10)
        assert await (await t.add.delay(1, 1)).wait(timeout=10) == 2
    assert faults.deliveries == [1, 1]  # removed at its first delivery, not handed back
    assert await app.broker.size(app.conf.task_default_queue) == 0


async def test_dead_letter_failing_for_garbage_ends_by_max_deliveries(
    few_deliveries: App, t: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = few_deliveries
    if not app.broker.capabilities.leases:
        pytest.skip("RabbitMQ counts a hand-back only when the connection drops")
    faults = inject_faults(monkeypatch, app, {"dead_letter"})
    tid = str(uuid.uuid4())
    await app.broker.publish(
        [Outgoing(id=tid, queue=app.conf.task_default_queue, body=b"\x00 garbage")]
    )
    async with app.worker():
        await asyncio.wait_for(faults.acked.wait(), 20)  # removed, with an ERROR line
    assert faults.deliveries == [1, 2, 3]  # handed back until its last allowed delivery
    assert await app.broker.size(app.conf.task_default_queue) == 0


class _Touch:
    """Unpickling this would create ``path`` (os.system): the worker must never unpickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


async def test_row22_pickle_payloads_are_refused_before_decoding(
    app: App, t: Any, tmp_path: Path
) -> None:
    """docs/reliability.md row 22: a pickle body, and an envelope claiming pickle with pickled
    arguments: dead-lettered or failed as data, never unpickled (the file stays absent)."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Touch(str(marker)))
    raw_id = str(uuid.uuid4())
    await app.broker.publish([Outgoing(id=raw_id, queue=app.conf.task_default_queue, body=payload)])
    claimed = await _inject(
        app,
        {
            "task": "t.add",
            "content_type": "application/x-python-serialize",
            "args": payload,
            "kwargs": payload,
        },
    )
    async with app.worker():
        with pytest.raises(TaskFailed):
            await app.AsyncResult(claimed).wait(timeout=10)
        assert await (await t.add.delay(1, 1)).wait(timeout=10) == 2
    reasons = {d.id: d.reason for d in await app.broker.dead_letters()}
    assert reasons[raw_id] == "decode_error"
    assert reasons[claimed] in ("decode_error", "bad_arguments")
    assert not marker.exists()
