"""Celery's canvas, awaitable: the examples of issue 6 and the canvas guide."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from aqueue import App, ConfigurationError, TaskFailed, TaskRevoked, Unsupported, states
from aqueue.workflows import Signature, chain, chord, group, result_from_tuple, signature

from .conftest import Calls


async def test_chain(app: App, t: Any) -> None:
    async with app.worker():
        wf = await (t.div.s(4, 2) | t.mul.s(3) | t.add.s(6) | t.sub.s(2)).delay()
        assert await wf.wait(timeout=10) == 10
        parents = []
        node = wf
        while node is not None:
            parents.append(await node.wait(timeout=10))
            node = node.parent
        assert parents == [10, 12, 6, 2]
        assert wf.parent.children == [wf]


async def test_chain_function_and_partial_args(app: App, t: Any) -> None:
    async with app.worker():
        wf = await chain(t.add.s(2), t.mul.s(10)).delay(3)  # add(2, 3) -> mul(5, 10)
        assert await wf.wait(timeout=10) == 50


async def test_group(app: App, t: Any) -> None:
    async with app.worker():
        res = await group(t.add.s(i, i) for i in range(10)).delay()
        assert await res.wait(timeout=10) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
        assert await res.completed_count() == 10
        assert await res.ready() and await res.successful() and not await res.failed()
        assert not await res.waiting()


async def test_chord(app: App, t: Any, calls: Calls) -> None:
    async with app.worker(concurrency=50):
        total = await chord((t.add.s(i, i) for i in range(100)), t.tsum.s()).delay()
        assert await total.wait(timeout=30) == 9900
        assert await total.parent.completed_count() == 100
    assert calls.log.count(("tsum", 100)) == 1


async def test_group_or_task_is_a_chord(app: App, t: Any) -> None:
    async with app.worker():
        res = await (group(t.add.s(i, 1) for i in range(3)) | t.tsum.s()).delay()
        assert await res.wait(timeout=10) == 6


async def test_link_and_link_error(app: App, t: Any, calls: Calls) -> None:
    async with app.worker():
        h = await t.add.apply_async((2, 2), link=t.record.s(), link_error=t.on_err.s())
        assert await h.wait(timeout=10) == 4
        bad = await t.fail.apply_async((7,), link=t.record.s(), link_error=t.on_err.s())
        with pytest.raises(TaskFailed):
            await bad.wait(timeout=10)
        async with asyncio.timeout(10):  # the errback runs after the failure is stored
            await calls.errback_ran.wait()
        await (await t.add.delay(0, 0)).wait(timeout=10)
    assert ("record", 4) in calls.log
    assert ("errback", (bad.id, "ValueError", "bad 7")) in calls.log
    assert not any(c == ("record", None) for c in calls.log)


async def test_signature_forms(app: App, t: Any) -> None:
    async with app.worker():
        assert await (await t.add.s(2, 2).delay()).wait(timeout=10) == 4
        assert await (await t.add.s(2).delay(4)).wait(timeout=10) == 6  # partial
        assert await (await t.kw.s(3, scale=5).delay()).wait(timeout=10) == 15
        by_name = signature("w.add", args=(1, 2), app=app)
        assert await (await by_name.delay()).wait(timeout=10) == 3
        assert await (await app.signature("w.add", (5, 5)).delay()).wait(timeout=10) == 10
        cloned = t.add.s(1).clone((9,))
        assert await (await cloned.delay()).wait(timeout=10) == 10
        assert (
            await (await t.add.s(1, 1).set(queue="celery", priority=3).delay()).wait(timeout=10)
            == 2
        )
        # immutable: the parent's result is not prepended
        wf = await (t.add.s(1, 1) | t.add.si(10, 10)).delay()
        assert await wf.wait(timeout=10) == 20
        assert await (await t.add.s(1, 1)()).wait(timeout=10) == 2  # Celery's sig()


def test_signature_is_plain_data(app: App, t: Any) -> None:
    sig = t.add.s(2, y=3).set(countdown=5, queue="hi")
    data = sig.to_dict()
    assert json.loads(json.dumps(data)) == {
        "task": "w.add",
        "args": [2],
        "kwargs": {"y": 3},
        "options": {"countdown": 5, "queue": "hi"},
        "immutable": False,
    }
    node = sig.freeze()
    assert msgspec.json.decode(msgspec.json.encode(node), type=type(node)) == node
    assert isinstance(t.add.si(1, 2), Signature) and t.add.si(1, 2).immutable


async def test_map_starmap_chunks(app: App, t: Any) -> None:
    async with app.worker():
        assert await (await t.add.starmap([(1, 2), (3, 4)]).delay()).wait(timeout=10) == [3, 7]
        assert await (await t.tsum.map([[1, 2], [3]]).delay()).wait(timeout=10) == [3, 3]
        res = await t.add.chunks([(i, i) for i in range(10)], 3).delay()
        assert await res.wait(timeout=10) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]


async def test_nesting(app: App, t: Any) -> None:
    async with app.worker(concurrency=20):
        # a group inside a chain: becomes a chord with the next step as body
        wf = await (t.add.s(1, 1) | group(t.mul.s(i) for i in range(1, 4)) | t.tsum.s()).delay()
        assert await wf.wait(timeout=10) == 2 * 1 + 2 * 2 + 2 * 3
        # chains inside a group
        g = await group(t.add.s(i, 0) | t.mul.s(10) for i in range(3)).delay()
        assert await g.wait(timeout=10) == [0, 10, 20]
        # a chord of chords
        inner = [chord((t.add.s(i, j) for j in range(3)), t.tsum.s()) for i in range(3)]
        outer = await chord(inner, t.tsum.s()).delay()
        assert await outer.wait(timeout=20) == sum(3 * i + 3 for i in range(3))
        # a chain after a chord
        after = await (chord((t.add.s(i, i) for i in range(3)), t.tsum.s()) | t.mul.s(2)).delay()
        assert await after.wait(timeout=10) == 12


async def test_failure_in_chain_fails_downstream_never_hangs(app: App, t: Any) -> None:
    async with app.worker():
        wf = await (t.add.s(1, 1) | t.fail.s() | t.add.s(1) | t.add.s(1)).delay()
        with pytest.raises(TaskFailed) as info:
            await wf.wait(timeout=10)
    assert "upstream task" in info.value.exc_message and "bad 2" in info.value.exc_message
    states_by_id = await app.workflow_states(wf.workflow_ids[0])
    assert list(states_by_id.values()) == [
        states.SUCCESS,
        states.FAILURE,
        states.FAILURE,
        states.FAILURE,
    ]


async def test_chord_member_failure_fails_the_chord(app: App, t: Any, calls: Calls) -> None:
    async with app.worker():
        body = t.tsum.s().on_error(t.on_err.s())
        res = await chord([t.add.s(1, 1), t.fail.s(3), t.add.s(2, 2)], body).delay()
        with pytest.raises(TaskFailed, match="bad 3"):
            await res.wait(timeout=10)
        async with asyncio.timeout(10):
            await calls.errback_ran.wait()
    assert not any(c[0] == "tsum" for c in calls.log)
    [(_, (errored_id, kind, _msg))] = [c for c in calls.log if c[0] == "errback"]
    assert errored_id == res.id and kind == "ValueError"


async def test_empty_chord_and_group(app: App, t: Any) -> None:
    async with app.worker():
        assert await (await chord([], t.tsum.s()).delay()).wait(timeout=10) == 0
        assert await (await group([], app=app).delay()).wait(timeout=10) == []
        with pytest.raises(ConfigurationError):
            await group([]).delay()  # no member, no app: nowhere to send it


async def test_group_result_save_restore_and_tuples(app: App, t: Any) -> None:
    async with app.worker():
        res = await group(t.add.s(i, 1) for i in range(3)).delay()
        await res.save()
        again = await app.GroupResult.restore(res.id)
        assert await again.wait(timeout=10) == [1, 2, 3]
        wf = await (t.add.s(1, 1) | t.add.s(1)).delay()
        await wf.wait(timeout=10)
    as_json = json.loads(json.dumps(wf.as_tuple()))
    rebuilt = result_from_tuple(app, as_json)
    assert rebuilt.id == wf.id and rebuilt.parent.id == wf.parent.id
    assert await rebuilt.wait(timeout=5) == 3
    g = result_from_tuple(app, json.loads(json.dumps(res.as_tuple())))
    assert [r.id for r in g.results] == [r.id for r in res.results]


async def test_revoke_a_workflow_as_a_unit(app: App, t: Any, calls: Calls) -> None:
    wf = await (t.add.s(1, 1) | t.add.s(1) | t.add.s(1)).delay()
    await wf.revoke()  # before any worker is online
    async with app.worker():
        with pytest.raises(TaskRevoked):
            await wf.wait(timeout=10)
        await (await t.mul.delay(1, 1)).wait(timeout=10)
    assert not any(c[0] == "add" for c in calls.log)


async def test_chord_of_1000(app: App, t: Any, calls: Calls) -> None:
    async with app.worker(concurrency=100):
        res = await chord((t.add.s(i, 0) for i in range(1000)), t.tsum.s()).delay()
        assert await res.wait(timeout=60) == sum(range(1000))
    assert calls.log.count(("tsum", 1000)) == 1


async def test_group_skew(app: App, c: Any) -> None:
    """Celery's ``group.skew(start, stop, step)``: member i waits start + i * step seconds,
    capped at the last countdown not past ``stop``."""
    g = group(c.add.s(i, i) for i in range(5)).skew(start=1, stop=3.5, step=1)
    assert [m.options["countdown"] for m in g.members] == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert [n.options["countdown"] for n in g.to_node().members] == [1.0, 2.0, 3.0, 3.0, 3.0]
    skewed = group(c.return_request_eta.s() for _ in range(3)).skew(start=0.25, step=0.25)
    async with app.worker(concurrency=20):
        etas = await (await skewed.delay()).wait(timeout=30)
    assert [round(eta - etas[0], 2) for eta in etas] == [0.0, 0.25, 0.5]


def test_eager_apply_and_stamping_are_refused_naming_the_alternative(app: App, c: Any) -> None:
    """Celery's eager ``apply()`` (refused project-wide, as ``task_always_eager``) and
    stamping fail loudly: ``Unsupported`` (also a NotImplementedError) says what to use."""
    for canvas, spelled in (
        (chain(c.add.s(1, 1), c.add.s(1)), "chain.apply()"),
        (group(c.add.s(1, 1)), "group.apply()"),
        (chord([c.add.s(1, 1)], c.tsum.s()), "chord.apply()"),
        (c.add.s(1, 1), "signature.apply()"),
    ):
        with pytest.raises(Unsupported, match="memory://") as info:
            canvas.apply()
        assert spelled in str(info.value) and isinstance(info.value, NotImplementedError)
    with pytest.raises(Unsupported, match=r"c\.add\.apply\(\)"):
        c.add.apply((1, 1))
    with pytest.raises(Unsupported, match="headers"):
        c.add.s(1, 1).stamp(on="x")
