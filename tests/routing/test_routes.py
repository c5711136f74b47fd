"""Routing rules without a broker: what task_routes and task_queues decide for a call.

The resolver (``Plan``) is what every send path uses, so a destination found here is the
one a message gets (tests/routing/test_delivery.py proves it on every broker).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from aqueue import (
    App,
    Broadcast,
    ConfigurationError,
    Exchange,
    OptionError,
    Queue,
    RoutingError,
)
from aqueue.core.options import Plan, check_options
from aqueue.core.routing import topic_matches


def plan(app: App, name: str, args: tuple[Any, ...] = (), **options: Any) -> Plan:
    return Plan(app.conf, name, check_options(options), app.tasks.get(name), args=args)


def where(app: App, name: str, args: tuple[Any, ...] = (), **options: Any) -> tuple[str, str, str]:
    p = plan(app, name, args, **options)
    return p.queue, p.exchange, p.routing_key


@pytest.mark.parametrize(
    ("binding", "key", "matches"),
    [
        ("feed.#", "feed.import", True),
        ("feed.#", "feed", True),
        ("feed.#", "feed.a.b.c", True),
        ("feed.#", "feeds.import", False),
        ("*.orange.*", "quick.orange.rabbit", True),
        ("*.orange.*", "quick.orange.male.rabbit", False),
        ("*.*.rabbit", "lazy.orange.rabbit", True),
        ("lazy.#", "lazy", True),
        ("#", "anything.at.all", True),
        ("#", "", True),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y.c", False),
        ("*", "", True),
        ("*", "a.b", False),
        ("task.#", "task.#", True),  # Celery sends a queue's binding key as the routing key
        ("exact.key", "exact.key", True),
        ("exact.key", "exact", False),
    ],
)
def test_topic_matching_is_amqps(binding: str, key: str, matches: bool) -> None:
    """The RabbitMQ tutorial's examples and AMQP's rules: ``*`` one word, ``#`` any."""
    assert topic_matches(binding, key) is matches


def test_default_queue_is_celery() -> None:
    app = App("r", broker="memory://")

    @app.task(name="r.add")
    async def add(x: int, y: int) -> int:
        return x + y

    assert app.conf.task_default_queue == "celery"
    assert where(app, "r.add", (1, 2)) == ("celery", "", "")
    assert app.worker().queues == ["celery"]


def test_map_routes_exact_then_patterns_in_order() -> None:
    app = App(
        "r",
        broker="memory://",
        task_routes={
            "feed.tasks.*": "feeds",  # glob
            re.compile(r"(image|video)\.tasks\..*"): "media",  # regex
            "video.encode": {"queue": "video", "priority": 7},  # exact beats the regex
            "feed.tasks.special": "special",  # exact beats the glob, wherever it is
        },
    )
    assert where(app, "feed.tasks.import")[0] == "feeds"
    assert where(app, "feed.tasks.special")[0] == "special"
    assert where(app, "image.tasks.resize")[0] == "media"
    assert where(app, "video.encode")[0] == "video"
    assert plan(app, "video.encode").priority == 7
    assert where(app, "other.task")[0] == "celery"


def test_list_of_pairs_and_list_of_routers() -> None:
    pairs = App("r", broker="memory://", task_routes=[("a.*", "qa"), ("b.*", {"queue": "qb"})])
    assert where(pairs, "a.x")[0] == "qa"
    assert where(pairs, "b.x")[0] == "qb"

    def first(name: str, args: Any, kwargs: Any, options: Any, task: Any = None) -> Any:
        return "first" if name == "both" else None

    routers = App("r", broker="memory://", task_routes=(first, {"both": "map", "only": "map"}))
    assert where(routers, "both")[0] == "first"  # the first router that answers wins
    assert where(routers, "only")[0] == "map"


def test_router_function_sees_the_call() -> None:
    seen: list[tuple[Any, ...]] = []

    def router(name: str, args: Any, kwargs: Any, options: Any, task: Any = None) -> Any:
        seen.append((name, args, kwargs, options, task))
        return {"queue": f"q{args[0]}", "routing_key": "k"} if args else None

    app = App("r", broker="memory://", task_routes=[router])

    @app.task(name="r.f")
    async def f(n: int, *, flag: bool = False) -> None: ...

    p = Plan(app.conf, "r.f", check_options({"countdown": 5}), f, args=(3,), kwargs={"flag": True})
    assert (p.queue, p.routing_key) == ("q3", "k")
    assert seen == [("r.f", (3,), {"flag": True}, {"countdown": 5.0}, f)]


