"""The Celery bridge against the real Redis, without Celery: kombu's records, the relay's
hand-over and restores, and what a relayed task leaves for Celery (meta, next steps).

Celery envelopes are built the way kombu writes them (tests/compat/test_celery_protocol.py
checks that form against a captured one); the Celery side uses database 11 and queues
unique to each test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aqueue import App
from aqueue.contrib.celery import REFUSED_QUEUE, CeleryBridge, CeleryResult, signature
from aqueue.contrib.celery.kombu_redis import UNACKED, UNACKED_INDEX, KombuRedis
from aqueue.contrib.celery.protocol import PRIORITY_STEPS, CeleryTask, envelope, queue_list
from aqueue.core import signals
from aqueue.core.errors import ConfigurationError, OptionError, TaskFailed, TaskRevoked
from tests.conftest import (
    BROKER_KINDS,
    REDIS_HOST,
    REDIS_PORT,
    broker_url_of,
    require_service,
)

from .celery_env import CELERY_DB, CELERY_URL
from .test_celery_protocol import celery_envelope

pytestmark = pytest.mark.redis


@pytest.fixture
def queue() -> Iterator[str]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    name = f"brq-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=CELERY_DB)
    try:
        client.delete(name, *(f"{name}\x06\x16{p}" for p in (3, 6, 9)), f"{name}-celery")
    finally:
        client.close()


@pytest.fixture
async def app() -> AsyncIterator[App]:
    the_app = App("mig", broker=f"memory://t{uuid.uuid4().hex[:12]}")

    @the_app.task(name="mig.aq_mul")
    async def aq_mul(x: int, y: int) -> int:
        return x * y

    @the_app.task(name="mig.aq_fail")
    async def aq_fail(x: int) -> int:
        raise ValueError(f"no {x}")

    @the_app.task(name="mig.aq_flaky", bind=True, max_retries=3)
    async def aq_flaky(self: Any, x: int) -> int:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return x + self.request.retries

    @the_app.task(name="mig.aq_request", bind=True)
    async def aq_request(self: Any) -> dict[str, Any]:
        r = self.request
        return {
            "retries": r.retries,
            "root_id": r.root_id,
            "parent_id": r.parent_id,
            "group_id": r.group_id,
            "time_limit": r.time_limit,
            "soft_time_limit": r.soft_time_limit,
            "expires": r.expires,
        }

    async with the_app:
        yield the_app


def celery_task(name: str, args: tuple[Any, ...] = (), **fields: Any) -> CeleryTask:
    return CeleryTask(id=str(uuid.uuid4()), task=name, args=args, kwargs={}, **fields)


async def push(kombu: KombuRedis, queue: str, task: CeleryTask) -> None:
    await kombu.push(queue, 0, envelope(task, queue=queue, priority=0, origin="test"))


async def test_a_claim_records_the_message_as_kombu_does_and_an_ack_forgets_it(
    queue: str,
) -> None:
    kombu = KombuRedis(CELERY_URL)
    raw = celery_envelope()
    client = kombu.client()
    await client.lpush(queue, raw)
    try:
        [(payload, tag)] = await kombu.claim(queue, 16)
        assert payload == raw and tag == "0b2f0f0e-aaaa-4bbb-8ccc-0123456789ab"
        entry = json.loads(await client.hget(UNACKED, tag))
        # kombu's [message, exchange, routing_key], the message as it was
        assert entry == [json.loads(raw), "celery", "celery"]
        assert await client.zscore(UNACKED_INDEX, tag) is not None
        assert await client.llen(queue) == 0
        await kombu.ack([tag])
        assert await client.hget(UNACKED, tag) is None
        assert await client.zscore(UNACKED_INDEX, tag) is None
    finally:
        await kombu.ack(["0b2f0f0e-aaaa-4bbb-8ccc-0123456789ab"])
        await kombu.close()


async def test_a_stale_unacked_message_of_its_queues_goes_back_on_the_list(queue: str) -> None:
    kombu = KombuRedis(CELERY_URL, visibility_timeout=0.0)
    mine = celery_task("mig.aq_mul", (1, 2))
    theirs = celery_task("mig.aq_mul", (1, 2))
    client = kombu.client()
    try:
        await push(kombu, queue, mine)
        [(_, tag)] = await kombu.claim(queue, 16)
        # an entry of another queue is left to its consumers
        other = envelope(theirs, queue=f"{queue}-other", priority=0, origin="t")
        other_tag = json.loads(other)["properties"]["delivery_tag"]
        await client.hset(UNACKED, other_tag, json.dumps([json.loads(other), "", "x"]))
        await client.zadd(UNACKED_INDEX, {other_tag: 1.0})
        assert await kombu.restore_stale([queue], limit=100_000) == 1
        assert await client.hget(UNACKED, tag) is None
        [back] = await client.lrange(queue, 0, -1)
        assert json.loads(back)["headers"]["redelivered"] is True
        assert json.loads(back)["headers"]["id"] == mine.id
        assert await client.hget(UNACKED, other_tag) is not None
    finally:
        await client.hdel(UNACKED, other_tag)
        await client.zrem(UNACKED_INDEX, other_tag)
        await kombu.close()


async def test_a_stale_message_routed_by_an_exchange_binding_goes_back_to_its_queue(
    queue: str,
) -> None:
    kombu = KombuRedis(CELERY_URL, visibility_timeout=0.0)
    client = kombu.client()
    exchange = f"{queue}-x"
    # what a Celery producer leaves for a route to exchange "x", key "img.resize"
    raw = json.loads(celery_envelope())
    raw["properties"]["delivery_info"] = {"exchange": exchange, "routing_key": "img.resize"}
    raw["properties"]["delivery_tag"] = tag = str(uuid.uuid4())
    await client.sadd(f"_kombu.binding.{exchange}", f"img.resize\x06\x16\x06\x16{queue}")
    try:
        await client.lpush(queue, json.dumps(raw))
        assert [t for _, t in await kombu.claim(queue, 16)] == [tag]
        assert await kombu.restore_stale([queue], limit=100_000) == 1
        [back] = await client.lrange(queue, 0, -1)
        assert json.loads(back)["properties"]["delivery_tag"] == tag
    finally:
        await client.delete(f"_kombu.binding.{exchange}")
        await kombu.ack([tag])
        await kombu.close()


async def test_the_bare_list_is_claimed_before_the_priority_lists(queue: str) -> None:
    kombu = KombuRedis(CELERY_URL)
    first, later = celery_task("a"), celery_task("b")
    try:
        await kombu.push(queue, 6, envelope(later, queue=queue, priority=6, origin="t"))
        await kombu.push(queue, 0, envelope(first, queue=queue, priority=0, origin="t"))
        taken = await kombu.claim(queue, 16)
        assert [json.loads(p)["headers"]["id"] for p, _ in taken] == [first.id, later.id]
        await kombu.ack([tag for _, tag in taken])
    finally:
        await kombu.close()


async def test_headers_reach_the_request(app: App, queue: str) -> None:
    bridge = CeleryBridge(app, CELERY_URL, queues=[queue], result_expires=600)
    task = celery_task(
        "mig.aq_request",
        retries=2,
        root_id="root-1",
        parent_id="parent-1",
        group_id="group-1",
        time_limit=30.0,
        soft_time_limit=20.0,
        expires=round(time.time()) + 3600.0,
    )
    async with app.worker():
        await push(bridge.kombu, queue, task)
        request = await bridge.AsyncResult(task.id).wait(timeout=10)
    assert request == {
        "retries": 2,
        "root_id": "root-1",
        "parent_id": "parent-1",
        "group_id": "group-1",
        "time_limit": 30.0,
        "soft_time_limit": 20.0,
        "expires": task.expires,
    }


async def test_a_failure_fails_the_rest_of_the_chain_and_sends_errbacks_to_celery(
    app: App, queue: str
) -> None:
    bridge = CeleryBridge(
        app, CELERY_URL, queues=[queue], default_queue=f"{queue}-celery", result_expires=600
    )
    step = signature("mig.aq_mul", (2,))
    task = celery_task("mig.aq_fail", (7,), chain=(step,), errbacks=(signature("proj.on_error"),))
    async with app.worker():
        await push(bridge.kombu, queue, task)
        with pytest.raises(TaskFailed) as failed:
            await bridge.AsyncResult(task.id).wait(timeout=10)
    assert (failed.value.exc_type, failed.value.exc_message) == ("ValueError", "no 7")
    assert "ValueError" in (failed.value.traceback or "")
    with pytest.raises(TaskFailed, match="no 7"):  # Celery's get() on the chain's end raises
        await bridge.AsyncResult(step["options"]["task_id"]).wait(timeout=1)
    client = bridge.kombu.client()
    [errback] = await client.lrange(f"{queue}-celery", 0, -1)
    sent = json.loads(errback)
    assert sent["headers"]["task"] == "proj.on_error"
    assert sent["headers"]["parent_id"] == task.id
    await bridge.kombu.close()


async def test_a_retry_shows_as_retry_then_success(app: App, queue: str) -> None:
    bridge = CeleryBridge(app, CELERY_URL, queues=[queue], result_expires=600)
    task = celery_task("mig.aq_flaky", (10,))
    states: list[str] = []

    async def seen(sender: Any, **kw: Any) -> None:
        states.append(await bridge.AsyncResult(task.id).state())

    async with app.worker():
        signals.task_retry.connect(seen)  # after the bridge's receiver
        try:
            await push(bridge.kombu, queue, task)
            assert await bridge.AsyncResult(task.id).wait(timeout=10) == 11
        finally:
            signals.task_retry.disconnect(seen)
    assert states == ["RETRY"]  # the bridge's receiver ran first


async def test_unknown_tasks_are_refused_and_their_celery_result_fails(
    app: App, queue: str
) -> None:
    bridge = CeleryBridge(app, CELERY_URL, queues=[queue], result_expires=600)
    task = celery_task("proj.only_on_celery")
    async with app.worker():
        await push(bridge.kombu, queue, task)
        with pytest.raises(TaskFailed, match=r"celery:unknown-task proj\.only_on_celery"):
            await bridge.AsyncResult(task.id).wait(timeout=10)
    [letter] = await app.control.dead_letters.list(REFUSED_QUEUE)
    assert (letter.id, letter.reason) == (task.id, "celery:unknown-task proj.only_on_celery")
    assert json.loads(letter.body)["queue"] == queue
    # the refused message was acked on Celery's side: kombu's unacked records lost it
    for entry in await bridge.kombu.client().hvals(UNACKED):
        assert json.loads(entry)[0]["headers"]["id"] != task.id
    await bridge.kombu.close()


async def test_the_receivers_are_connected_only_while_a_worker_runs(app: App, queue: str) -> None:
    bridge = CeleryBridge(app, CELERY_URL, queues=[queue], result_expires=600)
    before = len(signals.task_success.receivers)
    async with app.worker(), app.worker():
        assert len(signals.task_success.receivers) == before + 1
    assert len(signals.task_success.receivers) == before
    assert bridge.relayed == 0


async def test_stopping_mid_hand_over_puts_what_is_left_back(
    app: App, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = CeleryBridge(app, CELERY_URL, queues=[], result_expires=600)
    tasks = [celery_task("mig.aq_mul", (i, 2)) for i in range(3)]
    for task in tasks:
        await push(bridge.kombu, queue, task)
    gate = asyncio.Event()

    async def stuck(messages: Any) -> list[bool]:
        gate.set()
        await asyncio.Event().wait()  # never returns: the relay is cancelled here
        raise AssertionError

    monkeypatch.setattr(app.broker, "publish", stuck)
    relay = asyncio.create_task(bridge.relay(queue))
    await gate.wait()  # the three are taken (unacked), the first being handed over
    client = bridge.kombu.client()
    assert await client.llen(queue) == 0
    relay.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relay
    back = [json.loads(p)["headers"]["id"] for p in await client.lrange(queue, 0, -1)]
    assert sorted(back) == sorted(t.id for t in tasks)
    ids = {t.id for t in tasks}
    for entry in await client.hvals(UNACKED):
        assert json.loads(entry)[0]["headers"]["id"] not in ids
    await bridge.kombu.close()


async def test_an_expired_message_is_not_run_and_shows_revoked(app: App, queue: str) -> None:
    bridge = CeleryBridge(app, CELERY_URL, queues=[queue], result_expires=600)
    task = celery_task("mig.aq_mul", (1, 2), expires=time.time() - 1.0)
    async with app.worker():
        await push(bridge.kombu, queue, task)
        with pytest.raises(TaskRevoked):
            await bridge.AsyncResult(task.id).wait(timeout=10)
    assert bridge.relayed == 0


@pytest.fixture(params=BROKER_KINDS)
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """aqueue's own broker, of every kind (results in memory:// beside it)."""
    yield from broker_url_of(request, tmp_path, shared_results=False)


