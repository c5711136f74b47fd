"""One option resolver: every way of sending gives the same bad option the same error.

Issue 12 (three places, three rules: ``apply_async(priority=999)`` raised while
``s().set(priority=999).delay()`` and ``send_many`` accepted it) and issue 11 defect 5
(``countdown=inf``/``nan``/``1e300``, a year-9999 ``eta``, ``time_limit <= 0``,
``task_id=123``, ``priority="5"``, ``headers={"n": 1}``, ``parent_id=5`` were accepted, or
failed with a bare ``TypeError``/``AttributeError``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from aqueue import App, OptionError, chain, chord, group
from aqueue.core.message import MAX_CALLER_HEADERS, MAX_HEADER_NAME_LENGTH, MAX_HEADER_VALUE_LENGTH
from aqueue.core.nodes import TaskNode
from aqueue.core.options import check_options, node_message

BAD_OPTIONS: list[Any] = [
    pytest.param({"priority": 999}, "between 0 and 9", id="priority-999"),
    pytest.param({"priority": 10}, "between 0 and 9", id="priority-10"),
    pytest.param({"exchange": 5}, "exchange must be an exchange name", id="exchange-int"),
    pytest.param({"exchange": ""}, "exchange must be 1 to 255 bytes", id="exchange-empty"),
    pytest.param({"routing_key": 5}, "routing_key must be a str", id="routing_key-int"),
    pytest.param({"routing_key": "k" * 256}, "at most 255 bytes", id="routing_key-long"),
    pytest.param({"priority": "5"}, "priority must be an int", id="priority-str"),
    pytest.param({"priority": True}, "priority must be an int", id="priority-bool"),
    pytest.param({"countdown": math.inf}, "finite", id="countdown-inf"),
    pytest.param({"countdown": math.nan}, "finite", id="countdown-nan"),
    pytest.param({"countdown": 1e300}, "years", id="countdown-1e300"),
    pytest.param({"countdown": "10"}, "number of seconds", id="countdown-str"),
    pytest.param({"eta": dt.datetime(9999, 1, 1, tzinfo=dt.UTC)}, "years ahead", id="eta-9999"),
    pytest.param({"eta": math.nan}, "finite time", id="eta-nan"),
    pytest.param({"eta": "tomorrow"}, "datetime or unix seconds", id="eta-str"),
    pytest.param({"eta": 1.0, "countdown": 1.0}, "countdown or eta, not both", id="eta+countdown"),
    pytest.param({"expires": math.nan}, "finite", id="expires-nan"),
    pytest.param({"expires": math.inf}, "finite", id="expires-inf"),
    pytest.param({"time_limit": 0}, "more than 0 seconds", id="time_limit-0"),
    pytest.param({"time_limit": -1.0}, "more than 0 seconds", id="time_limit-negative"),
    pytest.param({"soft_time_limit": "soon"}, "number of seconds", id="soft_time_limit-str"),
    pytest.param({"task_id": 123}, "task_id must be a str", id="task_id-int"),
    pytest.param({"task_id": ""}, "1 to 1024 characters", id="task_id-empty"),
    pytest.param({"queue": ""}, "1 to 1024 characters", id="queue-empty"),
    pytest.param({"queue": 5}, "queue must be a str", id="queue-int"),
    pytest.param({"headers": {"n": 1}}, "headers must map str to str", id="header-int"),
    pytest.param({"headers": ["a"]}, "headers must be a dict", id="headers-list"),
    pytest.param({"headers": {"x-aqueue-reply-to": "q"}}, "reserved", id="header-reserved"),
    pytest.param(
        {"headers": {f"h{i}": "v" for i in range(MAX_CALLER_HEADERS + 1)}},
        f"a call may set at most {MAX_CALLER_HEADERS}",
        id="headers-too-many",
    ),
    pytest.param(
        {"headers": {"n" * (MAX_HEADER_NAME_LENGTH + 1): "v"}},
        f"a name is at most {MAX_HEADER_NAME_LENGTH} characters",
        id="header-name-long",
    ),
    pytest.param(
        {"headers": {"n": "v" * (MAX_HEADER_VALUE_LENGTH + 1)}},
        f"a value at most {MAX_HEADER_VALUE_LENGTH}",
        id="header-value-long",
    ),
    pytest.param({"parent_id": 5}, "parent_id must be a str", id="parent_id-int"),
    pytest.param({"serializer": "pickle"}, "pickle is never supported", id="serializer-pickle"),
    pytest.param({"ignore_result": "yes"}, "True or False", id="ignore_result-str"),
    pytest.param({"link": "t.add"}, "takes a signature", id="link-str"),
    pytest.param({"countdwn": 1}, "unknown call option(s): countdwn", id="unknown"),
]


@pytest.fixture
def app() -> App:
    return App("options", broker="memory://options")


@pytest.fixture
def add(app: App) -> Any:
    @app.task(name="o.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return add


def entry_points(app: App, add: Any) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
    """Every way of sending a task with options, each taking the options."""

    async def sync(build: Callable[[], Any]) -> Any:
        return build()

    return {
        "apply_async": lambda o: add.apply_async((1, 2), **o),
        "options().delay": lambda o: add.options(**o).delay(1, 2),
        "options().delay_many": lambda o: add.options(**o).delay_many([(1, 2)]),
        "apply_many": lambda o: add.apply_many([(1, 2)], **o),
        "send_task": lambda o: app.send_task("o.add", args=(1, 2), **o),
        "s().set()": lambda o: sync(lambda: add.s(1, 2).set(**o)),
        "signature()": lambda o: sync(lambda: add.signature((1, 2), **o)),
        "app.signature()": lambda o: sync(lambda: app.signature("o.add", (1, 2), **o)),
        "s().apply_async()": lambda o: add.s(1, 2).apply_async(**o),
        "s().clone()": lambda o: sync(lambda: add.s(1, 2).clone(**o)),
        "send_many": lambda o: app.send_many([add.s(1, 2).set(**o)]),
        "chain step": lambda o: sync(lambda: chain(add.s(1, 2), add.s(3).set(**o))),
        "group member": lambda o: sync(lambda: group(add.s(1, 2).set(**o))),
        "chord body": lambda o: sync(lambda: chord([add.s(1, 2)], add.s().set(**o))),
        # composite canvases (issue 13): set(), apply_async() and the call forms
        "chain(**options)": lambda o: sync(lambda: chain(add.s(1, 2), add.s(3), **o)),
        "chain.set()": lambda o: sync(lambda: (add.s(1, 2) | add.s(3)).set(**o)),
        "chain.apply_async()": lambda o: (add.s(1, 2) | add.s(3)).apply_async(**o),
        "group.set()": lambda o: sync(lambda: group(add.s(1, 2)).set(**o)),
        "group.apply_async()": lambda o: group(add.s(1, 2)).apply_async(**o),
        "group(...)()": lambda o: group(add.s(1, 2))(**o),
        "chord.set()": lambda o: sync(lambda: chord([add.s(1, 2)], add.s()).set(**o)),
        "chord.apply_async()": lambda o: chord([add.s(1, 2)], add.s()).apply_async(**o),
        "chord(header)(body)": lambda o: chord([add.s(1, 2)])(add.s(), **o),
    }


@pytest.mark.parametrize(("options", "needle"), BAD_OPTIONS)
async def test_the_same_bad_option_gets_the_same_error_everywhere(
    app: App, add: Any, options: dict[str, Any], needle: str
) -> None:
    errors: dict[str, str] = {}
    for name, send in entry_points(app, add).items():
        if name in ("apply_many", "options().delay_many") and "task_id" in options:
            continue  # refused anyway: every message of a bulk call needs its own id
        with pytest.raises(OptionError) as info:
            await send(dict(options))
        errors[name] = str(info.value)
    messages = set(errors.values())
    assert len(messages) == 1, errors
    assert needle in messages.pop()
    assert not app.is_connected  # refused before any I/O


@pytest.mark.parametrize(("options", "needle"), BAD_OPTIONS)
def test_a_stored_workflow_step_is_checked_again(options: dict[str, Any], needle: str) -> None:
    """A step's options read back from a message (another process wrote them) get the same
    error where the worker builds the step's message."""
    if "link" in options:
        return  # callbacks are not options in a stored step (they are its link field)
    app = App("options", broker="memory://stored")
    stored = dict(options)
    if isinstance(stored.get("eta"), dt.datetime):
        stored["eta"] = stored["eta"].timestamp() if stored["eta"].year < 9999 else 2.5e11
    node = TaskNode(id="step", task="o.add", options=stored)
    with pytest.raises(OptionError) as info:
        node_message(app.conf, node, None)
    assert needle in str(info.value) or "years ahead" in str(info.value)


