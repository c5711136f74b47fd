"""The dashboard's model on its own: events in, Flower's task records out."""

from __future__ import annotations

import itertools

from aqueue import App
from aqueue.core.events import Event
from aqueue.web.state import State

_clock = itertools.count(1)


def event(type_: str, uuid: str | None = None, at: float = 100.0, **fields: object) -> Event:
    return Event(
        type=type_,
        timestamp=at,
        hostname=str(fields.pop("hostname", "w@h")),
        pid=1,
        clock=next(_clock),
        utcoffset=0,
        uuid=uuid,
        **fields,  # type: ignore[arg-type]
    )


def model(max_tasks: int = 100) -> State:
    return State(App("t", broker="memory://state-test"), max_tasks=max_tasks)


def test_a_task_goes_through_its_states_with_flowers_fields() -> None:
    s = model()
    s.apply(
        event("task-sent", "a", 1.0, name="add", args="(1, 2)", hostname="gen1@h", queue="celery")
    )
    s.apply(event("task-received", "a", 2.0, name="add", retries=0))
    s.apply(event("task-started", "a", 3.0))
    s.apply(event("task-succeeded", "a", 4.0, result="3", runtime=0.5))
    t = s.tasks["a"]
    assert (t.state, t.sent, t.received, t.started, t.succeeded) == ("SUCCESS", 1.0, 2.0, 3.0, 4.0)
    assert (t.client, t.worker, t.result, t.runtime, t.timestamp) == (
        "gen1@h",
        "w@h",
        "3",
        0.5,
        4.0,
    )
    info = t.as_dict(show_arguments=False)
    assert info["args"] is None and info["result"] is None and info["name"] == "add"
    assert t.as_dict(show_arguments=True)["args"] == "(1, 2)"
    assert [kind for kind, _, _ in t.timeline] == [
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    assert s.counts == {"SUCCESS": 1} and s.changes == 4


def test_a_late_event_does_not_undo_a_final_state_but_a_retry_moves_on() -> None:
    s = model()
    s.apply(event("task-succeeded", "a", 5.0))
    s.apply(event("task-started", "a", 4.0))  # came late (another connection)
    assert s.tasks["a"].state == "SUCCESS"
    s.apply(event("task-retried", "b", 1.0, exception="E()"))
    s.apply(event("task-received", "b", 2.0))
    s.apply(event("task-failed", "b", 3.0, exception="E()", traceback="tb"))
    assert s.tasks["b"].state == "FAILURE" and s.tasks["b"].retried == 1.0


def test_children_are_linked_whichever_event_comes_first() -> None:
    s = model()
    s.apply(event("task-received", "child", 2.0, parent_id="root", root_id="root"))
    s.apply(event("task-received", "root", 1.0, root_id="root"))
    s.apply(event("task-received", "second", 3.0, parent_id="root", root_id="root"))
    assert s.tasks["root"].children == ["child", "second"]


def test_memory_is_bounded_least_recently_updated_first() -> None:
    s = model(max_tasks=3)
    for name in "abcd":
        s.apply(event("task-received", name))
    assert list(s.tasks) == ["b", "c", "d"]
    s.apply(event("task-started", "b"))
    s.apply(event("task-received", "e"))
    assert list(s.tasks) == ["d", "b", "e"]
    assert [t.uuid for t in s.iter_tasks()] == ["e", "b", "d"]


def test_workers_from_heartbeats() -> None:
    s = model()
    s.apply(event("worker-online", None, 10.0, hostname="w1@h", freq=2.0, active=0, processed=0))
    s.apply(event("worker-heartbeat", None, 12.0, hostname="w1@h", active=2, processed=7))
    w = s.workers["w1@h"]
    assert (w.active, w.processed, w.last_heartbeat) == (2, 7, 12.0)
    assert w.alive(now=13.0) and not w.alive(now=30.0)
    s.apply(event("worker-offline", None, 14.0, hostname="w1@h"))
    assert not s.workers["w1@h"].alive(now=14.5)
