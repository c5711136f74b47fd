"""Redis Sentinel URLs (issue 20), parsed without any server: aqueue's
``redis+sentinel://`` and Celery's ``sentinel://...;sentinel://...`` spellings, the
options that go with them, the errors for what is wrong, and passwords kept out of reprs
and messages."""

from __future__ import annotations

from typing import Any

import pytest

from aqueue import App, ConfigurationError
from aqueue.backends.redis import RedisBackend
from aqueue.brokers.redis import RedisBroker
from aqueue.core.config import Settings
from aqueue.core.urls import make_backend, make_broker, redact
from aqueue.transports.redis.sentinel import SentinelTarget
from aqueue.transports.redis.settings import RedisSettings, parse_settings

PW = "m4ster-pw"
SPW = "s3ntinel-pw"


def parse(url: str, **options: Any) -> RedisSettings:
    return parse_settings(url, options, what="test")


def target(settings: RedisSettings) -> SentinelTarget:
    assert settings.sentinel is not None
    return settings.sentinel


def test_aqueue_spelling() -> None:
    s = parse(f"redis+sentinel://:{PW}@h1:26380,h2,[::1]:26381/mymaster/3?prefix=shop")
    t = target(s)
    assert t.master == "mymaster"
    assert t.nodes == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert s.database == 3
    assert s.prefix == "shop"
    assert s.extra["password"] == PW
    assert s.wait_replicas == 1  # the default behind Sentinel
    assert s.url == "redis+sentinel://h1:26380,h2:26379,[::1]:26381/mymaster/3"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h1:26379/mymaster",
        "redis+sentinel://h1:26379/mymaster/",
        "redis+sentinel://h1:26379/?master_name=mymaster",
        "redis+sentinel://h1:26379?master_name=mymaster&db=0",
    ],
)
def test_master_and_database_forms(url: str) -> None:
    s = parse(url)
    assert target(s).master == "mymaster"
    assert s.database == 0


def test_celery_spelling() -> None:
    url = f"sentinel://:{PW}@h1:26379/2;sentinel://:{PW}@h2:26380/2"
    s = parse(url, master_name="mymaster", sentinel_kwargs={"password": SPW})
    t = target(s)
    assert (t.master, t.nodes, t.password) == ("mymaster", (("h1", 26379), ("h2", 26380)), SPW)
    assert s.database == 2
    assert s.extra["password"] == PW
    # both spellings of one master are one server to bind_records
    same = parse(f"redis+sentinel://h1:26379,h2:26380/mymaster/2?sentinel_password={SPW}")
    assert same.url == s.url
    assert target(same).password == SPW


def test_celery_spelling_through_app_settings() -> None:
    """Celery's ``broker_transport_options`` is read as ``broker_options``."""
    conf = Settings()
    conf.update(broker_transport_options={"master_name": "mymaster"})
    assert conf.broker_options == {"master_name": "mymaster"}
    app = App("t", broker="sentinel://h1:26379;sentinel://h2:26379", backend="memory://")
    app.conf.update(broker_transport_options={"master_name": "mymaster"})
    broker = make_broker(app.broker_url, app.conf.broker_options)
    assert isinstance(broker, RedisBroker)
    assert "mymaster" in repr(broker.settings.sentinel)


def test_celery_config_object_spellings() -> None:
    """A Celery config module's names, old and Django-namespaced, reach broker_options."""
    options = {"master_name": "mymaster", "sentinel_kwargs": {"password": SPW}}
    old = Settings()
    old.update_from_object({"BROKER_TRANSPORT_OPTIONS": options})
    django = Settings()
    django.update_from_object({"CELERY_BROKER_TRANSPORT_OPTIONS": options}, namespace="CELERY")
    assert old.broker_options == django.broker_options == options
    assert SPW not in repr(old)


def test_wait_options() -> None:
    assert parse("redis+sentinel://h/m?wait_replicas=0").wait_replicas == 0
    assert parse("redis+sentinel://h/m", wait_replicas=2, wait_timeout=0.5).wait_timeout == 0.5
    assert parse("redis://h/0").wait_replicas == 0
    assert parse("redis://h/0?wait_replicas=1").wait_replicas == 1


