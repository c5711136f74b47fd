"""The chain section of Celery's canvas integration tests, spelled the async way.

Each test names the Celery test (``t/integration/test_canvas.py::test_chain``) whose shape,
values and errors it checks, on every broker (``self.replace()``'s own tests are in
``test_celery_replace.py``). Not ported: eager ``apply()`` (refused: ``test_canvas.py``),
``freeze(id)`` and the RabbitMQ duplication hook (row 26 covers duplicates).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from aqueue import (
    App,
    GroupResult,
    TaskFailed,
    chain,
    chord,
    group,
    result_from_tuple,
    signature,
    states,
)

from .celery_tasks import Recorder
from .conftest import settle

TIMEOUT = 30


def ids_in_as_tuple(tree: Any) -> list[str]:
    """The id of every node in an ``as_tuple()`` tree (Celery's t/canvas_helpers.py)."""
    ids: list[str] = []

    def walk(node: Any) -> None:
        if node is None:
            return
        (node_id, parent), members = node
        ids.append(node_id)
        for member in members or ():
            walk(member)
        walk(parent)

    walk(tree)
    return ids


def expected(info: pytest.ExceptionInfo[TaskFailed]) -> None:
    """The failing task's own error reached the caller (Celery: ExpectedException)."""
    assert info.value.exc_type == "ExpectedException", info.value
    assert "Task expected to fail" in info.value.exc_message


async def test_simple_and_single_chains(app: App, c: Any) -> None:
    """test_simple_chain, test_single_chain, test_chain_of_chain_with_a_single_task."""
    async with app.worker(concurrency=20):
        assert await (await (c.add.s(4, 4) | c.add.s(8) | c.add.s(16))()).wait(TIMEOUT) == 32
        assert await (await chain(c.add.s(3, 4))()).wait(TIMEOUT) == 7
        res = await chain([chain(c.identity.s(42))]).apply_async()
        assert await res.wait(TIMEOUT) == 42


async def test_complex_chain(app: App, c: Any) -> None:
    """test_complex_chain: a step replaced in the middle of a chain ending in a group."""
    g = group(c.add.s(i) for i in range(4))
    wf = c.add.s(2, 2) | (c.add.s(4) | c.add_replaced.s(8) | c.add.s(16) | c.add.s(32)) | g
    async with app.worker(concurrency=20):
        res = await wf()
        assert await res.wait(TIMEOUT) == [64, 65, 66, 67]


async def test_group_results_in_chain(app: App, c: Any) -> None:
    """test_group_results_in_chain: a group of one chain ending in a group.

    Deliberate difference: Celery special-cases a group of one member whose result is a
    group and returns ``[4, 5]``; aqueue nests as everywhere else (``[[4, 5]]``), which is
    also what the types say.
    """
    async with app.worker(concurrency=20):
        res = await group(c.add.s(1, 2) | group(c.add.s(1), c.add.s(2)))()
        assert await res.wait(TIMEOUT) == [[4, 5]]


async def test_chain_on_error(app: App, c: Any) -> None:
    """test_chain_on_error: the failing task's error, from the chain and from its parent."""
    async with app.worker(concurrency=20):
        res = await chain(c.add.s(1, 2), c.fail.s(), c.add.s(3, 4))()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
        expected(info)
        with pytest.raises(TaskFailed) as info:
            await res.parent.wait(TIMEOUT)
        expected(info)
        assert info.value.task_id == res.parent.id


async def test_chain_inside_group_receives_arguments(app: App, c: Any) -> None:
    """test_chain_inside_group_receives_arguments."""
    async with app.worker(concurrency=20):
        res = await (c.add.s(5, 6) | group((c.add.s(1) | c.add.s(2), c.add.s(3))))()
        assert await res.wait(TIMEOUT) == [14, 14]


async def test_group_chord_group_chain(app: App, c: Any, rec: Recorder) -> None:
    """test_group_chord_group_chain: every step after the one before it."""
    before = group(c.redis_echo.si(f"before {i}") for i in range(3))
    connect = c.redis_echo.si("connect")
    after = group(c.redis_echo.si(f"after {i}") for i in range(2))
    async with app.worker(concurrency=20):
        res = await (before | connect | after).delay()
        await res.wait(TIMEOUT)
    echoed = rec.echoes["redis-echo"]
    assert set(echoed[:3]) == {"before 0", "before 1", "before 2"}
    assert echoed[3] == "connect"
    assert set(echoed[4:]) == {"after 0", "after 1"}


async def test_group_result_not_has_cache(app: App, c: Any) -> None:
    """test_group_result_not_has_cache: a chain ending in a group, inside a group."""
    ct = chain(c.identity.si(5), group([c.identity.si(3), c.identity.si(4)]))
    async with app.worker(concurrency=20):
        res = await group(c.identity.si(1), c.identity.si(2), ct).delay()
        assert await res.wait(TIMEOUT) == [1, 2, [3, 4]]


def assert_ids_chain(values: list[Any], res: Any) -> None:
    """test_chain.assert_ids: each step's root is the first, its parent the one before."""
    root = res
    while root.parent is not None:
        root = root.parent
    node, i = res, len(values) - 1
    while node is not None:
        root_id, parent_id, value = values[i]
        assert value == i
        assert parent_id == (node.parent.id if node.parent is not None else None)
        assert root_id == root.id
        node, i = node.parent, i - 1
    assert i == -1


async def test_parent_ids(app: App, c: Any) -> None:
    """test_chain.test_parent_ids: root_id and parent_id along a chain of ten."""
    async with app.worker(concurrency=20):
        res = await chain(c.ids.si(i=i) for i in range(10))()
        await res.wait(TIMEOUT)
        values, node = [], res
        while node is not None:
            values.insert(0, await node.wait(TIMEOUT))
            node = node.parent
    assert_ids_chain(values, res)


async def test_chord_soft_timeout_recuperation(app: App, c: Any) -> None:
    """test_chord_soft_timeout_recuperation: a member that handles its soft time limit."""
    import asyncio

    from aqueue import SoftTimeLimitExceeded

    @app.task(name="c.guarded_sum")
    async def guarded_sum(numbers: list[int], pause_time: float = 1) -> int:
        try:
            await asyncio.sleep(pause_time)
        except SoftTimeLimitExceeded:
            return 0
        return sum(numbers)

    header = [c.add.s(1, 2), guarded_sum.s([100], pause_time=5).set(soft_time_limit=0.2)]
    async with app.worker(concurrency=20):
        res = await chord(header)(c.tsum.s())
        assert await res.wait(TIMEOUT) == 3


async def test_chain_error_handler_with_eta(app: App, c: Any) -> None:
    """test_chain_error_handler_with_eta: options and on_error on a chain led by a group."""
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    wf = chain(group(c.add.s(1, 2), c.add.s(3, 4)), c.tsum.s()).on_error(c.redis_echo.s())
    async with app.worker(concurrency=20):
        res = await wf.apply_async(eta=eta)
        assert await res.wait(TIMEOUT) == 10
    assert dt.datetime.now(dt.UTC) >= eta


async def test_groupresult_serialization(app: App, c: Any) -> None:
    """test_groupresult_serialization: a task applies a chain and returns its tree."""

    @app.task(name="c.build_chain_inside_task")
    async def build_chain_inside_task() -> Any:
        wf = c.add.s(1, 1) | c.add.s(2) | group(c.add.s(3), c.add.s(4)) | c.add.s(5)
        return (await wf.delay()).as_tuple()

    async with app.worker(concurrency=20):
        tree = await (await build_chain_inside_task.delay()).wait(TIMEOUT)
        assert len(tree) == 2 and isinstance(tree[0][1], list)
        rebuilt = result_from_tuple(tree, app=app)  # the last step: add([7, 8], 5) fails
        assert isinstance(rebuilt.parent, GroupResult)
        assert await rebuilt.parent.wait(TIMEOUT) == [7, 8]
        assert await rebuilt.parent.parent.wait(TIMEOUT) == 4


def _shapes(c: Any) -> dict[str, tuple[list[Any], Any]]:
    """Celery's chains of tasks, groups (upgraded to chords) and chords, with their values."""
    add, tsum, ident = c.add, c.tsum, c.identity
    two = group(add.s(1), add.s(1))
    return {
        # test_chain_of_task_a_group_and_a_chord
        "task-group-chord": (
            [add.si(1, 0), two, group(tsum.s(), tsum.s()), tsum.s()],
            8,
        ),
        # test_chain_of_chords_as_groups_chained_to_a_task_with_two_tasks
        "chords-as-groups-two-tasks": (
            [add.si(1, 0), two, tsum.s(), add.s(1), group(add.s(1), add.s(1)), tsum.s()],
            12,
        ),
        # test_chain_of_chords_with_two_tasks
        "chords-two-tasks": (
            [add.si(1, 0), two, tsum.s(), add.s(1), chord(group(add.s(1), add.s(1)), tsum.s())],
            12,
        ),
        # test_chain_of_a_chord_and_a_group_with_two_tasks
        "chord-and-group-two-tasks": (
            [add.si(1, 0), two, tsum.s(), add.s(1), group(add.s(1), add.s(1))],
            [6, 6],
        ),
        # test_chain_of_a_chord_and_a_task_and_a_group
        "chord-task-group": (
            [group(add.s(1, 1), add.s(1, 1)), tsum.s(), add.s(1), two],
            [6, 6],
        ),
        # test_chain_of_a_chord_and_two_tasks_and_a_group
        "chord-two-tasks-group": (
            [group(add.s(1, 1), add.s(1, 1)), tsum.s(), add.s(1), add.s(1), two],
            [7, 7],
        ),
        # test_chain_of_a_chord_and_three_tasks_and_a_group
        "chord-three-tasks-group": (
            [group(add.s(1, 1), add.s(1, 1)), tsum.s(), add.s(1), add.s(1), add.s(1), two],
            [8, 8],
        ),
        # test_nested_chain_group_lone, _mid, _last
        "group-lone": ([group(ident.s(42), ident.s(42))], [42, 42]),
        "group-mid": ([ident.s(42), group(ident.s(), ident.s()), ident.s()], [42, 42]),
        "group-last": ([ident.s(42), group(ident.s(), ident.s())], [42, 42]),
    }


@pytest.mark.parametrize(
    "shape",
    [
        "task-group-chord",
        "chords-as-groups-two-tasks",
        "chords-two-tasks",
        "chord-and-group-two-tasks",
        "chord-task-group",
        "chord-two-tasks-group",
        "chord-three-tasks-group",
        "group-lone",
        "group-mid",
        "group-last",
    ],
)
async def test_chains_of_groups_and_chords(app: App, c: Any, shape: str) -> None:
    """Celery's chains of tasks, groups (upgraded to chords) and chords, by value."""
    steps, value = _shapes(c)[shape]
    async with app.worker(concurrency=20):
        res = await chain(*steps)()
        assert await res.wait(TIMEOUT) == value


async def test_chain_of_explicit_chords(app: App, c: Any) -> None:
    """test_chain_of_explicit_chords."""
    c1 = chain(
        chord(group(c.add.si(1, 0), c.add.si(1, 0)), c.tsum.s()),
        chord(group(c.add.s(1), c.add.s(1)), c.tsum.s()),
        chord(group(c.add.s(0), c.add.s(0)), c.tsum.s()),
    )
    c2 = chain(
        chord(group(c.add.s(10), c.add.s(10)), c.tsum.s()),
        chord(group(c.add.s(0), c.add.s(0)), c.tsum.s()),
        chord(group(c.add.s(1), c.add.s(1)), c.tsum.s()),
    )
    async with app.worker(concurrency=20):
        assert await (await (c1 | c2)()).wait(TIMEOUT) == 178


@pytest.mark.parametrize("failing_headers", [1, 2])
async def test_header_failure_fails_the_chords_after_it(
    app: App, c: Any, failing_headers: int
) -> None:
    """test_header_failure_fails_the_chords_after_it."""
    header = [c.add.s(1, 1), c.fail.s()] if failing_headers == 1 else [c.fail.s(), c.fail.s()]
    inner = chain(chord(header, c.tsum.s()), chord([c.add.s(1), c.add.s(2)], c.tsum.s()))
    async with app.worker(concurrency=20):
        res = await group(inner, c.add.s(1, 1))()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
        expected(info)
        assert await res.results[0].state() == states.FAILURE


async def test_header_failure_fails_the_chords_after_a_group_body(app: App, c: Any) -> None:
    """test_header_failure_fails_the_chords_after_a_group_body."""
    inner = chain(
        chord([c.add.s(1, 1), c.fail.s()], group(c.add.s(1), c.add.s(2))),
        chord([c.add.s(1), c.add.s(2)], c.tsum.s()),
    )
    async with app.worker(concurrency=20):
        res = await group(inner, c.add.s(1, 1))()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
        expected(info)
        assert await res.results[0].state() == states.FAILURE


async def test_chain_of_nine_chords(app: App, c: Any) -> None:
    """test_chain_of_nine_chords and test_chain_of_nine_implicit_chords."""
    explicit = chain(
        chord(group(c.add.si(1, 0), c.add.si(1, 0), c.add.si(1, 0)), c.tsum.s()),
        *(chord(group(c.add.s(1), c.add.s(1), c.add.s(1)), c.tsum.s()) for _ in range(7)),
        chord(group(c.add.s(0), c.add.s(0), c.add.s(0)), c.tsum.s()),
    )
    implicit = chain(
        group(c.add.si(1, 0), c.add.si(1, 0), c.add.si(1, 0)),
        c.tsum.s(),
        *(s for _ in range(7) for s in (group(c.add.s(1), c.add.s(1), c.add.s(1)), c.tsum.s())),
        group(c.add.s(0), c.add.s(0), c.add.s(0)),
        c.tsum.s(),
    )
    async with app.worker(concurrency=20):
        first, second = await explicit(), await implicit()
        assert await first.wait(TIMEOUT) == 29520
        assert await second.wait(TIMEOUT) == 29520


async def test_chain_with_a_nested_chain_led_by_a_group(app: App, c: Any) -> None:
    """test_chain_with_a_nested_chain_led_by_a_group (and its deserialised form)."""
    inner = chain(group(c.add.si(1, 1), c.add.si(2, 2)), c.tsum.s(), c.add.s(10))
    async with app.worker(concurrency=20):
        assert await (await chain(inner, c.add.s(100))()).wait(TIMEOUT) == 116
        restored = signature(json.loads(json.dumps(inner.to_dict())), app=app)
        assert await (await chain(restored, c.add.s(100))()).wait(TIMEOUT) == 116


async def test_chain_children_with_callbacks(app: App, c: Any, rec: Recorder) -> None:
    """test_chain_children_with_callbacks: one signature with a callback, 42 times."""
    child = c.identity.si(1337)
    child.link(c.redis_count.si(redis_key="k"))
    async with app.worker(concurrency=20):
        res = await chain(child for _ in range(42))()
        assert await res.wait(TIMEOUT) == 1337
    await settle(app)
    assert rec.counts["k"] == 42


async def test_chain_children_with_errbacks(app: App, c: Any, rec: Recorder) -> None:
    """test_chain_children_with_errbacks: only the first child runs, and fails."""
    child = c.fail.si()
    child.link_error(c.redis_count.si(redis_key="k"))
    async with app.worker(concurrency=20):
        res = await chain(child for _ in range(42))()
        with pytest.raises(TaskFailed) as info:
            await res.wait(TIMEOUT)
        expected(info)
    await settle(app)
    assert rec.counts["k"] == 1


async def test_chain_callbacks_and_errbacks(app: App, c: Any, rec: Recorder) -> None:
    """test_chain_with_callback_child_replaced, _with_errback_child_replaced,
    test_chain_child_with_callback_replaced, _with_errback_replaced: a replaced step keeps
    its own callbacks and the chain's, each called once."""
    with_callback = chain(c.add_replaced.si(42, 1337), c.identity.s())
    with_callback.link(c.redis_count.si("chain-cb"))
    with_errback = chain(c.add_replaced.si(42, 1337), c.fail.s())
    with_errback.link_error(c.redis_count.si("chain-eb"))
    child = c.add_replaced.si(42, 1337)
    child.link(c.redis_count.si("child-cb"))
    failing = c.fail_replaced.si()
    failing.link_error(c.redis_count.si("child-eb"))
    async with app.worker(concurrency=20):
        assert await (await with_callback()).wait(TIMEOUT) == 42 + 1337
        with pytest.raises(TaskFailed):
            await (await with_errback()).wait(TIMEOUT)
        assert await (await chain(child, c.identity.s())()).wait(TIMEOUT) == 42 + 1337
        with pytest.raises(TaskFailed):
            await (await chain(failing, c.identity.si(42))()).wait(TIMEOUT)
    await settle(app)
    assert rec.counts == {"chain-cb": 1, "chain-eb": 1, "child-cb": 1, "child-eb": 1}


async def test_chain_flattening_keep_links_of_inner_chain(app: App, c: Any, rec: Recorder) -> None:
    """test_chain_flattening_keep_links_of_inner_chain."""
    inner = chain(c.identity.s("a"), c.add.s("b"))
    inner.link(c.redis_echo.si("link_b called", redis_key="link_b"))
    inner.link_error(c.identity.s("link_ab"))
    async with app.worker(concurrency=20):
        res = await chain(inner, c.add.s("c")).delay()
        assert await res.wait(TIMEOUT) == "abc"
    await settle(app)
    assert rec.echoes["link_b"] == ["link_b called"]


@pytest.mark.parametrize(
    "shape",
    ["pure-groups", "starting-with-chord", "mixed", "protocol-2", "protocol-2-group-last"],
)
async def test_chaining_upgraded_chords(app: App, c: Any, rec: Recorder, shape: str) -> None:
    """test_chaining_upgraded_chords_pure_groups, _starting_with_chord, _mixed_canvas,
    _mixed_canvas_protocol_2[False, True]: every task runs exactly once."""

    def e(i: Any, key: str = "echo_chamber") -> Any:
        return c.redis_echo.si(str(i), redis_key=key)

    done = e("Done", "Done")
    first = chord(group([e(1), e(2), e(3)]), group([e(4), e(5), e(6)]))
    if shape == "pure-groups":
        wf = chain(
            group(e(1), e(2), e(3)), group(e(4), e(5), e(6)), group(e(7)), group(e(8)), e(9), done
        )
    elif shape == "starting-with-chord":
        wf = chain(first, group(e(7)), group(e(8)), e(9), done)
    elif shape == "mixed":
        wf = chain(first, e(7), group(e(8)), e(9), done)
    else:
        last = group(done) if shape.endswith("group-last") else done
        wf = chain(
            group([e(1), e(2)]), group([e(3), e(4), e(5)]), group([e(6), e(7), e(8), e(9)]), last
        )
    async with app.worker(concurrency=20):
        await (await wf.delay()).wait(TIMEOUT)
    await settle(app)
    assert rec.echoes["Done"] == ["Done"]
    assert sorted(rec.echoes["echo_chamber"]) == [str(i) for i in range(1, 10)]


async def test_chain_result_id_is_its_last_task_id(app: App, c: Any) -> None:
    """test_freezing_chain_sets_id_of_last_task: the chain's result is its last step's."""
    last = c.add.s(2).set(task_id="42-" + app.name)
    wf = c.add.s(4) | last
    assert wf.id is None
    async with app.worker(concurrency=20):
        res = await wf.delay(1)
        assert res.id == last.id and await res.wait(TIMEOUT) == 7


async def test_group_in_center_of_chain(app: App, c: Any) -> None:
    """test_group_in_center_of_chain: tasks (not signatures) in a header, chords as bodies."""
    t1 = chain(c.tsum.s(), group(c.add.s(8), c.add.s(16)), c.tsum.s() | c.add.s(32))
    t2 = chord([c.tsum, c.tsum], t1)
    t3 = chord([c.add.s(0, 1)], t2)
    async with app.worker(concurrency=20):
        assert await (await t3.apply_async()).wait(TIMEOUT) == 60


async def test_upgrade_to_chord_inside_chains(app: App, c: Any, rec: Recorder) -> None:
    """test_upgrade_to_chord_inside_chains: the step after an upgraded chord runs once."""
    g1 = group(c.redis_echo.si("a", "k"), c.redis_echo.si("a", "k"))
    g2 = group(c.redis_echo.si("a", "k"), c.redis_echo.si("a", "k"))
    wf = chain(g1 | g2, c.redis_echo.si("a", "k") | c.redis_echo.si("b", "k"))
    async with app.worker(concurrency=20):
        await (await wf.apply_async()).wait(TIMEOUT)
    await settle(app)
    assert rec.echoes["k"].count("b") == 1 and rec.echoes["k"].count("a") == 5


async def test_empty_steps(app: App, c: Any) -> None:
    """test_chain_of_group_followed_by_empty_groups, test_chain_skips_empty_groups_before_
    chord_body, test_chain_forwards_args_past_leading_empty_steps.

    Deliberate difference: a chain that starts with an empty group is ``group() | task``,
    as Celery's own ``chain()`` and ``|`` build it: the task gets ``[]`` (Celery's test
    builds its internal ``_chain`` to skip the group instead). Empty chains, and empty
    groups after a step, are skipped.
    """
    async with app.worker(concurrency=20):
        res = await chain(group(c.add.s(2, 2), c.add.s(4, 4)), group(), group())()
        assert await res.wait(TIMEOUT) == [4, 8]
        wf = chain(group(c.add.s(2, 2), c.add.s(4, 4)), group(), group(), c.xsum.s())
        assert await (await wf.apply_async()).wait(TIMEOUT) == 12
        assert await (await chain(chain(), c.add.s(10)).apply_async((5,))).wait(TIMEOUT) == 15
        wf = chain(c.add.s(10), group(), chain(), c.add.s(20))
        assert await (await wf.apply_async((5,))).wait(TIMEOUT) == 35
        assert await (await chain(group(), c.tsum.s()).apply_async()).wait(TIMEOUT) == 0
        wf = chain(chain(group(), c.tsum.s()), c.add.s(20))
        assert await (await wf.apply_async()).wait(TIMEOUT) == 20


@pytest.mark.parametrize("with_task_id", [False, True])
async def test_chain_of_two_groups_as_tuple_holds_each_task_once(
    app: App, c: Any, with_task_id: bool
) -> None:
    """test_chain_of_two_groups_as_tuple_holds_each_task_once."""
    options = {"task_id": f"last-{id(app)}"} if with_task_id else {}
    wf = chain(
        c.add.si(1, 0),
        group(c.add.s(1), c.add.s(2)),
        group(c.tsum.s(), c.tsum.s()),
        c.tsum.s(),
        c.add.s(1),
        **options,
    )
    async with app.worker(concurrency=20):
        res = await wf.apply_async()
        ids = ids_in_as_tuple(res.as_tuple())
        assert len(ids) == len(set(ids)) == 9, ids
        assert await res.wait(TIMEOUT) == 11
        if with_task_id:
            assert res.id == options["task_id"]


async def test_chord_with_chain_body_with_task_id(app: App, c: Any) -> None:
    """test_chord_with_chain_body_with_task_id: frozen before it is sent."""
    body = chain(
        c.add.si(1, 0),
        group(c.add.si(1, 1), c.add.si(1, 2)),
        c.add.si(2, 2) | c.add.si(3, 3),
        task_id=f"body-{id(app)}",
    )
    wf = chord([c.add.si(1, 1), c.add.si(1, 2)], body)
    wf.freeze()
    async with app.worker(concurrency=20):
        res = await wf.apply_async()
        ids = ids_in_as_tuple(res.as_tuple())
        assert len(ids) == len(set(ids)), ids
        assert res.id == f"body-{id(app)}"
        assert await res.wait(TIMEOUT) == 6


async def test_priority(app: App, c: Any) -> None:
    """test_chord.test_priority and test_priority_chain: per-step options."""
    async with app.worker(concurrency=20):
        res = await chain(c.return_priority.signature(priority=3))()
        assert await res.wait(TIMEOUT) == "Priority: 3"
        wf = c.return_priority.signature(priority=3) | c.return_priority.signature(priority=5)
        assert await (await wf()).wait(TIMEOUT) == "Priority: 5"
