"""Settings: clear errors for empty URLs, and no secret in any repr (issue 11, 4 / 7 / 9)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aqueue import App, ConfigurationError
from aqueue.core.config import Settings

from .conftest import RABBIT_HOST, RABBIT_PORT, REDIS_HOST, REDIS_PORT, require_service


@pytest.mark.parametrize("url", ["", "   "])
def test_an_empty_broker_url_is_an_error_not_the_embedded_store(url: str) -> None:
    with pytest.raises(ConfigurationError, match="broker_url is empty"):
        App("x", broker=url)
    with pytest.raises(ConfigurationError, match="result_backend is empty"):
        App("x", broker="memory://x", backend=url)


def test_an_empty_broker_url_in_the_environment_is_an_error() -> None:
    settings = Settings()
    with pytest.raises(ConfigurationError, match="broker_url is empty"):
        settings.load_environment({"AQUEUE_BROKER_URL": ""})


def test_no_password_in_the_settings_repr() -> None:
    app = App(
        "x",
        broker="redis://:hunter2@127.0.0.1:6379/0",
        backend="redis://user:hunter3@127.0.0.1:6379/1",
        broker_options={"password": "hunter4", "ssl_keyfile": "/k", "prefix": "p"},
    )
    for text in (repr(app.conf), str(app.conf), repr(app.conf.as_dict()), repr(app)):
        assert "hunter" not in text, text
    assert "redis://:***@127.0.0.1:6379/0" in repr(app.conf)
    assert "'prefix': 'p'" in repr(app.conf)


def _worker_output(tmp_path: Path, code: str) -> str:
    (tmp_path / "wapp.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "-m", "aqueue.cli", "worker", "wapp:app", "--burst", "-l", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{Path(__file__).parents[1]}"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr + proc.stdout


@pytest.mark.slow
def test_the_default_store_warning_only_when_no_broker_was_given(tmp_path: Path) -> None:
    chosen = _worker_output(
        tmp_path, f"from aqueue import App\napp = App('w', broker='sqlite:///{tmp_path}/x.db')\n"
    )
    assert "embedded SQLite" not in chosen
    default = _worker_output(tmp_path, "from aqueue import App\napp = App('w')\n")
    assert "no broker given: using the embedded SQLite store" in default


@pytest.mark.rabbitmq
@pytest.mark.parametrize(
    ("broker", "backend"),
    [
        ("amqp://", None),
        ("amqp://guest@localhost//", "rpc"),
        ("pyamqp://guest@localhost//", "rpc://"),
        ("pyamqp://", None),
        ("amqp", "rpc"),
    ],
)
async def test_the_seeds_amqp_spellings_reach_the_local_rabbitmq(
    broker: str, backend: str | None
) -> None:
    """Celery's defaults: localhost, guest/guest, the default virtual host; pyamqp:// is
    amqp://; backend="rpc" is rpc://."""
    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    app = App("seeds", broker=broker, backend=backend)
    async with app:
        assert app.backend_url == "rpc://"
        broker_obj = app.broker
        assert "amqp://guest:***@localhost" in repr(broker_obj)


@pytest.mark.redis
async def test_bare_scheme_names_are_urls() -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    app = App("bare", broker="redis", backend="redis")
    assert (app.broker_url, app.backend_url) == ("redis://", "redis://")
    async with app:
        assert app.backend is not None


def test_a_celery_configs_transport_options_aqueue_does_not_need_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a Celery project's `broker_transport_options = {"visibility_timeout": 3600}` kept
    # aqueue from starting (the Redis broker refused the unknown option): it is dropped
    # with a line saying what aqueue does instead; what aqueue uses is passed on
    from aqueue.core.urls import make_broker

    conf = Settings()
    with caplog.at_level(logging.INFO, logger="aqueue"):
        conf.update_from_object(
            {"BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": 3600, "socket_timeout": 7}}
        )
    assert conf.broker_options == {"socket_timeout": 7}
    assert "visibility_timeout" in caplog.text and "renewed while it runs" in caplog.text
    broker = make_broker("redis://127.0.0.1:6379/0", conf.broker_options)  # not refused
    assert broker is not None
    with pytest.raises(ConfigurationError, match="global_keyprefix"):
        make_broker("redis://127.0.0.1:6379/0", {"global_keyprefix": "x"})  # still refused
