"""The group section of Celery's canvas integration tests, spelled the async way.

Each test names the Celery test (``t/integration/test_canvas.py::test_group``) whose shape,
values and errors it checks, on every broker (more of ``self.replace()`` in
``test_celery_replace.py``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from aqueue import (
    App,
    Chain,
    Chord,
    Group,
    Signature,
    TaskFailed,
    chain,
    chord,
    group,
    signature,
)

from .celery_tasks import Recorder
from .conftest import settle
from .test_celery_chain import expected, ids_in_as_tuple

TIMEOUT = 30


async def test_ready_with_exception(app: App, c: Any) -> None:
    """test_ready_with_exception: a group with a failed member becomes ready."""
    async with app.worker(concurrency=20):
        res = await group([c.add.s(1, 2), c.fail.s()]).apply_async()
        values = await res.wait(TIMEOUT, propagate=False)
        assert await res.ready() and await res.failed() and not await res.successful()
    assert values[0] == 3 and isinstance(values[1], TaskFailed)  # each error in its place
    assert values[1].exc_type == "ExpectedException"
    assert await res.completed_count() == 1


async def test_empty_group_result(app: App) -> None:
    """test_empty_group_result: an empty group is saved and restored."""
    res = await group([], app=app).apply_async()
    await res.save()
    again = await app.GroupResult.restore(res.id)
    assert again.results == [] and await again.wait(1) == []


async def test_parent_ids(app: App, c: Any) -> None:
    """test_group.test_parent_ids: members of a group after a chain."""
    wf = c.ids.si(i=1) | c.ids.si(i=2) | group(c.ids.si(i=i) for i in range(2, 50))
    async with app.worker(concurrency=50):
        res = await wf()
        expected_root_id = res.parent.parent.id
        expected_parent_id = res.parent.id
        values = await res.wait(TIMEOUT)
    for i, (root_id, parent_id, value) in enumerate(values):
        assert root_id == expected_root_id
        assert parent_id == expected_parent_id
        assert value == i + 2


async def test_generator_group(app: App, c: Any) -> None:
    """test_generator_group_iterated_while_calling_len."""
    g = group(c.add.s(i, i) for i in range(4))
    assert [(m.args, len(g.members)) for m in g.members] == [((i, i), 4) for i in range(4)]
    async with app.worker(concurrency=20):
        assert await (await g.apply_async()).wait(TIMEOUT) == [0, 2, 4, 6]


async def test_nested_groups_unroll(app: App, c: Any) -> None:
    """test_nested_group, test_group_lone, test_nested_group_group."""
    nested = group(
        c.add.si(1, 10),
        group(c.add.si(1, 100), group(c.add.si(1, 1000), c.add.si(1, 2000))),
    )
    async with app.worker(concurrency=20):
        assert await (await nested()).wait(TIMEOUT) == [11, 101, 1001, 2001]
        lone = group(c.identity.s(42), c.identity.s(42))
        assert await (await lone.delay()).wait(TIMEOUT) == [42, 42]
        inner = group(group(c.identity.s(42), c.identity.s(42)))
        assert await (await inner.delay()).wait(TIMEOUT) == [42, 42]


async def test_large_group(app: App, c: Any) -> None:
    """test_large_group: 1000 members, in order."""
    async with app.worker(concurrency=100):
        res = await group(c.identity.s(i) for i in range(1000)).delay()
        assert await res.wait(TIMEOUT) == list(range(1000))


async def test_nested_group_chord_counting(app: App, c: Any) -> None:
    """test_nested_group_chord_counting_simple, _chain, _group, _chord, _mixed and
    test_nested_group_chord_body_chain: chords inside a group of one."""
    ident = c.identity
    n = 42
    mixed = chord(
        (
            ident.si(42),
            chain((ident.si(42),) * n),
            group((ident.si(42),) * n),
            chord((ident.si(42),) * n, ident.si(1337)),
        ),
        ident.s(),
    )
    shapes = [
        (chord((ident.si(42),), ident.s()), [[42]]),
        (chord((chain((ident.si(1337),) * n),), ident.s()), [[1337]]),
        (chord((group((ident.si(1337),) * n),), ident.s()), [[1337] * n]),
        (chord((chord((ident.si(1337),) * n, ident.si(31337)),), ident.s()), [[31337]]),
        # a group in a header is unrolled into it, hence the flat middle
        (mixed, [[42, 42, *((42,) * n), 1337]]),
    ]
    async with app.worker(concurrency=100):
        for child_chord, value in shapes:
            res = await group((child_chord,)).delay()
            assert await res.wait(TIMEOUT) == value
        res = await group((chord(ident.si(42), chain((ident.s(),))),)).delay()
        assert await res.children[0].wait(TIMEOUT) == [42]
        assert await res.wait(TIMEOUT) == [[42]]


async def test_group_ending_a_chain_in_a_group_gets_its_own_id(app: App, c: Any) -> None:
    """test_group_ending_a_chain_in_a_group_gets_its_own_id."""
    wf = group(c.identity.si(1), chain(c.identity.si(2), group(c.identity.si(3), c.identity.si(4))))
    async with app.worker(concurrency=20):
        res = await wf.apply_async()
        assert await res.wait(TIMEOUT) == [1, [3, 4]]
    ids = ids_in_as_tuple(res.as_tuple())
    assert len(ids) == len(set(ids)) == 6, ids  # two GroupResults and four tasks


async def test_callback_called_by_group(app: App, c: Any, rec: Recorder) -> None:
    """test_callback_called_by_group: once, after every member succeeded.

    Celery links the callback to the first member (so it may run before the others finish,
    or when they fail); aqueue applies it once every member succeeded, with the list.
    """
    g = group(c.identity.si(42), c.identity.si(1337))
    g.link(c.redis_echo.si("group done", redis_key="k"))
    g.link(c.redis_echo.s(redis_key="values"))
    async with app.worker(concurrency=20):
        assert await (await g.delay()).wait(TIMEOUT) == [42, 1337]
    await settle(app)
    assert rec.echoes["k"] == ["group done"]
    assert rec.echoes["values"] == [[42, 1337]]


@pytest.mark.parametrize("failing", ["first", "last"])
async def test_errback_called_by_group(app: App, c: Any, rec: Recorder, failing: str) -> None:
    """test_errback_called_by_group_fail_first, _fail_last."""
    members = [c.fail.s(), c.identity.si(42)]
    g = group(*(members if failing == "first" else reversed(members)))
    g.link_error(c.redis_echo.si("errback", redis_key="k"))
    async with app.worker(concurrency=20):
        with pytest.raises(TaskFailed) as info:
            await (await g.delay()).wait(TIMEOUT)
        expected(info)
    await settle(app)
    assert rec.echoes["k"] == ["errback"]


@pytest.mark.parametrize("style", ["old", "new"])
async def test_mutable_errback_called_by_group(app: App, c: Any, rec: Recorder, style: str) -> None:
    """test_mutable_errback_called_by_group[errback_old_style, errback_new_style]:
    ``errback(task_id)`` and ``errback(task_id, error)`` get the failed task's id."""
    fail_sig = c.fail.s()
    fail_sig_id = fail_sig.freeze().id
    errback = (c.errback_old_style if style == "old" else c.errback_new_style).s()
    g = group(fail_sig, c.identity.si(42))
    g.link_error(errback)
    async with app.worker(concurrency=20):
        with pytest.raises(TaskFailed):
            await (await g.delay()).wait(TIMEOUT)
    await settle(app)
    assert rec.counts == {fail_sig_id: 1}


