"""The chord section of Celery's canvas integration tests, spelled the async way.

Each test names the Celery test (``t/integration/test_canvas.py::test_chord``) whose shape,
values and errors it checks, on every broker (``self.replace()`` in chords:
``test_celery_replace.py``; ``self.add_to_chord()``: ``test_add_to_chord.py``). Not
ported: eager ``apply()`` (refused), Redis-internal checks (subscribed channels, the join
key), and ``task_allow_error_cb_on_chord_header=True`` (aqueue has Celery's default only:
a chord's errbacks are its body's).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from aqueue import App, AsyncResult, GroupResult, TaskFailed, chain, chord, group, signature

from .celery_tasks import Recorder
from .conftest import settle
from .test_celery_chain import expected, ids_in_as_tuple

TIMEOUT = 30


async def test_simple_chords(app: App, c: Any) -> None:
    """test_simple_chord_with_a_delay_in_group_save (its shape), test_chord_order,
    test_single_task_header, test_empty_header_chord, test_generator."""
    async with app.worker(concurrency=20):
        res = await chord(header=[c.add.si(1, 1), c.add.si(1, 1)], body=c.tsum.s())()
        assert await res.wait(TIMEOUT) == 4
        res = await chord((c.identity.si(i) for i in range(10)), c.identity.s())()
        assert await res.wait(TIMEOUT) == list(range(10))
        res = await chord([c.add.s(2, 5)], body=c.add_to_all.s(9))()
        assert await res.wait(TIMEOUT) == [16]
        res = await (group([c.add.s(2, 5)]) | c.add_to_all.s(9))()
        assert await res.wait(TIMEOUT) == [16]
        assert await (await chord([], body=c.add_to_all.s(9))()).wait(TIMEOUT) == []
        res = await (group([], app=app) | c.add_to_all.s(9))()
        assert await res.wait(TIMEOUT) == []
        res = await chord((c.add.si(i, 0) for i in range(5)), c.tsum.s())()
        assert await res.wait(TIMEOUT) == 10


async def test_reapplying_a_frozen_chord(app: App, c: Any, rec: Recorder) -> None:
    """test_reapplying_frozen_chord_dispatches_body_again, deliberately different.

    Celery runs a frozen chord's body once per apply; aqueue runs a task id once (a
    redelivered or re-sent id is recognised as done), so a second apply of the same frozen
    chord returns the first run's results without running anything again.
    """
    wf = chord(group(c.add.s(1, 2), c.add.s(3, 4)), c.redis_count.si("k"))
    wf.freeze()
    async with app.worker(concurrency=20):
        first = await wf.apply_async()
        await first.wait(TIMEOUT)
        second = await wf.apply_async()
        await second.wait(TIMEOUT)
    await settle(app)
    assert second.id == first.id and rec.counts["k"] == 1


async def test_group_or_task_countdown_delays_header(app: App, c: Any) -> None:
    """test_group_or_task_countdown_delays_header: the header waits, then the body."""
    countdown = 1
    started = time.monotonic()
    async with app.worker(concurrency=20):
        res = await (
            group(c.return_request_eta.s(), c.return_request_eta.s()) | c.identity.s()
        ).apply_async(countdown=countdown)
        header_etas = await res.wait(TIMEOUT)
    assert time.monotonic() - started >= countdown * 0.9
    assert all(eta is not None for eta in header_etas)


async def test_replaced_nested_chord(app: App, c: Any) -> None:
    """test_replaced_nested_chord: replaced header members, bodies replaced by groups."""
    wf = chord(
        [
            chord([c.add.s(1, 2), c.add_replaced.s(3, 4)], c.add_to_all_replaced.s(5)) | c.tsum.s(),
            chord([c.add_replaced.s(6, 7), c.add.s(0, 0)], c.add_to_all_replaced.s(8)) | c.tsum.s(),
        ],
        c.add_to_all_replaced.s(9),
    )
    async with app.worker(concurrency=20):
        assert await (await wf()).wait(TIMEOUT) == [29, 38]


async def test_group_chain(app: App, c: Any) -> None:
    """test_group_chain, test_group_kwargs, test_group_args_and_kwargs (the issue's hang)."""
    wf = c.add.s(2, 2) | group(c.add.s(i) for i in range(4)) | c.add_to_all.s(8)
    upgraded = group(c.add.s(i) for i in range(4)) | c.add_to_all.s(8)
    async with app.worker(concurrency=20):
        assert await (await wf()).wait(TIMEOUT) == [12, 13, 14, 15]
        res = await wf.apply_async(kwargs={"z": 1})
        assert await res.wait(TIMEOUT) == [13, 14, 15, 16]
        res = await upgraded.apply_async(args=(4,), kwargs={"z": 1})
        assert await res.wait(TIMEOUT) == [13, 14, 15, 16]  # in order on every backend


async def test_nested_group_chain(app: App, c: Any) -> None:
    """test_nested_group_chain."""
    wf = chain(
        c.add.si(1, 0),
        group(
            c.add.si(1, 100),
            chain(c.add.si(1, 200), group(c.add.si(1, 1000), c.add.si(1, 2000))),
        ),
        c.add.si(1, 10),
    )
    async with app.worker(concurrency=20):
        assert await (await wf()).wait(TIMEOUT) == 11


async def test_nested_chord(app: App, c: Any) -> None:
    """test_nested_chord: chords of chords, and groups upgraded to chords in groups."""
    c1 = chord(
        [
            chord([c.add.s(1, 2), c.add.s(3, 4)], c.add.s([5])),
            chord([c.add.s(6, 7)], c.add.s([10])),
        ],
        c.add_to_all.s(["A"]),
    )
    c2 = group(
        [
            group([c.add.s(1, 2), c.add.s(3, 4)]) | c.add.s([5]),
            group([c.add.s(6, 7)]) | c.add.s([10]),
        ]
    ) | c.add_to_all.s(["A"])
    c3 = group(
        [group([group([group([c.add.s(1, 2)]) | c.add.s([3])]) | c.add.s([4])]) | c.add.s([5])]
    ) | c.add.s([6])
    async with app.worker(concurrency=20):
        assert await (await c1()).wait(TIMEOUT) == [[3, 7, 5, "A"], [13, 10, "A"]]
        assert await (await c2()).wait(TIMEOUT) == [[3, 7, 5, "A"], [13, 10, "A"]]
        assert await (await c3()).wait(TIMEOUT) == [[[[3, 3], 4], 5], 6]


def assert_parentids_chord(res: Any, values: dict[str, Any], expected_root_id: str) -> None:
    """test_chord.assert_parentids_chord, on values read beforehand."""
    assert isinstance(res, AsyncResult)
    assert isinstance(res.parent, AsyncResult)
    assert isinstance(res.parent.parent, GroupResult)
    assert isinstance(res.parent.parent.parent, AsyncResult)
    assert isinstance(res.parent.parent.parent.parent, AsyncResult)
    root_id, parent_id, value = values[res.id]  # the last task
    assert (value, root_id, parent_id) == (51, expected_root_id, res.parent.id)
    prev, (root_id, parent_id, value) = values[res.parent.id]  # the chord's body
    assert value == 50 and root_id == expected_root_id
    assert parent_id in res.parent.parent.results  # started by one of the header tasks
    for root_id, parent_id, _ in prev:
        assert root_id == expected_root_id
        assert parent_id == res.parent.parent.parent.id
    root_id, parent_id, value = values[res.parent.parent.parent.id]  # ids(i=2)
    assert value == 2 and root_id == expected_root_id
    assert parent_id == res.parent.parent.parent.parent.id
    root_id, parent_id, value = values[res.parent.parent.parent.parent.id]  # ids(i=1)
    assert (value, root_id, parent_id) == (1, expected_root_id, None)


async def _values(res: Any) -> dict[str, Any]:
    out, node = {}, res
    while node is not None:
        if isinstance(node, AsyncResult):
            out[node.id] = await node.wait(TIMEOUT)
        node = node.parent
    return out


async def test_parent_ids(app: App, c: Any) -> None:
    """test_chord.test_parent_ids, test_parent_ids__plain_task_body, test_parent_ids__OR."""
    async with app.worker(concurrency=50):
        root = c.ids.si(i=1)
        expected_root_id = root.freeze().id
        wf = chain(
            root,
            c.ids.si(i=2),
            chord(
                group(c.ids.si(i=i) for i in range(3, 50)),
                chain(c.collect_ids.s(i=50) | c.ids.si(i=51)),
            ),
        )
        res = await wf()
        assert_parentids_chord(res, await _values(res), expected_root_id)

        root = c.ids.si(i=1)
        expected_root_id = root.freeze().id
        wf = chain(
            root,
            c.ids.si(i=2),
            chord(group(c.ids.si(i=i) for i in range(3, 50)), c.collect_ids.s(i=50)),
        )
        res = await wf()
        _prev, (root_id, parent_id, value) = await res.wait(TIMEOUT)
        assert value == 50 and root_id == expected_root_id
        assert parent_id in res.parent.results

        root = c.ids.si(i=1)
        expected_root_id = root.freeze().id
        wf = (
            root
            | c.ids.si(i=2)
            | group(c.ids.si(i=i) for i in range(3, 50))
            | c.collect_ids.s(i=50)
            | c.ids.si(i=51)
        )
        res = await wf()
        assert_parentids_chord(res, await _values(res), expected_root_id)


async def test_chord_on_error(app: App, c: Any, rec: Recorder) -> None:
    """test_chord_on_error: a header failure fails the body; its old-style errback gets the
    body's id (Celery then digs the members' states out of Redis; here: the header)."""
    body = c.redis_echo.s("This should not be called").on_error(c.errback_old_style.s())
    async with app.worker(concurrency=20):
        res = await chord([c.add.s(1, 2), c.add.s(3, 4), c.fail.s()], body)()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
        expected(info)
        header = res.parent
        values = await header.wait(TIMEOUT, propagate=False)
        assert values[:2] == [3, 7] and isinstance(values[2], TaskFailed)
        assert values[2].task_id == header.results[2].id
        assert await header.completed_count() == 2
    await settle(app)
    assert rec.counts == {res.id: 1} and not rec.echoes


async def test_parallel_chords_and_chords_in_chords(app: App, c: Any) -> None:
    """test_parallel_chords, test_chord_in_chords_with_chains, test_chain_chord_chain_chord."""
    c1 = chord(group(c.add.s(1, 2), c.add.s(3, 4)), c.tsum.s())
    c2 = chord(group(c.add.s(1, 2), c.add.s(3, 4)), c.tsum.s())
    in_chains = chord(
        group(
            [
                chain(
                    c.add.si(1, 2), chord(group([c.add.si(1, 2), c.add.si(1, 2)]), c.add.si(1, 2))
                ),
                chain(
                    c.add.si(1, 2), chord(group([c.add.si(1, 2), c.add.si(1, 2)]), c.add.si(1, 2))
                ),
            ]
        ),
        c.add.si(2, 2),
    )
    ccc = chain(
        c.identity.si(1),
        chord(
            [
                c.identity.si(2),
                chain(
                    c.identity.si(3), chord([c.identity.si(4), c.identity.si(5)], c.identity.si(6))
                ),
            ],
            c.identity.si(7),
        ),
    )
    async with app.worker(concurrency=20):
        assert await (await group(c1, c2).delay()).wait(TIMEOUT) == [10, 10]
        assert await (await in_chains.delay()).wait(TIMEOUT) == 4
        assert await (await ccc.delay()).wait(TIMEOUT) == 7


async def test_chord_in_chain_with_args(app: App, c: Any) -> None:
    """test_chord_in_chain_with_args, test_chain_in_chain_with_args (apply_async)."""
    c1 = chain(chord([c.identity.s(), c.identity.s()], c.identity.s()), c.identity.s())
    c2 = chain(chain(c.identity.s(), c.identity.s()))
    async with app.worker(concurrency=20):
        assert await (await c1.apply_async(args=(1,))).wait(TIMEOUT) == [1, 1]
        assert await (await c2.apply_async(args=(1,))).wait(TIMEOUT) == 1


async def test_large_header(app: App, c: Any) -> None:
    """test_large_header, test_chain_to_a_chord_with_large_header."""
    async with app.worker(concurrency=100):
        res = await (group(c.identity.si(i) for i in range(1000)) | c.tsum.s()).delay()
        assert await res.wait(TIMEOUT) == 499500
        wf = c.identity.si(1) | group(c.identity.s() for _ in range(1000)) | c.tsum.s()
        assert await (await wf.delay()).wait(TIMEOUT) == 1000


async def test_nested_chord_groups(app: App, c: Any) -> None:
    """test_nested_chord_group, test_nested_chord_group_chain_group_tail,
    test_group_body_does_not_take_the_header_id."""
    unrolled = chord((group(c.identity.s(42), c.identity.s(42)),), c.identity.s())
    tail = chord(
        group(chain(c.identity.s(42), group(c.identity.s(), c.identity.s()))), c.identity.s()
    )
    group_body = chord(
        group(c.identity.si(1), c.identity.si(2)), group(c.identity.si(3), c.identity.si(4))
    )
    async with app.worker(concurrency=20):
        assert await (await unrolled.delay()).wait(TIMEOUT) == [42, 42]
        assert await (await tail.delay()).wait(TIMEOUT) == [[42, 42]]
        res = await group_body.apply_async()
        assert await res.wait(TIMEOUT) == [3, 4]
    ids = ids_in_as_tuple(res.as_tuple())
    assert len(ids) == len(set(ids)) == 6, ids  # the header and body GroupResults, four tasks


@pytest.mark.parametrize(
    "shape",
    [
        "from-chord",  # test_error_propagates_from_chord (xfail on Redis in Celery)
        "from-chord2",  # test_error_propagates_from_chord2
        "header-task",  # test_error_propagates_to_chord_from_simple
        "body-task",
        "header-chain",  # test_error_propagates_to_chord_from_chain
        "body-chain",
        "header-chain-tail",  # test_error_propagates_to_chord_from_chain_tail
        "body-chain-tail",
        "header-group",  # test_error_propagates_to_chord_from_group
        "body-group",
        "nested-chain",  # test_chord_error_in_nested_chain_does_not_crash
        "nested-chain-member",  # test_chord_unlock_with_failed_task_in_nested_chain_member
        "header-errback",  # test_upgraded_chord_link_error_with_header_errback_enabled
    ],
)
async def test_error_propagates(app: App, c: Any, shape: str) -> None:
    """The failing task's own error reaches the caller, wherever it sits; never a hang."""
    ident, fail = c.identity, c.fail
    wf: Any = {
        "from-chord": lambda: c.add.s(1, 1) | fail.s() | group(c.add.s(1), c.add.s(1)),
        "from-chord2": lambda: c.add.s(1, 1) | c.add.s(1) | group(c.add.s(1), fail.s()),
        "header-task": lambda: chord((fail.s(),), ident.s()),
        "body-task": lambda: chord((ident.si(42),), fail.s()),
        "header-chain": lambda: chord((chain(ident.si(42), fail.s(), ident.si(42)),), ident.s()),
        "body-chain": lambda: chord((ident.si(42),), chain(ident.si(42), fail.s(), ident.si(42))),
        "header-chain-tail": lambda: chord((chain(ident.si(42), fail.s()),), ident.s()),
        "body-chain-tail": lambda: chord((ident.si(42),), chain(ident.si(42), fail.s())),
        "header-group": lambda: chord((group(ident.si(42), fail.s()),), ident.s()),
        "body-group": lambda: chord((ident.si(42),), group(ident.si(42), fail.s())),
        "nested-chain": lambda: chain(
            chain(group(c.add.si(1, 1), fail.si()), ident.s()), ident.s()
        ),
        "nested-chain-member": lambda: chain(
            group(
                ident.si(1),
                chain(fail.si(), group(ident.si(2), ident.si(3)), ident.si(4)),
            ),
            ident.s(),
        ),
        "header-errback": lambda: chain(
            ident.si(42), group(fail.si(), fail.si()), c.redis_echo.si("body")
        ).on_error(c.redis_echo.si("errback")),
    }[shape]()
    async with app.worker(concurrency=20):
        res = await wf.delay()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT / 3)
    expected(info)