async def test_refusals_reach_the_dead_letters_on_every_aqueue_broker(
    any_broker: str, queue: str
) -> None:
    the_app = App("mig", broker=any_broker, backend=f"memory://r{uuid.uuid4().hex[:12]}")
    bridge = CeleryBridge(the_app, CELERY_URL, queues=[queue], result_expires=600)
    tasks = [celery_task("proj.only_on_celery") for _ in range(3)]
    async with the_app, the_app.worker():
        for task in tasks:
            await push(bridge.kombu, queue, task)
        for task in tasks:
            with pytest.raises(TaskFailed, match="celery:unknown-task"):
                await bridge.AsyncResult(task.id).wait(timeout=10)
        letters = await the_app.control.dead_letters.list(REFUSED_QUEUE)
    assert sorted(d.id for d in letters) == sorted(t.id for t in tasks)
    assert {d.reason for d in letters} == {"celery:unknown-task proj.only_on_celery"}


def test_a_bridge_imports_only_its_brokers_client() -> None:
    code = (
        "import sys, aqueue.contrib.celery as c\n"
        "from aqueue import App\n"
        "assert not {'redis', 'aio_pika'} & set(sys.modules)\n"
        f"c.CeleryBridge(App('x', broker='memory://x'), {CELERY_URL!r}, queues=[])\n"
        "assert 'redis' in sys.modules and 'aio_pika' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_bridge_names_what_it_cannot_do() -> None:
    app = App("x", broker="memory://x")
    with pytest.raises(ConfigurationError, match=r"redis:// or amqp://"):
        CeleryBridge(app, "sqs://queue", queues=[])
    with pytest.raises(ConfigurationError, match=r"rpc:// replies with a RabbitMQ broker"):
        CeleryBridge(app, CELERY_URL, result_backend="rpc://", queues=[], result_expires=600)
    with pytest.raises(ConfigurationError, match=r"redis:// result backend"):
        CeleryBridge(app, "amqp://guest:guest@127.0.0.1//", queues=[]).result_store()


async def test_send_task_in_another_protocol_needs_its_sender() -> None:
    app = App("proto", broker="memory://proto")
    with pytest.raises(ConfigurationError, match="CeleryBridge"):
        await app.send_task("legacy.report", (1,), protocol="celery")
    with pytest.raises(ConfigurationError, match="no sender"):
        await app.send_task("legacy.report", protocol="carrier-pigeon")
    with pytest.raises(ConfigurationError, match="cannot be replaced"):
        app.register_protocol("aqueue", lambda *a: None)  # type: ignore[arg-type,return-value]


async def test_a_second_bridge_on_one_app_is_refused(queue: str) -> None:
    app = App("proto", broker=f"memory://proto-{uuid.uuid4().hex[:12]}")
    bridge = CeleryBridge(app, CELERY_URL, queues=[], default_queue=queue)
    lifespans = list(app.lifespans)
    try:
        with pytest.raises(ConfigurationError, match="protocol 'celery' already has a sender"):
            CeleryBridge(app, CELERY_URL, queues=[], default_queue=f"{queue}-celery")
        await bridge.close()  # dropping its connections leaves it the app's bridge
        with pytest.raises(ConfigurationError, match="protocol 'celery' already has a sender"):
            CeleryBridge(app, CELERY_URL, queues=[], default_queue=f"{queue}-celery")
        assert app.lifespans == lifespans  # the refused ones added nothing to the workers
        app.register_protocol("celery", bridge._send_for_app)  # the same sender again: fine
        handle = await app.send_task("legacy.report", protocol="celery")
        assert isinstance(handle, CeleryResult) and handle.bridge is bridge
        assert bridge.kombu is not None
        [raw] = await bridge.kombu.client().lrange(queue, 0, -1)
        assert json.loads(raw)["headers"]["id"] == handle.id
    finally:
        await bridge.close()


async def test_send_task_to_celery_refuses_options_a_celery_message_cannot_carry() -> None:
    app = App("proto", broker="memory://proto-options")
    bridge = CeleryBridge(app, CELERY_URL)
    try:
        with pytest.raises(ConfigurationError, match="link, serializer cannot be carried"):
            await app.send_task("legacy.report", protocol="celery", serializer="json", link=[])
    finally:
        await bridge.close()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"countdown": 30, "eta": time.time() + 60}, "countdown or eta, not both"),
        ({"priority": 42}, "priority must be between 0 and 9"),
        ({"eta": -1}, "eta must be a finite time after 1970"),
        ({"time_limit": 0}, "time_limit must be more than 0 seconds"),
    ],
)
async def test_send_task_to_celery_checks_its_options_as_aqueue_does(
    queue: str, options: dict[str, Any], error: str
) -> None:
    app = App("proto", broker=f"memory://proto-{uuid.uuid4().hex[:12]}")
    bridge = CeleryBridge(app, CELERY_URL, default_queue=queue)
    try:
        with pytest.raises(OptionError, match=error):
            await app.send_task("legacy.report", protocol="celery", **options)
        # refused before anything reached Celery's lists
        client = bridge.kombu.client()
        assert [await client.llen(queue_list(queue, p)) for p in PRIORITY_STEPS] == [0] * 4
    finally:
        await bridge.close()