def test_router_by_dotted_path_imported_on_first_use() -> None:
    app = App("r", broker="memory://", task_routes="tests.routing.routers.by_first_argument")
    assert where(app, "r.pick", ("chosen",))[0] == "chosen"
    colon = App("r", broker="memory://", task_routes=["tests.routing.routers:by_first_argument"])
    assert where(colon, "r.pick", ("other",))[0] == "other"
    missing = App("r", broker="memory://", task_routes="tests.routing.routers.nope")
    with pytest.raises(ConfigurationError, match="task_routes: cannot import router"):
        where(missing, "r.pick")
    not_callable = App("r", broker="memory://", task_routes="tests.routing.routers.NOT_CALLABLE")
    with pytest.raises(ConfigurationError, match="is not callable"):
        where(not_callable, "r.pick")


def test_router_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQUEUE_TASK_ROUTES", "tests.routing.routers.by_first_argument")
    app = App("r", broker="memory://")
    assert where(app, "r.pick", ("env",))[0] == "env"
    monkeypatch.setenv("AQUEUE_TASK_QUEUES", "a,b")
    with pytest.raises(ConfigurationError, match="task_queues cannot be set from the environ"):
        App("r", broker="memory://")


def test_a_router_that_raises_or_answers_nonsense_is_named() -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("x")

    app = App("r", broker="memory://", task_routes=[boom])
    with pytest.raises(RoutingError, match=r"router .*boom.* raised for task r\.t \(KeyError"):
        where(app, "r.t")

    def weird(*args: Any, **kwargs: Any) -> Any:
        return 42

    app = App("r", broker="memory://", task_routes=[weird])
    with pytest.raises(RoutingError, match="returned int: a route is a queue name"):
        where(app, "r.t")

    def bad_key(*args: Any, **kwargs: Any) -> Any:
        return {"queue": "q", "immediate": True}

    app = App("r", broker="memory://", task_routes=[bad_key])
    with pytest.raises(RoutingError, match=r"unknown key\(s\) immediate"):
        where(app, "r.t")

    def bad_value(*args: Any, **kwargs: Any) -> Any:
        return {"priority": 99}

    app = App("r", broker="memory://", task_routes=[bad_value])
    with pytest.raises(RoutingError, match="priority must be between 0 and 9"):
        where(app, "r.t")