@pytest.mark.parametrize(
    "body_type", ["single-task", "chain", "group", "chord"], ids=lambda b: f"body-{b}"
)
async def test_chord_error_propagation_with_different_body_types(
    app: App, c: Any, body_type: str
) -> None:
    """test_chord_error_propagation_with_different_body_types."""
    body = {
        "single-task": lambda: c.add.si(9, 7),
        "chain": lambda: chain(c.add.si(9, 7), c.add.si(5, 7)),
        "group": lambda: group([c.add.si(9, 7), c.add.si(5, 7)]),
        "chord": lambda: chord(group([c.add.si(1, 1), c.add.si(2, 2)]), c.add.si(10, 10)),
    }[body_type]()
    async with app.worker(concurrency=20):
        res = await chain(group([c.add.si(15, 7), c.fail.si()]), body).apply_async()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
    expected(info)


@pytest.mark.parametrize("where", ["header", "body"])
@pytest.mark.parametrize("kind", ["task", "chain", "chain-tail", "group"])
@pytest.mark.parametrize("style", ["immutable", "old", "new"])
async def test_errbacks_called_by_chord(
    app: App, c: Any, rec: Recorder, where: str, kind: str, style: str
) -> None:
    """test_immutable_errback_called_by_chord_from_simple, _from_chain, _from_chain_tail,
    _from_group and their mutable variants (old style ``errback(task_id)``, new style
    here ``errback(task_id, error)``): called once, with the body's id on a header failure
    and the failed task's id on a body failure."""
    fail_sig = c.fail.s()
    fail_id = fail_sig.freeze().id
    child = {
        "task": lambda: fail_sig,
        "chain": lambda: chain(c.identity.si(42), fail_sig, c.identity.si(42)),
        "chain-tail": lambda: chain(c.identity.si(42), fail_sig),
        "group": lambda: group(c.identity.si(42), fail_sig),
    }[kind]()
    errback = {
        "immutable": c.redis_count.si(redis_key="immutable"),
        "old": c.errback_old_style.s(),
        "new": c.errback_new_style.s(),
    }[style]
    if where == "header":
        wf = chord((child,), c.identity.s())
        owner = wf.body.freeze().id  # a chord's errbacks are its body's
    else:
        wf = chord((c.identity.si(42),), child)
        owner = fail_id
    wf.link_error(errback)
    async with app.worker(concurrency=20):
        with pytest.raises(TaskFailed) as info:
            await (await wf.delay()).wait(TIMEOUT)
        expected(info)
    await settle(app)
    assert rec.counts == {("immutable" if style == "immutable" else owner): 1}