@pytest.mark.parametrize(
    ("url", "options", "says"),
    [
        ("redis+sentinel://h1:26379", {}, "names no master"),
        ("redis+sentinel://h1:26379/", {}, "names no master"),
        ("sentinel://h1:26379;sentinel://h2:26379", {}, "master_name"),
        ("redis+sentinel:///mymaster", {}, "names no sentinel"),
        ("redis+sentinel://h1:26379,/mymaster", {}, "empty sentinel host"),
        ("redis+sentinel://h1:notaport/mymaster", {}, "bad port 'notaport'"),
        ("redis+sentinel://h1:0/mymaster", {}, "bad port '0'"),
        ("redis+sentinel://h1:70000/mymaster", {}, "bad port '70000'"),
        ("redis+sentinel://h1:/mymaster", {}, "bad port ''"),
        ("redis+sentinel://[::1/mymaster", {}, "bad sentinel address"),
        ("redis+sentinel://h1/mymaster/x", {}, "database number"),
        ("redis+sentinel://h1/mymaster/0/extra", {}, "/<master name>[/<db>]"),
        ("redis+sentinel://h1/a", {"master_name": "b"}, "names master 'a'"),
        ("sentinel://h1/1;sentinel://h2/2", {"master_name": "m"}, "different databases"),
        ("sentinel://h1;redis://h2", {"master_name": "m"}, "not sentinel://"),
        ("redis+sentinel://h1/m?ssl_ca_certs=/x", {}, "TLS behind Redis Sentinel"),
        ("rediss+sentinel://h1/m", {}, "TLS behind Redis Sentinel"),
        ("redis+sentinel://h1/m", {"sentinel_kwargs": {"socket_timeout": 1}}, "socket_timeout"),
        ("redis+sentinel://h1/m", {"sentinel_kwargs": "x"}, "must be a dict"),
        ("redis+sentinel://h1/m?wait_replicas=-1", {}, "wait_replicas"),
        ("redis+sentinel://h1/m?mastername=x", {}, "did you mean 'master_name'"),
        ("redis://h1/0?master_name=m", {}, "is a Redis Sentinel option"),
    ],
)
def test_bad_urls(url: str, options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse(url, **options)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        (f"redis+sentinel://:{PW}@h1:26379,h2:26379/mymaster/0", {}),
        (f"redis+sentinel://user:{PW}@h1:26379,h2:26379/mymaster/0", {}),
        (f"redis+sentinel://h1,h2/mymaster/0?sentinel_password={SPW}&password={PW}", {}),
        (f"sentinel://:{PW}@h1:26379;sentinel://:{PW}@h2:26379", {"master_name": "m"}),
        ("sentinel://h1;sentinel://h2", {"master_name": "m", "sentinel_kwargs": {"password": SPW}}),
        ("redis+sentinel://h1/m", {"sentinel_password": SPW, "password": PW}),
    ],
)
def test_passwords_never_shown(url: str, options: dict[str, Any]) -> None:
    broker = RedisBroker(url, **options)
    backend = RedisBackend(url, **options)
    settings = broker.settings
    shown = [repr(broker), repr(backend), repr(settings), settings.redacted, redact(url)]
    known = " ".join(x for x in (PW, SPW) if x in url or x in str(options))
    shown.append(settings.describe(RuntimeError(f"boom {known}")))
    for text in shown:
        assert PW not in text and SPW not in text, text
    assert "h1" in settings.redacted


def test_redact_keeps_hosts() -> None:
    assert redact(f"redis+sentinel://:{PW}@h1:26379,h2:26380/m/0") == (
        "redis+sentinel://:***@h1:26379,h2:26380/m/0"
    )
    assert redact(f"sentinel://:{PW}@h1:26379/0;sentinel://:{PW}@h2:26379/0") == (
        "sentinel://:***@h1:26379/0;sentinel://:***@h2:26379/0"
    )


def test_schemes_build_redis_classes() -> None:
    url = "redis+sentinel://h1:26379/mymaster/0"
    assert isinstance(make_broker(url, {}), RedisBroker)
    assert isinstance(make_backend(url, url), RedisBackend)
    assert isinstance(make_backend("sentinel://h1?master_name=m", ""), RedisBackend)


async def test_rabbitmq_dedupe_url_may_be_a_sentinel_url() -> None:
    from aqueue.brokers.rabbitmq.dedupe import RedisDedupe

    dedupe = RedisDedupe(f"redis+sentinel://:{PW}@h1:26379,h2/mymaster/1", "p", 1.0)
    await dedupe.close()


def test_beat_store_takes_a_sentinel_backend() -> None:
    from aqueue.beat.store import store_for

    app = App("b", broker="memory://", backend="redis+sentinel://h1:26379/mymaster/0")
    assert type(store_for(app)).__name__ == "RedisBeatStore"
