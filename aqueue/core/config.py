"""Typed settings: constructor keywords, ``app.conf.update()`` and ``AQUEUE_*`` variables."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any, get_type_hints

from .errors import ConfigurationError
from .serialization import check_serializer
from .urls import redact

_ENV_PREFIX = "AQUEUE_"


@dataclasses.dataclass(slots=True)
class Settings:
    """Every setting aqueue reads. Names follow Celery's where Celery has one.

    Precedence: constructor / ``update()`` arguments over ``AQUEUE_<NAME>`` environment
    variables over these defaults.
    """

    #: where tasks are queued; ``None`` means the embedded SQLite file ``aqueue.db``
    broker_url: str | None = None
    #: where results are stored; ``None`` means the broker's own store
    result_backend: str | None = None
    #: extra keyword options passed to the broker class (e.g. ``{"prefix": "myapp"}``)
    broker_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    task_default_queue: str = "default"
    #: seconds a result is kept; ``None`` keeps it forever
    result_expires: float | None = 86400.0
    #: also store each task's arguments in its result record (``result.args``, ``.kwargs``)
    result_extended: bool = False
    #: store a STARTED state when a task begins
    task_track_started: bool = False
    #: ack after the task finished (at-least-once); False acks on receipt (at-most-once)
    task_acks_late: bool = True
    #: messages a worker holds at once, running or waiting; 0 means ``concurrency``
    worker_prefetch: int = 0
    worker_concurrency: int = 100
    #: seconds a claim lasts without renewal; renewed every third of it while running
    lease_seconds: float = 30.0
    #: claims of one message (counting crashes) before it is dead-lettered
    max_deliveries: int = 5
    #: seconds a stopping worker waits for running tasks before handing them back
    worker_shutdown_timeout: float = 30.0
    task_serializer: str = "msgpack"
    #: largest encoded message accepted by producers and workers
    max_message_bytes: int = 10 * 1024 * 1024
    #: modules the worker imports at start (Celery's ``include``)
    include: list[str] = dataclasses.field(default_factory=list)
    #: seconds a publish may take before it raises (in a bulk publish: each chunk)
    publish_timeout: float = 10.0
    #: messages per broker call of a bulk publish (``delay_many``, ``send_many``, ...)
    publish_chunk_size: int = 5000
    #: default hard time limit of every task, seconds (``None``: none)
    task_time_limit: float | None = None
    #: default soft time limit of every task, seconds (``None``: none)
    task_soft_time_limit: float | None = None
    #: seconds after which a chord with an unfinished member fails (it never hangs)
    chord_timeout: float = 86400.0
    #: processes for ``offload="process"`` tasks and ``aqueue.offload()`` (0: CPU count)
    worker_process_pool_size: int = 0
    #: replace an offload process after this many calls (0: never)
    worker_max_tasks_per_child: int = 0
    #: replace an offload process whose RSS passed this many KiB after a call (0: never)
    worker_max_memory_per_child: int = 0

    def update(self, values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Set several settings, validating names and types."""
        merged = {**(values or {}), **kwargs}
        for name, value in merged.items():
            self._set(name, value)

    def _set(self, name: str, value: Any) -> None:
        if name not in _FIELDS:
            raise ConfigurationError(f"unknown setting {name!r}; known: {', '.join(_FIELDS)}")
        setattr(self, name, _coerce(name, value))

    def load_environment(self, environ: Mapping[str, str] | None = None) -> None:
        """Apply ``AQUEUE_<NAME>`` variables (e.g. ``AQUEUE_BROKER_URL``)."""
        env = os.environ if environ is None else environ
        for name in _FIELDS:
            raw = env.get(_ENV_PREFIX + name.upper())
            if raw is not None:
                self._set(name, _from_text(name, raw))

    def as_dict(self) -> dict[str, Any]:
        """Settings as a dict, URLs redacted and secret options hidden (safe to print)."""
        out = dataclasses.asdict(self)
        for key in ("broker_url", "result_backend"):
            if out[key]:
                out[key] = redact(out[key])
        out["broker_options"] = {
            k: "***" if _SECRET_NAME.search(k) else v for k, v in self.broker_options.items()
        }
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"Settings({fields})"


_FIELDS: dict[str, Any] = get_type_hints(Settings)
#: option names whose values are never printed
_SECRET_NAME = re.compile(r"pass|secret|token|key|cert|credential", re.IGNORECASE)


def _from_text(name: str, raw: str) -> Any:
    hint = _FIELDS[name]
    if hint in (bool,):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if hint in (int,):
        return int(raw)
    if hint in (float, float | None):
        return None if raw.strip().lower() in ("", "none") else float(raw)
    if hint == list[str]:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if hint == dict[str, Any]:
        raise ConfigurationError(f"{name} cannot be set from the environment")
    return raw


def _coerce(name: str, value: Any) -> Any:
    hint = _FIELDS[name]
    bad = ConfigurationError(f"setting {name} must be {hint}, not {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad
    elif hint in (float, float | None):
        if value is None and hint is not float:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise bad
        return float(value)
    elif hint == list[str]:
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise bad
        return list(value)
    elif hint == dict[str, Any]:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    elif hint in (str, str | None):
        if value is None and hint is not str:
            return None
        if not isinstance(value, str):
            raise bad
        if not value.strip() and name in ("broker_url", "result_backend"):
            raise ConfigurationError(
                f"setting {name} is empty: give a URL, or leave it unset "
                + ("for the embedded SQLite store" if name == "broker_url" else "for the default")
            )
    if name == "task_serializer":
        check_serializer(value)
    if (
        name in ("lease_seconds", "worker_concurrency", "max_deliveries", "publish_chunk_size")
        and not value
    ):
        raise ConfigurationError(f"setting {name} must be positive")
    return value