def test_option_error_is_also_type_and_value_error() -> None:
    """Code written for the errors Celery users saw before keeps working."""
    assert issubclass(OptionError, TypeError) and issubclass(OptionError, ValueError)


async def test_good_options_resolve_alike_on_every_path(app: App, add: Any) -> None:
    at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    options = {"eta": at, "expires": 600, "priority": 7, "queue": "hi", "headers": {"k": "v"}}
    sig_options = add.s(1, 2).set(**options).options
    assert sig_options == check_options(options)
    assert sig_options["eta"] == pytest.approx(at.timestamp())
    node = add.s(1, 2).set(**options).freeze()
    msg, fmt = node_message(app.conf, node, add, now=1000.0)
    assert (msg.queue, msg.priority, msg.headers, fmt) == ("hi", 7, {"k": "v"}, "msgpack")
    assert msg.expires == 1600.0 and msg.eta == pytest.approx(at.timestamp())


def test_options_of_a_canvas_reach_its_tasks_as_celery_passes_them(app: App, add: Any) -> None:
    """Chain: its first step; group: every member; chord: its header, the body not delayed;
    task_id: the result the canvas returns. Merged by the resolver's rule (a countdown
    replaces a step's own eta)."""
    first = add.s(1, 2).set(eta=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    wf = chain(first, add.s(3)).set(countdown=10, priority=3, task_id="last")
    node = wf.to_node()
    steps = node.steps  # type: ignore[union-attr]
    assert steps[0].options == {"countdown": 10.0, "priority": 3}
    assert steps[1].options == {} and steps[1].id == "last"
    members = group(add.s(1, 1), add.s(2, 2)).set(queue="hi").to_node().members
    assert [m.options for m in members] == [{"queue": "hi"}, {"queue": "hi"}]
    made = chord([add.s(1, 1)], add.s()).set(countdown=5, queue="hi", task_id="body").to_node()
    assert made.header[0].options == {"countdown": 5.0, "queue": "hi"}
    assert made.body.options == {"queue": "hi"} and made.body.id == "body"


async def test_negative_and_zero_countdown_run_now(app: App, add: Any) -> None:
    async with app, app.worker():
        assert await (await add.apply_async((1, 2), countdown=-5)).wait(timeout=10) == 3
        assert await (await add.apply_async((2, 2), countdown=0)).wait(timeout=10) == 4