@pytest.mark.parametrize(
    ("routes", "needle"),
    [
        (5, "task_routes takes a dict"),
        ({"a": 5}, "the route of 'a' must be a queue name or a dict"),
        ({5: "q"}, "key 5 must be a task name, a glob or re.compile"),
        ({"a": {"queue": "q", "delivery_mode": 2}}, "unknown key.s. delivery_mode"),
        ({re.compile("x"): {"nope": 1}}, r"re.compile\('x'\) has unknown key"),
    ],
)
def test_bad_task_routes_are_refused_when_set(routes: Any, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        App("r", broker="memory://", task_routes=routes)
    app = App("r", broker="memory://")
    with pytest.raises(ConfigurationError, match=needle):
        app.conf.update(task_routes=routes)


def test_a_static_route_with_a_bad_value_fails_on_first_use() -> None:
    app = App("r", broker="memory://", task_routes={"r.t": {"priority": "high"}})
    with pytest.raises(ConfigurationError, match="priority must be an int"):
        where(app, "r.t")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: Queue("q", message_ttl=5), "message_ttl not supported"),
        (lambda: Queue(""), "Queue name must be a non-empty str"),
        (lambda: Queue("q", exchange=5), "exchange must be an Exchange or a name"),  # type: ignore[arg-type]
        (lambda: Queue("q", queue_arguments={"x-expires": 5}), "x-expires not supported"),
        (lambda: Queue("q", max_priority=0), "max_priority must be an int from 1 to 255"),
        (lambda: Queue("q", max_priority=True), "max_priority must be an int from 1 to 255"),
        (
            lambda: Queue("q", max_priority=5, queue_arguments={"x-queue-type": "quorum"}),
            "max_priority needs a classic queue",
        ),
        (lambda: Exchange("x", "headers"), "headers exchanges are not supported"),
        (lambda: Exchange("x", "nope"), "type must be direct, topic or fanout"),
        (lambda: Exchange("", "direct"), "Exchange name must be 1 to 255"),
        (lambda: Exchange("x", passive=True), "passive not supported"),
        (lambda: Broadcast("b", queue="mine"), "aqueue names each worker's own queue"),
        (lambda: Broadcast("b", exchange=Exchange("b", "topic")), "must be a fanout one"),
    ],
)
def test_bad_queue_declarations_say_what_is_wrong(make: Any, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        make()


def test_task_queues_forms_and_refusals() -> None:
    # Celery's dict form (older docs), with its options
    app = App(
        "r",
        broker="memory://",
        task_queues={"cpubound": {"exchange": "cpubound", "routing_key": "cpubound"}},
    )
    assert app.router().queues["cpubound"].exchange == Exchange("cpubound")
    with pytest.raises(ConfigurationError, match="task_queues must be a list of Queue"):
        App("r", broker="memory://", task_queues=["a", "b"])
    with pytest.raises(ConfigurationError, match="declares queue 'a' twice, differently"):
        App("r", broker="memory://", task_queues=[Queue("a"), Queue("a", routing_key="k")])
    clash = App(
        "r",
        broker="memory://",
        task_queues=[Queue("a", Exchange("x", "topic")), Queue("b", Exchange("x", "direct"))],
    )
    with pytest.raises(ConfigurationError, match="exchange 'x' is declared twice, differently"):
        clash.router()
    with pytest.raises(ConfigurationError, match="task_default_exchange_type must be direct"):
        App("r", broker="memory://", task_default_exchange_type="headers")


# -- precedence: call option > route > task option > setting ----------------------------------


@pytest.fixture
def routed_app() -> App:
    app = App(
        "r",
        broker="memory://",
        task_routes={"r.*": {"queue": "route-q", "priority": 5, "serializer": "json"}},
        task_default_priority=1,
    )

    @app.task(name="r.with_options", queue="task-q", priority=8, serializer="msgpack")
    async def with_options() -> None: ...

    @app.task(name="plain")
    async def plain() -> None: ...

    return app


def test_call_option_beats_the_route(routed_app: App) -> None:
    p = plan(routed_app, "r.with_options", queue="call-q", priority=2, serializer="msgpack")
    assert (p.queue, p.priority, p.serializer) == ("call-q", 2, "msgpack")


def test_route_beats_the_task_option(routed_app: App) -> None:
    p = plan(routed_app, "r.with_options")
    assert (p.queue, p.priority, p.serializer) == ("route-q", 5, "json")


def test_task_option_beats_the_setting() -> None:
    app = App("r", broker="memory://", task_default_priority=1, task_default_queue="dq")

    @app.task(name="t", queue="task-q", priority=8)
    async def t() -> None: ...

    @app.task(name="u")
    async def u() -> None: ...

    assert (plan(app, "t").queue, plan(app, "t").priority) == ("task-q", 8)
    assert (plan(app, "u").queue, plan(app, "u").priority) == ("dq", 1)  # the settings


def test_the_route_applies_field_by_field(routed_app: App) -> None:
    """A call that names only the queue still gets the route's priority."""
    p = plan(routed_app, "r.with_options", queue="call-q")
    assert (p.queue, p.priority) == ("call-q", 5)


async def test_precedence_is_the_same_on_every_send_path(routed_app: App) -> None:
    """delay, apply_async, options(), signatures, send_task and send_many: one resolver."""
    app = routed_app
    task = app.tasks["r.with_options"]
    async with app:
        handles = [
            await task.delay(),
            await task.apply_async(),
            await task.options(priority=2).delay(),
            await task.s().set(queue="call-q").delay(),
            await app.send_task("r.with_options"),
            *(await app.send_many([task.s(), task.s().set(queue="call-q")])),
            *(await task.delay_many([(), ()])),
        ]
    assert [h.queue for h in handles] == [
        "route-q",
        "route-q",
        "route-q",
        "call-q",
        "route-q",
        "route-q",
        "call-q",
        "route-q",
        "route-q",
    ]


def test_task_options_are_checked_at_decoration() -> None:
    app = App("r", broker="memory://")
    with pytest.raises(OptionError, match="priority must be between 0 and 9"):
        app.task(name="t", priority=10)(lambda: None)


# -- destinations ---------------------------------------------------------------------------


def test_celerys_topic_example() -> None:
    """Celery's routing guide, "Manual routing" with a topic exchange."""
    app = App(
        "r",
        broker="memory://",
        task_queues=(
            Queue("default", routing_key="task.#"),
            Queue("feed_tasks", routing_key="feed.#"),
        ),
        task_default_queue="default",
        task_default_exchange="tasks",
        task_default_exchange_type="topic",
        task_default_routing_key="task.default",
        task_routes={"feeds.tasks.*": {"queue": "feed_tasks", "routing_key": "feed.import"}},
    )
    assert where(app, "feeds.tasks.import_feed") == ("feed_tasks", "tasks", "feed.import")
    # no routing key from the call or route: the queue's binding key, as Celery sends it
    assert where(app, "other") == ("default", "tasks", "task.#")
    assert where(app, "other", exchange="tasks", routing_key="feed.x") == (
        "default",
        "tasks",
        "feed.x",
    )
    router = app.router()
    assert router.target("tasks", "feed.import", "memory://") == "feed_tasks"
    assert router.target("tasks", "task.#", "memory://") == "default"
    with pytest.raises(RoutingError, match="no queue in task_queues is bound to topic exchange"):
        router.target("tasks", "nothing.here", "memory://")


def test_a_direct_exchange_is_skipped_unless_the_call_names_exchange_and_key() -> None:
    app = App(
        "r",
        broker="memory://",
        task_queues=[Queue("videos", Exchange("media"), routing_key="media.video")],
    )
    assert where(app, "t", queue="videos") == ("videos", "", "")
    assert where(app, "t", exchange="media", routing_key="media.video") == (
        "celery",
        "media",
        "media.video",
    )
    assert app.router().target("media", "media.video", "x") == "videos"


def test_several_matching_queues_and_broadcast_need_rabbitmq() -> None:
    app = App(
        "r",
        broker="memory://",
        task_queues=[
            Queue("a", Exchange("t", "topic"), "k.*"),
            Queue("b", Exchange("t", "topic"), "#"),
            Broadcast("everyone"),
        ],
    )
    router = app.router()
    with pytest.raises(RoutingError, match="matches queues a, b: only RabbitMQ copies"):
        router.target("t", "k.x", "redis://host")
    assert router.target("t", "z", "redis://host") == "b"
    assert where(app, "t", queue="everyone") == ("everyone", "everyone", "everyone")
    with pytest.raises(RoutingError, match=r"exchange 'everyone' is a fanout \(broadcast\)"):
        router.target("everyone", "everyone", "redis://host")


async def test_unknown_exchange_and_missing_queues() -> None:
    app = App("r", broker="memory://")
    with pytest.raises(RoutingError, match="exchange 'nope' is not declared"):
        where(app, "t", exchange="nope", routing_key="k")
    strict = App(
        "r", broker="memory://", task_queues=[Queue("celery")], task_create_missing_queues=False
    )
    assert where(strict, "t")[0] == "celery"
    with pytest.raises(RoutingError, match="queue 'other' is not in task_queues and task_create"):
        where(strict, "t", queue="other")
    with pytest.raises(ConfigurationError, match=r"queue\(s\) other not in task_queues"):
        async with strict, strict.worker(queues=["other"]):
            pass


def test_changing_routing_settings_recompiles() -> None:
    """Celery's spelling ``app.conf.task_routes = ...`` takes effect on the next send."""
    app = App("r", broker="memory://")
    assert where(app, "t")[0] == "celery"
    app.conf.task_routes = {"t": "first"}
    assert where(app, "t")[0] == "first"
    app.conf.update(task_routes={"t": "second"})
    assert where(app, "t")[0] == "second"
    app.conf.task_default_queue = "dq"
    assert where(app, "u")[0] == "dq"


def test_celery_config_names(tmp_path: Any) -> None:
    """The routing seed's spelling: Django settings with the CELERY_ namespace."""
    settings = {
        "CELERY_TASK_ROUTES": {"tasks.add": {"queue": "priority.high"}},
        "CELERY_TASK_DEFAULT_QUEUE": "celery",
    }
    app = App("r", broker="memory://")
    app.config_from_object(settings, namespace="CELERY")
    assert where(app, "tasks.add")[0] == "priority.high"
    old = App("r", broker="memory://")
    old.config_from_object({"CELERY_ROUTES": {"tasks.add": "q"}, "CELERY_QUEUES": [Queue("q")]})
    assert where(old, "tasks.add")[0] == "q"


def test_worker_queues_default_to_task_queues() -> None:
    app = App("r", broker="memory://", task_queues=[Queue("a"), Queue("b")])
    assert app.worker().queues == ["a", "b"]
    assert app.worker(queues=["b"]).queues == ["b"]


async def test_untargeted_queues_are_named_once_at_worker_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("r", broker="memory://w", task_routes={"r.t": "routed"})

    @app.task(name="r.u", queue="task-q")
    async def u() -> None: ...

    caplog.set_level(logging.WARNING, "aqueue.worker")
    queues = ["celery", "routed", "task-q", "priority.high", "other"]
    async with app, app.worker(queues=queues):
        pass
    warnings = [r.getMessage() for r in caplog.records if "no task, route" in r.getMessage()]
    assert len(warnings) == 1
    assert "queue(s) priority.high, other that no task, route or task_queues" in warnings[0]
    assert "(the default queue is celery)" in warnings[0]
    caplog.clear()
    async with app, app.worker(queues=["celery", "routed"]):
        pass
    assert not [r for r in caplog.records if "no task, route" in r.getMessage()]
