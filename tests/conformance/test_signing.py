"""Issue 19: signed messages and results, on every broker.

With ``signing_keys`` set, a message that is unsigned, signed with a key no longer listed,
tampered with, too old, or published again after it was handled is dead-lettered with the
reason and never run; a healthy signed task runs beside them. Result records are signed too:
a forged message cannot overwrite a finished task's result, and a record written into the
backend without a signature is refused when read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from aqueue import App, SignatureError, chord, group, states
from aqueue.core.message import MessageOut, ResultOut
from aqueue.core.protocols import Outgoing
from aqueue.core.remote import CONTROL_CAP, CONTROL_TOPIC
from aqueue.core.remote import REQUEST_CONTEXT as CTX
from aqueue.core.signed_results import underlying
from aqueue.core.signing import Keyring

OLD = "k2025"
NEW = "k2026"
SECRETS = {OLD: "old-secret-" + "o" * 32, NEW: "new-secret-" + "n" * 32}


@contextlib.asynccontextmanager
async def signed_app(app: App, keys: list[str], **settings: Any) -> AsyncIterator[App]:
    """An app on ``app``'s broker and result store, signing with ``keys`` (first signs)."""
    the_app = App(
        "tests",
        broker=app.broker_url,
        backend=app.conf.result_backend,
        lease_seconds=5.0,
        signing_keys={k: SECRETS[k] for k in keys},
        **settings,
    )
    calls: list[tuple[int, int]] = []

    @the_app.task(name="t.add")
    async def add(x: int, y: int) -> int:
        calls.append((x, y))
        return x + y

    the_app.state.calls = calls
    the_app.state.add = add
    async with the_app:
        yield the_app


def _message(app: App, tid: str, x: int, y: int, **fields: Any) -> bytes:
    msg = MessageOut(id=tid, task="t.add", queue=app.conf.task_default_queue, args=(x, y), **fields)
    return msgspec.msgpack.encode(msg)


async def _publish(app: App, tid: str, body: bytes, *, raw: bool = False) -> None:
    """Publish ``body`` as task ``tid``; ``raw``: under a fresh broker id, as someone who
    writes to the broker directly can (past the broker's de-duplication of ids)."""
    outgoing = Outgoing(
        id=str(uuid.uuid4()) if raw else tid, queue=app.conf.task_default_queue, body=body
    )
    assert await app.broker.publish([outgoing]) == [True]


async def _letters(app: App) -> list[tuple[str, str]]:
    return sorted((d.id, d.reason) for d in await app.broker.dead_letters())


async def _refused(worker_app: App, tid: str, body: bytes, reason: str) -> None:
    """``body`` (task ``tid``) is dead-lettered with ``reason``; a healthy task still runs."""
    await _publish(worker_app, tid, body)
    add = worker_app.state.add
    async with worker_app.worker():
        assert await (await add.delay(2, 3)).wait(timeout=10) == 5
        # the bad one was claimed before or with the healthy one: wait for its dead letter
        for _ in range(100):
            if await _letters(worker_app):
                break
            await (await add.delay(0, 0)).wait(timeout=10)
    assert await _letters(worker_app) == [(tid, reason)]
    assert (7, 7) not in worker_app.state.calls  # never run
    assert await worker_app.AsyncResult(tid).state() == states.PENDING  # nothing believed
    assert await worker_app.broker.size(worker_app.conf.task_default_queue) == 0


async def test_signed_tasks_run_and_results_verify(app: App) -> None:
    async with signed_app(app, [NEW]) as signed:
        async with signed.worker():
            handle = await signed.state.add.delay(2, 2)
            assert await handle.wait(timeout=10) == 4
            assert await handle.state() == states.SUCCESS
        raw = await underlying(signed.backend).get(handle.id)  # type: ignore[union-attr]
        assert raw is not None and raw[:4] == b"\xc1AQ1"  # stored signed
        assert await signed.broker.dead_letters() == []


async def test_unsigned_message_is_refused_when_signing_is_required(app: App) -> None:
    async with signed_app(app, [NEW]) as signed:
        tid = str(uuid.uuid4())
        await _refused(signed, tid, _message(signed, tid, 7, 7), "signature:unsigned")