@pytest.mark.parametrize("style", ["immutable", "old", "new"])
async def test_errback_called_by_chord_from_group_fail_multiple(
    app: App, c: Any, rec: Recorder, style: str
) -> None:
    """test_immutable_errback_called_by_chord_from_group_fail_multiple and the mutable
    _on_header_failure / _on_body_failure variants: once for a header group (the body is
    one task), once per failed task of a body group (each with its own id)."""

    def child() -> Any:  # fresh ids each time: aqueue runs a task id once
        fails = [c.fail.s() for _ in range(42)]
        return [s.freeze().id for s in fails], group(*(c.identity.si(42) for _ in range(8)), *fails)

    errback = {
        "immutable": c.redis_count.si(redis_key="k"),
        "old": c.errback_old_style.s(),
        "new": c.errback_new_style.s(),
    }[style]
    _, header = child()
    on_header = chord((header,), c.identity.s())
    on_header.link_error(errback)
    body_id = on_header.body.freeze().id
    async with app.worker(concurrency=50):
        with pytest.raises(TaskFailed):
            await (await on_header.delay()).wait(TIMEOUT)
    await settle(app)
    assert rec.counts == ({"k": 1} if style == "immutable" else {body_id: 1})
    rec.counts.clear()
    fail_ids, body = child()
    on_body = chord((c.identity.si(42),), body)
    on_body.link_error(errback)
    async with app.worker(concurrency=50):
        with pytest.raises(TaskFailed):
            await (await on_body.delay()).wait(TIMEOUT)
    await settle(app)
    assert rec.counts == ({"k": 42} if style == "immutable" else dict.fromkeys(fail_ids, 1))