async def test_send_task_to_celery_on_redis_keeps_higher_priorities_first(queue: str) -> None:
    # kombu's Redis transport takes its lists lowest number first: aqueue's priority 9 (its
    # highest) was sent as kombu's 9, behind everything a Celery worker had on that queue
    app = App("proto", broker=f"memory://proto-{uuid.uuid4().hex[:12]}")
    bridge = CeleryBridge(app, CELERY_URL, default_queue=queue)
    try:
        sent = {
            priority: (await app.send_task("legacy.report", protocol="celery", **options)).id
            for priority, options in ((9, {"priority": 9}), (0, {"priority": 0}), (None, {}))
        }
        client = bridge.kombu.client()
        lists: dict[int, list[str]] = {}
        for step in PRIORITY_STEPS:
            raws = await client.lrange(queue_list(queue, step), 0, -1)
            lists[step] = [json.loads(raw)["headers"]["id"] for raw in raws]
        # aqueue's 9 and no priority (Celery's default) on the list taken first, 0 on the last
        assert sorted(lists[0]) == sorted([sent[9], sent[None]]) and lists[9] == [sent[0]]
    finally:
        await bridge.close()


def test_blocking_code_sends_to_celery_through_the_app(queue: str) -> None:
    # a Flask view or a script: app.sync.send_task(..., protocol="celery") puts a Celery
    # protocol 2 message on Celery's list, options carried in its headers
    app = App("mig", broker=f"memory://s{uuid.uuid4().hex[:12]}")
    bridge = CeleryBridge(app, CELERY_URL, default_queue=queue)
    try:
        handle = app.sync.send_task(
            "proj.report", (7,), {"team": "a"}, protocol="celery", countdown=30, priority=9
        )
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=CELERY_DB)
        try:
            [raw] = client.lrange(queue, 0, -1)
        finally:
            client.close()
        sent = json.loads(raw)
        headers = sent["headers"]
        assert (headers["task"], headers["id"]) == ("proj.report", handle.id)
        assert headers["eta"] is not None and sent["content-type"] == "application/json"
        assert handle.state == "PENDING"  # nothing ran it: Celery's result is not there
    finally:
        app.sync.call(bridge.close)  # its clients live on the blocking API's loop
        app.sync.close()