async def test_errback_called_by_group_fail_multiple(app: App, c: Any, rec: Recorder) -> None:
    """test_errback_called_by_group_fail_multiple: once per failed member."""
    g = group(*(c.identity.si(42) for _ in range(24)), *(c.fail.s() for _ in range(42)))
    g.link_error(c.redis_count.si(redis_key="k"))
    async with app.worker(concurrency=50):
        with pytest.raises(TaskFailed):
            await (await g.delay()).wait(TIMEOUT)
    await settle(app)
    assert rec.counts["k"] == 42


async def test_group_children_with_callbacks_and_errbacks(app: App, c: Any, rec: Recorder) -> None:
    """test_group_children_with_callbacks, test_group_children_with_errbacks."""
    ok = c.identity.si(1337)
    ok.link(c.redis_count.si(redis_key="callbacks"))
    bad = c.fail.si()
    bad.link_error(c.redis_count.si(redis_key="errbacks"))
    async with app.worker(concurrency=50):
        assert await (await group(ok for _ in range(42))()).wait(TIMEOUT) == [1337] * 42
        with pytest.raises(TaskFailed):
            await (await group(bad for _ in range(42))()).wait(TIMEOUT)
    await settle(app)
    assert rec.counts == {"callbacks": 42, "errbacks": 42}