async def test_nested_chord_header_link_error(app: App, c: Any, rec: Recorder) -> None:
    """test_nested_chord_header_link_error: the outer body never runs; one errback."""
    inner = chord([c.identity.si("t1"), c.fail.si()], c.identity.si("t2 (body)"))
    outer = chord(group([c.identity.si("t3"), inner]), c.redis_echo.si("body", redis_key="body"))
    outer.link_error(c.redis_echo.si("errback", redis_key="errback"))
    async with app.worker(concurrency=20):
        with pytest.raises(TaskFailed) as info:
            await (await outer.delay()).wait(TIMEOUT)
        expected(info)
    await settle(app)
    assert rec.echoes == {"errback": ["errback"]}


async def test_chord_header_with_empty_chains(app: App, c: Any) -> None:
    """test_chord_header_with_empty_chains."""
    async with app.worker(concurrency=20):
        assert await (await chord([chain()], body=c.tsum.s())()).wait(TIMEOUT) == 0
        wf = chord([chain(), c.add.s(1, 1), chain(), c.add.s(2, 2)], body=c.tsum.s())
        assert await (await wf()).wait(TIMEOUT) == 6


@pytest.mark.parametrize("serialized", [False, True])
@pytest.mark.parametrize("frozen", [False, True])
async def test_chain_of_implicit_chords_as_body(
    app: App, c: Any, serialized: bool, frozen: bool
) -> None:
    """test_chain_of_implicit_chords_as_body (Celery's ``freeze(id)`` is ``task_id=``)."""
    steps: list[Any] = [c.tsum.s()]
    for _ in range(5):
        steps += [group(c.add.s(1), c.add.s(2)), c.tsum.s()]
    callback = c.identity.s()
    callback_id = callback.freeze().id
    steps[-1].link(callback)
    workflow: Any = chord([c.add.si(1, 1), c.add.si(2, 2)], chain(*steps))
    expected_id = f"wf-{id(workflow)}"
    if frozen:
        workflow.freeze()
    if serialized:
        workflow = signature(json.loads(json.dumps(workflow.to_dict())), app=app)
    async with app.worker(concurrency=20):
        res = await workflow.apply_async(task_id=expected_id)
        assert res.id == expected_id
        # the outer header sums to 6; each inner group maps x to 2 * x + 3
        assert await res.wait(TIMEOUT) == 285
        assert await app.AsyncResult(callback_id).wait(TIMEOUT) == 285