async def test_message_signed_with_a_removed_key_is_refused(app: App) -> None:
    async with signed_app(app, [NEW]) as signed:
        tid = str(uuid.uuid4())
        body = Keyring({OLD: SECRETS[OLD]}).sign(_message(signed, tid, 7, 7))
        await _refused(signed, tid, body, "signature:unknown_key")


async def test_tampered_message_is_refused(app: App) -> None:
    async with signed_app(app, [NEW]) as signed:
        tid = str(uuid.uuid4())
        body = bytearray(Keyring({NEW: SECRETS[NEW]}).sign(_message(signed, tid, 7, 7)))
        body[-1] ^= 1  # the last argument: 7 becomes 6
        await _refused(signed, tid, bytes(body), "signature:bad_signature")


async def test_message_past_the_replay_window_is_refused(app: App) -> None:
    async with signed_app(app, [NEW], signing_max_age=60.0) as signed:
        tid = str(uuid.uuid4())
        body = Keyring({NEW: SECRETS[NEW]}).sign(
            _message(signed, tid, 7, 7), now=time.time() - 120.0
        )
        await _refused(signed, tid, body, "signature:expired")


@pytest.mark.parametrize("raw", [False, True], ids=["same-id", "fresh-broker-id"])
async def test_replayed_message_is_refused(app: App, raw: bool) -> None:
    """The exact bytes of a handled message, published again, do not run it again."""
    async with signed_app(app, [NEW]) as signed:
        tid = str(uuid.uuid4())
        body = Keyring({NEW: SECRETS[NEW]}).sign(_message(signed, tid, 7, 7))
        await _publish(signed, tid, body)
        async with signed.worker():
            assert await signed.AsyncResult(tid).wait(timeout=10) == 14
        assert signed.state.calls == [(7, 7)]
        outgoing = Outgoing(
            id=str(uuid.uuid4()) if raw else tid, queue=signed.conf.task_default_queue, body=body
        )
        if await signed.broker.publish([outgoing]) == [False]:
            pytest.skip("this broker refuses an id it saw lately: no replay under the same id")
        async with signed.worker():
            assert await (await signed.state.add.delay(2, 3)).wait(timeout=10) == 5
            for _ in range(100):
                if await _letters(signed):
                    break
                await (await signed.state.add.delay(0, 0)).wait(timeout=10)
        assert [reason for _, reason in await _letters(signed)] == ["replayed"]
        assert signed.state.calls.count((7, 7)) == 1  # ran once
        assert await signed.AsyncResult(tid).wait(timeout=10) == 14  # its result kept


async def test_rotation_accepts_the_old_key_while_it_is_listed(app: App) -> None:
    async with (
        signed_app(app, [OLD]) as producer,
        signed_app(app, [NEW, OLD]) as worker_app,
    ):
        handle = await producer.state.add.delay(20, 22)  # signed with the old key
        async with worker_app.worker():
            assert await worker_app.AsyncResult(handle.id).wait(timeout=10) == 42
            # the producer, listing only the old key, refuses records signed with the new
            with pytest.raises(SignatureError) as info:
                await handle.wait(timeout=10)
        assert info.value.reason == "unknown_key"
        assert await worker_app.broker.dead_letters() == []


async def test_forged_message_cannot_overwrite_a_result(app: App) -> None:
    """The forgery issue 19 names: a raw message with the victim's id and a higher attempt
    turned a stored 2 into 42. Signed, it is dead-lettered and the 2 stays."""
    async with signed_app(app, [NEW]) as signed:
        victim = await signed.state.add.delay(1, 1)
        async with signed.worker():
            assert await victim.wait(timeout=10) == 2
        forged = _message(signed, victim.id, 40, 2, prior_attempts=10)
        await _publish(signed, victim.id, forged, raw=True)
        async with signed.worker():
            assert await (await signed.state.add.delay(2, 3)).wait(timeout=10) == 5
            for _ in range(100):
                if await _letters(signed):
                    break
                await (await signed.state.add.delay(0, 0)).wait(timeout=10)
        assert [reason for _, reason in await _letters(signed)] == ["signature:unsigned"]
        assert await signed.AsyncResult(victim.id).wait(timeout=10) == 2
        assert (40, 2) not in signed.state.calls