async def test_group_with_callback_and_errback(app: App, c: Any, rec: Recorder) -> None:
    """test_group_with_callback_child_replaced, _with_errback_child_replaced,
    test_group_child_with_callback_replaced, _with_errback_replaced: replaced members."""
    with_callback = group(c.add_replaced.si(42, 1337), c.identity.si(31337))
    with_callback.link(c.redis_count.si("group-cb"))
    with_errback = group(c.add_replaced.si(42, 1337), c.fail.s())
    with_errback.link_error(c.redis_count.si("group-eb"))
    child = c.add_replaced.si(42, 1337)
    child.link(c.redis_count.si("child-cb"))
    failing = c.fail_replaced.si()
    failing.link_error(c.redis_count.si("child-eb"))
    async with app.worker(concurrency=20):
        assert await (await with_callback()).wait(TIMEOUT) == [42 + 1337, 31337]
        with pytest.raises(TaskFailed):
            await (await with_errback()).wait(TIMEOUT)
        assert await (await group(child, c.identity.si(31337))()).wait(TIMEOUT) == [1379, 31337]
        with pytest.raises(TaskFailed):
            await (await group(failing, c.identity.si(42))()).wait(TIMEOUT)
    await settle(app)
    assert rec.counts == {"group-cb": 1, "group-eb": 1, "child-cb": 1, "child-eb": 1}


async def test_group_order(app: App, c: Any) -> None:
    """test_task_replace_with_group_preserves_group_order: members replaced by groups."""
    g = group([c.add_to_all_replaced.s([2, 1], 1), c.add_to_all_replaced.s([4, 3], 1)] * 10)
    async with app.worker(concurrency=20):
        assert await (await g.delay()).wait(TIMEOUT) == [[3, 2], [5, 4]] * 10


async def test_group_with_empty_chain_members(app: App, c: Any) -> None:
    """test_group_with_empty_chain_members: empty chains are no-ops."""
    async with app.worker(concurrency=20):
        res = await group(chain(), c.add.s(1, 2), chain(), c.add.s(3, 4)).apply_async()
        assert len(res.results) == 2
        assert await res.wait(TIMEOUT) == [3, 7]


async def test_group_apply_async_options(app: App, c: Any) -> None:
    """Group.apply_async(countdown=2) delays every member (issue 13)."""
    sent = time.time()
    async with app.worker(concurrency=20):
        res = await group(c.return_request_eta.s(), c.return_request_eta.s()).apply_async(
            countdown=1
        )
        etas = await res.wait(TIMEOUT)
    assert all(eta is not None and eta >= sent + 1 for eta in etas)
    assert time.time() >= sent + 1


async def test_xmap_xstarmap(app: App, c: Any, rec: Recorder) -> None:
    """test_xmap_xstarmap: a starmap keeps its frozen id and link; in a group and a chain."""
    sig = c.add.starmap([(1, 1), (2, 2)])
    sig.link(c.redis_echo.si("starmap done"))
    frozen = sig.freeze()
    async with app.worker(concurrency=20):
        res = await sig.apply_async()
        assert res.id == frozen.id
        assert await res.wait(TIMEOUT) == [2, 4]
        in_group = group(c.add.starmap([(1, 1), (2, 2)]), c.add.s(3, 3))
        assert await (await in_group.delay()).wait(TIMEOUT) == [[2, 4], 6]
        in_chain = chain(c.add.si(1, 1), c.add.starmap([(1, 1), (2, 2)]))
        assert await (await in_chain.delay()).wait(TIMEOUT) == [2, 4]
    await settle(app)
    assert rec.echoes["redis-echo"] == ["starmap done"]


@pytest.mark.parametrize("outer", ["chain", "group", "chord"])
@pytest.mark.parametrize("inner", ["chain", "group", "chord"])
async def test_signature_serialization(app: App, c: Any, outer: str, inner: str) -> None:
    """test_signature_serialization: nested canvases returned by a task (through the
    result backend) rebuild as the same canvas types, and run."""

    def make(kind: str, parts: list[Any]) -> Any:
        if kind == "chain":
            return chain(*parts)
        if kind == "group":
            return group(*parts)
        return chord(parts, c.tsum.s())

    @app.task(name="c.return_nested_signature")
    async def return_nested_signature() -> dict[str, Any]:
        one = make(inner, [c.add.si(1, 1), c.add.si(2, 2)])
        return make(outer, [one, c.add.si(3, 3)] if outer != "chain" else [one]).to_dict()

    async with app.worker(concurrency=20):
        data = await (await return_nested_signature.delay()).wait(TIMEOUT)
        rebuilt = signature(data, app=app)
        kinds = {"chain": Chain, "group": Group, "chord": Chord}
        assert isinstance(rebuilt, kinds[outer])
        first = {"chain": lambda x: x.steps[0], "group": lambda x: x.members[0]}.get(
            outer, lambda x: x.header.members[0]
        )(rebuilt)
        # a chain in a chain joins it (its steps are the outer chain's)
        assert isinstance(first, Signature if outer == inner == "chain" else kinds[inner])
        await (await rebuilt.delay()).wait(TIMEOUT, propagate=False)