@pytest.mark.parametrize("failure", ["header", "body"])
async def test_chain_of_implicit_chords_body_failure(
    app: App, c: Any, rec: Recorder, failure: str
) -> None:
    """test_chain_of_implicit_chords_body_failure: the body's errback runs once."""
    first_group = (
        group(c.fail.si(), c.add.si(1, 2)) if failure == "header" else group(c.add.si(1, 2))
    )
    callback = c.fail.si() if failure == "body" else c.tsum.s()
    inner_body = chain(callback, group(c.add.s(1), c.add.s(2)), c.tsum.s())
    inner_body.link_error(c.redis_echo.si("failed", redis_key="k"))
    wf = chord([c.add.si(1, 1)], chain(c.tsum.s(), chord(first_group, inner_body)))
    async with app.worker(concurrency=20):
        with pytest.raises(TaskFailed) as info:
            await (await wf.delay()).wait(TIMEOUT)
        expected(info)
    await settle(app)
    assert rec.echoes["k"] == ["failed"]


async def test_link_options_on_chords(app: App, c: Any, rec: Recorder) -> None:
    """test_link_option_runs_after_the_body, test_link_option_on_chain_ending_in_chord,
    test_link_option_on_group_body_runs_once."""
    body = c.tsum.s()
    body.link(c.redis_echo.si("own", redis_key="a"))
    first = c.tsum.s()
    first.link(c.redis_echo.si("own", redis_key="c"))
    async with app.worker(concurrency=20):
        res = await chord([c.add.si(1, 1), c.add.si(2, 2)], body).apply_async(
            link=c.redis_echo.s(redis_key="a")
        )
        assert await res.wait(TIMEOUT) == 6
        wf = chain(c.add.si(1, 1), chord([c.add.s(10), c.add.s(20)], c.tsum.s()))
        res = await wf.apply_async(link=c.redis_echo.s(redis_key="b"))
        assert await res.wait(TIMEOUT) == 34
        res = await chord([c.add.si(1, 1), c.add.si(2, 2)], group(first, c.tsum.s())).apply_async(
            link=c.redis_echo.si("chord", redis_key="c")
        )
        assert await res.wait(TIMEOUT) == [6, 6]
    await settle(app)
    assert sorted(rec.echoes["a"], key=str) == [6, "own"]
    assert rec.echoes["b"] == [34]
    assert sorted(rec.echoes["c"]) == ["chord", "own"]