async def test_unsigned_record_in_the_backend_is_refused(app: App) -> None:
    async with signed_app(app, [NEW]) as signed:
        tid = str(uuid.uuid4())
        forged = msgspec.msgpack.encode(
            ResultOut(id=tid, state=states.SUCCESS, value=42, attempt=99)
        )
        real = underlying(signed.backend)
        assert real is not None
        await real.store(tid, forged, state=states.SUCCESS, attempt=99, ttl=60.0)
        with pytest.raises(SignatureError) as info:
            await signed.AsyncResult(tid).wait(timeout=10)
        assert info.value.reason == "unsigned"
        # a record signed for another task id is refused too (the id is signed with it)
        other = str(uuid.uuid4())
        copied = Keyring({NEW: SECRETS[NEW]}).sign(forged, context=other.encode())
        await real.store(tid, copied, state=states.SUCCESS, attempt=100, ttl=60.0)
        with pytest.raises(SignatureError) as info:
            await signed.AsyncResult(tid).state()
        assert info.value.reason == "bad_signature"


async def test_forged_control_requests_are_ignored(app: App) -> None:
    """Remote control with signing on: an unsigned ``shutdown`` and one signed with an
    unknown key are ignored; signed commands work."""
    async with signed_app(app, [NEW]) as signed:
        worker = signed.worker(hostname="w@signed")
        await worker.start()
        try:
            await app.control.shutdown(reply=False)  # app: the same broker, no keys
            stranger = App("tests", broker=app.broker_url, signing_keys={OLD: SECRETS[OLD]})
            async with stranger:
                await stranger.control.shutdown(reply=False)
            # the topic is read in order: the ping is answered after those were read
            assert await signed.control.ping(timeout=30, limit=1) == [{"w@signed": {"ok": "pong"}}]
            assert await (await signed.state.add.delay(1, 2)).wait(timeout=10) == 3
        finally:
            await signed.control.shutdown(reply=False)
            async with asyncio.timeout(20):
                await worker.wait_stopped()  # the signed shutdown is obeyed


async def test_retries_workflows_and_rate_limits_run_signed(app: App) -> None:
    """What a worker sends again (a retry, a rate-limited message put back, the next step of
    a workflow, a chord's body) is signed by it, and none of it is taken for a replay."""
    async with signed_app(app, [NEW]) as signed:
        tries: list[int] = []

        @signed.task(name="t.flaky", bind=True, max_retries=3)
        async def flaky(self: Any, x: int) -> int:
            tries.append(x)
            if len(tries) < 3:
                raise self.retry(countdown=0)
            return x

        @signed.task(name="t.tsum")
        async def tsum(values: list[int]) -> int:
            return sum(values)

        @signed.task(name="t.limited", rate_limit="20/s")
        async def limited(x: int) -> int:
            return x

        add = signed.state.add
        async with signed.worker():
            assert await (await flaky.delay(7)).wait(timeout=20) == 7
            assert tries == [7, 7, 7]
            assert await (await (add.s(1, 1) | add.s(2) | add.s(3)).delay()).wait(timeout=20) == 7
            members = group(add.s(i, i) for i in range(5))
            assert await (await chord(members, tsum.s()).delay()).wait(timeout=20) == 20
            handles = [await limited.delay(i) for i in range(10)]
            assert [await h.wait(timeout=20) for h in handles] == list(range(10))
        assert await signed.broker.dead_letters() == []


async def test_a_signed_control_request_published_again_is_ignored(app: App) -> None:
    async with signed_app(app, [NEW]) as signed:
        topics = signed.broker.topics  # type: ignore[attr-defined]
        async with signed.worker(hostname="w@signed"):
            watch = await topics.subscribe(CONTROL_TOPIC)
            try:
                assert await signed.control.ping(timeout=30, limit=1) == [
                    {"w@signed": {"ok": "pong"}}
                ]
                [captured] = await watch.get(30)
            finally:
                await watch.close()
            request = msgspec.json.decode(Keyring({NEW: SECRETS[NEW]}).verify(captured, CTX))
            replies = await topics.subscribe(request["reply_to"])
            try:
                await topics.publish(CONTROL_TOPIC, [captured], cap=CONTROL_CAP)
                # read in order: once this ping is answered, the copy was read before it
                assert await signed.control.ping(timeout=30, limit=1) == [
                    {"w@signed": {"ok": "pong"}}
                ]
                assert await replies.get(0.2) == []  # the copy was not answered
            finally:
                await replies.close()
