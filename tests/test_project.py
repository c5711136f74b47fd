"""Project layout and configuration as Celery users have them (issue 14): ``-A proj`` finds
``proj/celery.py``'s app, ``config_from_object``, ``autodiscover_tasks``, tasks in
``__main__``, one-line errors for bad settings."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aqueue import App, ConfigurationError
from aqueue.runner import CLIError, load_app

ROOT = Path(__file__).parents[1]


def write(base: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A fresh, importable package name in a temporary directory on sys.path."""
    name = f"proj_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, name
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


def test_dash_a_finds_the_app_in_celerys_standard_layout(project: tuple[Path, str]) -> None:
    base, name = project
    write(
        base,
        {
            f"{name}/__init__.py": "from .celery import app as celery_app\n",
            f"{name}/celery.py": f"""
                from aqueue import App
                app = App("{name}", broker="memory://{name}", include=["{name}.tasks"])
            """,
            f"{name}/tasks.py": """
                from .celery import app

                @app.task
                async def add(x: int, y: int) -> int:
                    return x + y
            """,
        },
    )
    app = load_app(name)
    assert app.name == name and app is sys.modules[f"{name}.celery"].app
    app.import_includes()
    assert f"{name}.tasks.add" in app.tasks


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"__init__.py": "from aqueue import App\napp = App('a')\ncelery = App('c')\n"}, "a"),
        ({"__init__.py": "from aqueue import App\ncelery = App('c')\nother = App('o')\n"}, "c"),
        ({"__init__.py": "", "celery.py": "from aqueue import App\ncelery = App('sub')\n"}, "sub"),
        ({"__init__.py": "from aqueue import App\nmine = App('only')\n"}, "only"),
    ],
    ids=["app-attribute", "celery-attribute", "celery-submodule", "the-one-app"],
)
def test_lookup_order(project: tuple[Path, str], files: dict[str, str], expected: str) -> None:
    base, name = project
    write(base, {f"{name}/{k}": v for k, v in files.items()})
    assert load_app(name).name == expected


def test_lookup_failures_name_what_was_tried(project: tuple[Path, str]) -> None:
    base, name = project
    write(base, {f"{name}/__init__.py": "from aqueue import App\na = App('a')\nb = App('b')\n"})
    with pytest.raises(CLIError, match="2 App objects"):
        load_app(name)
    write(base, {f"{name}_empty.py": "x = 1\n"})
    with pytest.raises(CLIError, match=r"looked for .*\.app, .*\.celery"):
        load_app(f"{name}_empty")


# -- config_from_object ---------------------------------------------------------------------


def test_config_from_a_module_by_name_with_celerys_names(project: tuple[Path, str]) -> None:
    base, name = project
    write(
        base,
        {
            f"{name}config.py": """
                import os
                from datetime import timedelta

                broker_url = "memory://cfg"
                result_backend = "memory://cfg"
                task_serializer = "json"
                result_expires = 3600
                imports = ["proj.tasks"]
                accept_content = ["json"]
                CELERYD_CONCURRENCY = 7
                CONSTANT = "not a setting"
                def helper():
                    return 1
            """
        },
    )
    app = App("cfg")
    applied = app.config_from_object(f"{name}config")
    assert app.broker_url == "memory://cfg" and app.conf.task_serializer == "json"
    assert app.conf.result_expires == 3600.0 and app.conf.include == ["proj.tasks"]
    assert app.conf.worker_concurrency == 7
    assert "accept_content" not in applied and "worker_concurrency" in applied


def test_config_from_an_object_a_class_and_a_mapping() -> None:
    class Config:
        task_acks_late = False
        max_deliveries = 3

    app = App("cfg", broker="memory://cfg")
    app.config_from_object(Config)
    assert (app.conf.task_acks_late, app.conf.max_deliveries) == (False, 3)
    app.config_from_object({"lease_seconds": 12})
    assert app.conf.lease_seconds == 12.0
    settings = types.SimpleNamespace(CELERY_TASK_TRACK_STARTED=True, DEBUG=True, SECRET_KEY="x")
    app.config_from_object(settings, namespace="CELERY")  # Django's settings
    assert app.conf.task_track_started is True


def test_config_from_an_object_reads_only_the_names_it_takes() -> None:
    """Django's settings raise for some names: an empty ``SECRET_KEY``, and under
    ``override_settings`` names ``dir()`` lists without a value (``gettext_noop``)."""

    class Settings:
        CELERY_TASK_ACKS_LATE = True

        def __dir__(self) -> list[str]:
            return ["CELERY_TASK_ACKS_LATE", "SECRET_KEY", "gettext_noop"]

        def __getattr__(self, name: str) -> object:
            if name == "SECRET_KEY":
                raise RuntimeError("The SECRET_KEY setting must not be empty.")
            raise AttributeError(name)

    app = App("cfg", broker="memory://cfg")
    assert app.config_from_object(Settings(), namespace="CELERY") == ["task_acks_late"]
    assert app.config_from_object(Settings()) == []  # gettext_noop: listed, no value