async def test_link_error_option_runs_on_body_failure(app: App, c: Any, rec: Recorder) -> None:
    """test_link_error_option_runs_on_body_failure: the body's errback and the chord's."""
    body = c.fail.s()
    body.link_error(c.errback_old_style.s())
    async with app.worker(concurrency=20):
        res = await chord([c.identity.si(42)], body).apply_async(link_error=c.errback_new_style.s())
        with pytest.raises(TaskFailed):
            await res.wait(TIMEOUT)
    await settle(app)
    assert rec.counts == {res.id: 2}


@pytest.mark.parametrize("body_type", ["group", "chord"])
async def test_link_error_option_runs_on_header_failure(
    app: App, c: Any, rec: Recorder, body_type: str
) -> None:
    """test_link_error_option_runs_on_header_failure: once per task of a group body."""
    body: Any = (
        group(c.tsum.s(), c.tsum.s())
        if body_type == "group"
        else chord([c.tsum.s(), c.tsum.s()], c.tsum.s())
    )
    async with app.worker(concurrency=20):
        res = await chord([c.add.si(1, 1), c.fail.si()], body).apply_async(
            link_error=c.redis_echo.si("failed", redis_key="k")
        )
        with pytest.raises(TaskFailed):
            await res.wait(TIMEOUT)
    await settle(app)
    assert rec.echoes["k"] == ["failed"] * (2 if body_type == "group" else 1)