def test_constructor_and_environment_win_over_a_config_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AQUEUE_MAX_DELIVERIES", "9")
    app = App("cfg", broker="memory://given", lease_seconds=4)
    applied = app.config_from_object(
        {
            "broker_url": "memory://file",
            "lease_seconds": 99,
            "max_deliveries": 2,
            "chord_timeout": 5,
        }
    )
    assert app.broker_url == "memory://given" and app.conf.lease_seconds == 4.0
    assert app.conf.max_deliveries == 9 and app.conf.chord_timeout == 5.0
    assert applied == ["chord_timeout"]


def test_config_errors_name_the_setting(caplog: pytest.LogCaptureFixture) -> None:
    app = App("cfg", broker="memory://cfg")
    with pytest.raises(ConfigurationError, match=r"'brokr_url'; did you mean broker_url"):
        app.config_from_object({"brokr_url": "memory://x", "lease_seconds": 3})
    assert app.conf.lease_seconds == 30.0  # nothing was set
    with pytest.raises(ConfigurationError, match=r"result_expires must be a number of seconds"):
        app.config_from_object({"result_expires": "soon"})
    with pytest.raises(ConfigurationError, match="no eager mode"):
        app.config_from_object({"task_always_eager": True})
    with pytest.raises(ConfigurationError, match="cannot import"):
        app.config_from_object("no_such_config_module_xyz")
    assert app.config_from_object("no_such_config_module_xyz", silent=True) == []
    with caplog.at_level(logging.INFO, logger="aqueue.app"):
        app.config_from_object({"beat_scheduler": "django_celery_beat.schedulers:Scheduler"})
    assert "beat_scheduler is not needed" in caplog.text
    app.config_from_object({"worker_enable_remote_control": False})  # a real setting now
    assert app.conf.worker_enable_remote_control is False
    # Celery's event settings are real now; those of its event queues are not needed
    with caplog.at_level(logging.INFO, logger="aqueue.app"):
        app.config_from_object({"worker_send_task_events": True, "event_queue_ttl": 5.0})
    assert app.conf.worker_send_task_events is True
    assert "event_queue_ttl is not needed" in caplog.text


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("AQUEUE_RESULT_EXPIRES", "abc", "result_expires must be a number of seconds"),
        ("AQUEUE_MAX_DELIVERIES", "many", "max_deliveries must be a whole number"),
        ("AQUEUE_TASK_ACKS_LATE", "perhaps", "task_acks_late must be True or False"),
    ],
)
def test_a_bad_environment_value_is_one_line(
    variable: str, value: str, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as env:
        env.setenv(variable, value)
        with pytest.raises(ConfigurationError, match=f"{variable}='{value}'.*{needle}"):
            App("env", broker="memory://env")
    proc = subprocess.run(
        [sys.executable, "-m", "aqueue.cli", "worker", "aqueue:App", "--burst"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, variable: value},
    )
    assert proc.returncode == 2 and needle in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# -- autodiscovery and names --------------------------------------------------------------


def test_autodiscover_tasks_imports_each_packages_tasks(project: tuple[Path, str]) -> None:
    base, name = project
    write(
        base,
        {
            f"{name}/__init__.py": "",
            f"{name}/orders/__init__.py": "",
            f"{name}/orders/tasks.py": f"""
                from {name}.app import app

                @app.task
                async def ship(order: int) -> int:
                    return order
            """,
            f"{name}/billing/__init__.py": "",  # no tasks module: skipped
            f"{name}/app.py": "from aqueue import App\napp = App('proj', broker='memory://ad')\n",
        },
    )
    app = load_app(f"{name}.app:app")
    app.autodiscover_tasks([f"{name}.orders", f"{name}.billing"])
    app.autodiscover_tasks(lambda: [f"{name}.orders"])  # Django: a callable
    assert f"{name}.orders.tasks.ship" not in app.tasks  # imported when the worker starts
    app.import_includes()
    assert f"{name}.orders.tasks.ship" in app.tasks
    app.autodiscover_tasks([f"{name}.nothere"])
    with pytest.raises(ModuleNotFoundError):
        app.import_includes()  # a package that does not exist is a mistake, not skipped


def test_tasks_in_main_are_named_after_the_app(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            from aqueue import App
            app = App("proj", broker="memory://main")

            @app.task
            async def add(x: int, y: int) -> int:
                return x + y

            print(add.name)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "proj.add"