async def test_errbacks_of_group_bodies(app: App, c: Any, rec: Recorder) -> None:
    """test_link_error_option_keeps_errbacks_of_group_body_tasks,
    test_errbacks_of_group_body_tasks_run_on_header_failure[option, method],
    test_errbacks_of_chord_in_group_body_run_on_header_failure[option, method],
    test_errback_set_as_one_signature_runs_on_header_failure,
    test_link_error_option_with_link_error_of_group_body,
    test_link_error_option_runs_once_for_chord_in_group_body_with_link_error."""

    def e(msg: str, key: str) -> Any:
        return c.redis_echo.si(msg, redis_key=key)

    async def run(wf: Any, key: str, **options: Any) -> list[Any]:
        async with app.worker(concurrency=20):
            with pytest.raises(TaskFailed):
                await (await wf.apply_async(**options)).wait(TIMEOUT)
        await settle(app)
        return sorted(rec.echoes[key])

    failing = c.fail.s()
    failing.link_error(e("own", "1"))
    wf = chord([c.add.si(1, 1)], group(failing, c.tsum.s()))
    assert await run(wf, "1", link_error=e("chord", "1")) == ["chord", "own"]

    for how in ("option", "method"):
        first = c.tsum.s()
        first.link_error(e("own", f"2{how}"))
        wf = chord([c.add.si(1, 1), c.fail.si()], group(first, c.tsum.s()))
        options = {"link_error": e("chord", f"2{how}")} if how == "option" else {}
        if how == "method":
            wf.link_error(e("chord", f"2{how}"))
        assert await run(wf, f"2{how}", **options) == ["chord", "chord", "own"]

        wf = chord(
            [c.add.si(1, 1), c.fail.si()],
            group(chord([c.add.si(2, 2)], c.tsum.s()), c.tsum.s()),
        )
        options = {"link_error": e("chord", f"3{how}")} if how == "option" else {}
        if how == "method":
            wf.link_error(e("chord", f"3{how}"))
        assert await run(wf, f"3{how}", **options) == ["chord", "chord"]

    first = c.tsum.s().set(link_error=e("own", "4"))
    wf = chord([c.add.si(1, 1), c.fail.si()], group(first, c.tsum.s()))
    assert await run(wf, "4") == ["own"]

    body = group(c.fail.s(), c.tsum.s()).set(link_error=e("group", "5"))
    wf = chord([c.add.si(1, 1)], body)
    assert await run(wf, "5", link_error=e("chord", "5")) == ["chord", "group"]

    body = group(chord([c.add.si(1, 1)], group(c.fail.s(), c.tsum.s()))).set(
        link_error=e("group", "6")
    )
    wf = chord([c.add.si(1, 1)], body)
    assert await run(wf, "6", link_error=e("chord", "6")) == ["chord", "group"]


async def test_upgraded_chord_errbacks_reach_each_header_task(
    app: App, c: Any, rec: Recorder
) -> None:
    """test_flag_allow_error_cb_on_chord_header_on_upgraded_chord, without the setting: a
    chain's errback reaches each failed header task and the body (docs/workflows.md)."""
    headers = (
        (c.fail.si(), c.fail.si(), c.fail.si()),
        (c.fail.si(), c.identity.si(42)),
        (c.fail.si(), c.identity.si(42), c.fail.si(), c.identity.si(42), c.fail.si()),
    )
    async with app.worker(concurrency=20):
        for n, header in enumerate(headers):
            wf = chain(group(list(header)), c.redis_echo.si("body", redis_key="body"))
            wf.link_error(c.redis_echo.si("errback", redis_key=f"errback-{n}"))
            with pytest.raises(TaskFailed) as info:
                await (await wf.delay()).wait(TIMEOUT)
            expected(info)
    await settle(app)
    failed = [sum(s.name == "c.fail" for s in header) for header in headers]
    assert [len(rec.echoes[f"errback-{n}"]) for n in range(len(headers))] == [
        count + 1 for count in failed
    ]
    assert "body" not in rec.echoes
