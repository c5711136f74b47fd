"""Typed settings: constructor keywords, ``app.conf.update()`` and ``AQUEUE_*`` variables."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any, get_type_hints

from .errors import ConfigurationError
from .message import MAX_PRIORITY
from .routing import EXCHANGE_TYPES, ROUTING_SETTINGS, check_queues, check_routes
from .serialization import check_serializer
from .signing import Keyring, check_key_id, parse_keys
from .urls import redact, redact_options

_ENV_PREFIX = "AQUEUE_"

log = logging.getLogger("aqueue.app")


@dataclasses.dataclass(slots=True)
class Settings:
    """Every setting aqueue reads (docs/configuration.md). Names follow Celery's.

    Precedence: constructor / ``update()`` arguments over ``AQUEUE_<NAME>`` environment
    variables over a config object (``app.config_from_object``) over these defaults.
    """

    #: where tasks are queued; ``None`` means the embedded SQLite file ``aqueue.db``
    broker_url: str | None = None
    #: where results are stored; ``None`` means the broker's own store
    result_backend: str | None = None
    #: extra keyword options passed to the broker class (e.g. ``{"prefix": "myapp"}``)
    broker_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the queue of tasks that no call option, route or task option sends elsewhere
    task_default_queue: str = "celery"
    #: where tasks go by name: a dict (names, globs, ``re.compile`` keys), router functions,
    #: their dotted paths, or a list of those (docs/routing.md)
    task_routes: Any = None
    #: the queues, as ``Queue(name, exchange, routing_key, ...)``; ``None``: the default one
    task_queues: Any = None
    #: a queue named nowhere in ``task_queues`` is created on use; False: refused
    task_create_missing_queues: bool = True
    #: the exchange of declared queues that name none (``None``: the default queue's name,
    #: used only when this or ``task_default_exchange_type`` is set)
    task_default_exchange: str | None = None
    #: ``direct``, ``topic`` or ``fanout``
    task_default_exchange_type: str = "direct"
    #: the binding key of declared queues that name none, and the routing key of messages
    #: to an exchange that neither the call nor the route gives one (``None``: the queue's
    #: name)
    task_default_routing_key: str | None = None
    #: ``x-max-priority`` of every queue that sets none (RabbitMQ: such queues are classic)
    task_queue_max_priority: int | None = None
    #: the priority of messages whose call, route and task give none (0..9, higher first)
    task_default_priority: int = 0
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
    #: seconds between a worker's heartbeats in the broker's worker registry
    worker_heartbeat_interval: float = 1.0
    #: seconds without a heartbeat after which a worker is lost and its tasks handed back
    worker_lost_timeout: float = 3.0
    #: workers read remote-control commands (``aqueue inspect``, ``aqueue control``,
    #: ``app.control``) from the broker's control topic; False: they do not listen
    worker_enable_remote_control: bool = True
    #: ``inspect active`` / ``reserved`` / ``scheduled`` show tasks' arguments (reprs,
    #: truncated); off by default: arguments may hold personal data
    worker_inspect_arguments: bool = False
    #: claims of one message (counting crashes) before it is dead-lettered
    max_deliveries: int = 5
    #: seconds a stopping worker waits for running tasks before handing them back
    worker_shutdown_timeout: float = 30.0
    task_serializer: str = "msgpack"
    #: largest encoded message accepted by producers and workers
    max_message_bytes: int = 10 * 1024 * 1024
    #: largest encoded result record a worker stores (a larger result fails its task,
    #: ``result_too_large``) and a client reads
    max_result_bytes: int = 10 * 1024 * 1024
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
    #: replace a process that runs tasks after this many (0: never): each offload process,
    #: and under ``aqueue worker`` the worker process itself (docs/cli.md, "Recycling")
    worker_max_tasks_per_child: int = 0
    #: replace a process that runs tasks once its resident memory passes this many KiB
    #: (0: never): offload processes after a call, the ``aqueue worker`` process itself
    worker_max_memory_per_child: int = 0
    #: messages a worker holds per concurrency slot when ``worker_prefetch`` is 0
    worker_prefetch_multiplier: int = 1
    #: log format of the ``aqueue worker`` command (records logged outside a task)
    worker_log_format: str = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
    #: log format of records logged inside a task (``task_name``, ``task_id`` available)
    worker_task_log_format: str = (
        "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
    )
    #: periodic tasks: entry name -> ``{"task": ..., "schedule": ..., ...}``
    #: (docs/periodic-tasks.md)
    beat_schedule: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the zone cron schedules read (an IANA name such as ``Europe/Berlin``); ``None``: UTC
    timezone: str | None = None
    #: most seconds the scheduler waits before looking at the stored entries again
    beat_max_loop_interval: float = 5.0
    #: seconds the leading scheduler's lease lasts unrenewed (renewed every third of it)
    beat_lease_seconds: float = 5.0
    #: cron entries without a misfire policy skip slots later than this (Celery's); ``None``:
    #: they run once (the misfire policy ``once``)
    beat_cron_starting_deadline: float | None = None
    #: workers send monitoring events (``-E``; docs/fleet.md, "Events")
    worker_send_task_events: bool = False
    #: producers send a ``task-sent`` event for each task they send
    task_send_sent_event: bool = False
    #: events kept in the broker's stream for monitors that start late (its cap)
    event_max_kept: int = 10_000
    #: put arguments and results in events (their reprs, cut at 1024 characters); off:
    #: events carry none, as logs carry none
    event_include_arguments: bool = False
    #: key id -> secret: sign every message and result record with HMAC-SHA256 and verify
    #: them (docs/security.md); in the environment ``kid:secret,kid2:secret2``. Empty: off
    signing_keys: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the id of the key that signs; ``None``: the first of ``signing_keys``
    signing_key_id: str | None = None
    #: with keys set, refuse what is not signed; False only while a fleet moves to signing
    signing_required: bool = True
    #: seconds after signing (or after its ETA) a message is refused as ``expired``;
    #: ``None``: never. Keep it at most ``result_expires`` (docs/security.md, "Replays")
    signing_max_age: float | None = 86400.0

    #: names set by the constructor, ``update()`` or the environment: a config object read
    #: later (``config_from_object``) does not override them
    explicit: set[str] = dataclasses.field(default_factory=set, repr=False, compare=False)
    #: not a setting: the compiled routing (:func:`aqueue.core.routing.router_of`), dropped
    #: whenever a routing setting changes
    router: Any = dataclasses.field(default=None, repr=False, compare=False)
    #: not a setting: the keyring built from the signing settings (:func:`keyring_of`),
    #: dropped whenever one of them changes
    keyring: Any = dataclasses.field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        # app.conf.task_routes = {...} (Celery's spelling) must recompile the routing too
        object.__setattr__(self, name, value)
        if name in ROUTING_SETTINGS:
            object.__setattr__(self, "router", None)
        elif name in SIGNING_SETTINGS:
            object.__setattr__(self, "keyring", None)

    def update(self, values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Set several settings, validating names and types."""
        merged = {**(values or {}), **kwargs}
        for name, value in merged.items():
            self._set(name, value)
            self.explicit.add(CELERY_RENAMED.get(name, name))

    def _set(self, name: str, value: Any) -> None:
        if name == "broker_transport_options" and isinstance(value, Mapping):
            value = _without_kombu_only(value)
        name = CELERY_RENAMED.get(name, name)
        if name not in _FIELDS:
            if name in CELERY_NOT_NEEDED:  # a Celery setting aqueue needs no counterpart for
                log.info("setting %s is not needed in aqueue: %s", name, CELERY_NOT_NEEDED[name])
                return
            if name in CELERY_REFUSED:
                raise ConfigurationError(f"setting {name}: {CELERY_REFUSED[name]}")
            raise ConfigurationError(unknown_setting(name))
        setattr(self, name, _coerce(name, value))

    def update_from_object(self, source: Any, *, namespace: str | None = None) -> list[str]:
        """Set every setting ``source`` names, as Celery's ``config_from_object`` reads it.

        ``source`` is a module, a class, any object or a mapping. Without ``namespace``
        its lowercase names are read (``broker_url``, ``task_serializer``, ...) and Celery's
        old uppercase names (``BROKER_URL``, ``CELERY_RESULT_BACKEND``, ...); with
        ``namespace="CELERY"`` only ``CELERY_``-prefixed names (Django's settings:
        ``CELERY_BROKER_URL`` is ``broker_url``). Modules, classes and functions among
        its attributes are skipped, and so are settings given to the constructor, to
        ``update()`` or in the environment (they win). Returns the names it set.

        Raises:
            ConfigurationError: a name that is no setting (with the nearest one), or a value
                of the wrong type; nothing is set then.
        """

        def setting_name(key: str) -> str | None:
            if namespace:
                head = f"{namespace}_"
                return key[len(head) :].lower() if key.startswith(head) else None
            if key in CELERY_OLD_NAMES:
                return CELERY_OLD_NAMES[key]
            return key if key.islower() and not key.startswith("_") else None

        items = source.items() if isinstance(source, Mapping) else _attributes(source, setting_name)
        found: dict[str, Any] = {}
        for key, value in items:
            name = setting_name(key)
            if name is not None:
                found[name] = value
        staged = Settings()  # every value checked before any is set
        for name, value in found.items():
            staged._set(name, value)
        applied: list[str] = []
        for name in found:
            real = CELERY_RENAMED.get(name, name)
            if real in _FIELDS and real not in self.explicit:
                setattr(self, real, getattr(staged, real))
                applied.append(real)
        return sorted(applied)

    def load_environment(self, environ: Mapping[str, str] | None = None) -> None:
        """Apply ``AQUEUE_<NAME>`` variables (e.g. ``AQUEUE_BROKER_URL``)."""
        env = os.environ if environ is None else environ
        for name in _FIELDS:
            variable = _ENV_PREFIX + name.upper()
            raw = env.get(variable)
            if raw is None:
                continue
            try:
                self._set(name, _from_text(name, raw))
            except ConfigurationError as exc:
                shown = "***" if name == "signing_keys" else repr(raw)  # secrets stay out
                raise ConfigurationError(f"{variable}={shown}: {exc}") from None
            self.explicit.add(name)

    def as_dict(self) -> dict[str, Any]:
        """Settings as a dict, URLs redacted and secret options hidden (safe to print)."""
        out = {name: _copy(getattr(self, name)) for name in _FIELDS}
        for key in ("broker_url", "result_backend"):
            if out[key]:
                out[key] = redact(out[key])
        out["signing_keys"] = dict.fromkeys(self.signing_keys, "***")
        out["broker_options"] = redact_options(self.broker_options)
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"Settings({fields})"


_FIELDS: dict[str, Any] = {
    name: hint
    for name, hint in get_type_hints(Settings).items()
    if name not in ("explicit", "router", "keyring")
}
SIGNING_SETTINGS = frozenset(
    ("signing_keys", "signing_key_id", "signing_required", "signing_max_age")
)


def keyring_of(conf: Settings) -> Keyring | None:
    """The keyring the signing settings describe (built once), or ``None``: signing off.

    Raises:
        ConfigurationError: a secret too short, ``signing_key_id`` not among the keys.
    """
    ring = conf.keyring
    if ring is None:
        ring = (
            Keyring(
                conf.signing_keys,
                signing_key=conf.signing_key_id,
                required=conf.signing_required,
                max_age=conf.signing_max_age,
            )
            if conf.signing_keys
            else False
        )
        object.__setattr__(conf, "keyring", ring)
    return ring or None


def _copy(value: Any) -> Any:
    """A shallow copy of a list or dict value (the caller may change it), else the value."""
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _from_text(name: str, raw: str) -> Any:
    """An environment variable's text as the setting's type."""
    hint = _FIELDS[name]
    text = raw.strip().lower()
    if hint in (bool,):
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigurationError(f"setting {name} must be {_describe(hint)}")
    try:
        if hint in (int,):
            return int(raw)
        if hint == int | None:
            return None if text in ("", "none") else int(raw)
        if hint in (float, float | None):
            return None if text in ("", "none") else float(raw)
    except ValueError:
        raise ConfigurationError(f"setting {name} must be {_describe(hint)}") from None
    if hint == list[str]:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if name == "signing_keys":
        return parse_keys(raw)
    if hint == dict[str, Any] or name == "task_queues":
        raise ConfigurationError(f"setting {name} cannot be set from the environment")
    if name == "task_routes":  # dotted paths to router functions
        paths = [part.strip() for part in raw.split(",") if part.strip()]
        return paths[0] if len(paths) == 1 else paths
    return raw


def _describe(hint: Any) -> str:
    """A type hint in words, for error messages."""
    return _HINT_WORDS.get(hint, str(hint))


_HINT_WORDS: dict[Any, str] = {
    bool: "True or False (in the environment: 1/0, true/false, yes/no, on/off)",
    int: "a whole number, 0 or more",
    int | None: "a whole number, 0 or more, or None",
    float: "a number of seconds, 0 or more",
    float | None: "a number of seconds, 0 or more, or None",
    str: "a string",
    str | None: "a string, or None",
    list[str]: "a list of strings (in the environment: comma-separated)",
    dict[str, Any]: "a dict",
}


def unknown_setting(name: str) -> str:
    """The error text for a name that is no setting, naming the nearest ones."""
    known = sorted({*_FIELDS, *CELERY_NOT_NEEDED, *CELERY_RENAMED})
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return f"unknown setting {name!r}{hint} (every setting: docs/configuration.md)"


def _attributes(source: Any, wanted: Callable[[str], str | None]) -> list[tuple[str, Any]]:
    """A config object's settings-like attributes: no modules, classes or functions.

    Only the names ``wanted`` accepts are read (Django's settings raise for some others:
    ``SECRET_KEY`` when empty, and under ``override_settings`` names ``dir()`` lists that
    have no value), and a name ``dir()`` lists without a value is skipped.
    """
    out: list[tuple[str, Any]] = []
    for key in dir(source):
        if key.startswith("__") or wanted(key) is None:
            continue
        try:
            value = getattr(source, key)
        except AttributeError:
            continue
        if inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value):
            continue
        out.append((key, value))
    return out


#: kombu transport options (``broker_transport_options``) aqueue has no use for: a Celery
#: configuration keeps working, each dropped with an INFO line saying what aqueue does
KOMBU_ONLY_OPTIONS: dict[str, str] = {
    "visibility_timeout": "a task's lease (lease_seconds, 30 s) is renewed while it runs",
    "unacked_restore_limit": "a dead worker's tasks come back within seconds of its heartbeat",
    "fanout_prefix": "topics (control, events) have keys of their own",
    "fanout_patterns": "topics (control, events) have keys of their own",
    "priority_steps": "priorities 0-9 are kept exactly, on every broker",
    "sep": "aqueue's key layout has no separator to set",
    "queue_order_strategy": "a worker reads its queues in the order given (-Q)",
    "polling_interval": "idle workers wait on the broker, they do not poll",
    "max_retries": "each call has one deadline (operation_timeout)",
    "interval_start": "each call has one deadline (operation_timeout)",
    "interval_step": "each call has one deadline (operation_timeout)",
    "interval_max": "each call has one deadline (operation_timeout)",
    "confirm_publish": "publishes on RabbitMQ are always confirmed",
}


def _without_kombu_only(options: Mapping[str, Any]) -> dict[str, Any]:
    kept = {}
    for key, value in options.items():
        if key in KOMBU_ONLY_OPTIONS:
            log.info(
                "broker_transport_options[%r] is not needed in aqueue: %s",
                key,
                KOMBU_ONLY_OPTIONS[key],
            )
        else:
            kept[key] = value
    return kept


#: Celery settings with another name in aqueue
CELERY_RENAMED: dict[str, str] = {
    "imports": "include",
    # kombu's transport options: what aqueue's broker accepts (master_name, sentinel_kwargs,
    # ...) works as is; any other key is refused by the broker, naming the accepted ones
    "broker_transport_options": "broker_options",
}

#: Celery's old uppercase setting names, read by ``config_from_object`` without a namespace
CELERY_OLD_NAMES: dict[str, str] = {
    "BROKER_URL": "broker_url",
    "BROKER_TRANSPORT_OPTIONS": "broker_transport_options",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_TIMEZONE": "timezone",
    "CELERY_ENABLE_UTC": "enable_utc",
    "CELERY_IMPORTS": "imports",
    "CELERY_INCLUDE": "include",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_ROUTES": "task_routes",
    "CELERY_QUEUES": "task_queues",
    "CELERY_CREATE_MISSING_QUEUES": "task_create_missing_queues",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_TRACK_STARTED": "task_track_started",
    "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_LOG_FORMAT": "worker_log_format",
    "CELERYD_TASK_LOG_FORMAT": "worker_task_log_format",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
    "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERYBEAT_SCHEDULE": "beat_schedule",
    "CELERYBEAT_MAX_LOOP_INTERVAL": "beat_max_loop_interval",
    "CELERYBEAT_SCHEDULER": "beat_scheduler",
    "CELERYBEAT_SCHEDULE_FILENAME": "beat_schedule_filename",
    "CELERYBEAT_SYNC_EVERY": "beat_sync_every",
}

#: Celery settings that aqueue needs no counterpart for: accepted, ignored, and why
CELERY_NOT_NEEDED: dict[str, str] = {
    "accept_content": "aqueue reads msgpack and JSON and never pickle, whatever a message says",
    "result_accept_content": "results are read as msgpack or JSON, never pickle",
    "result_serializer": "a result is encoded with its task's serializer",
    "enable_utc": "aqueue's times are always UTC",
    "task_protocol": "aqueue has one wire format (docs/protocol.md)",
    "broker_connection_retry": "aqueue always reconnects, within each call's deadline",
    "broker_connection_retry_on_startup": "aqueue always reconnects, within each call's deadline",
    "broker_connection_max_retries": "aqueue always reconnects, within each call's deadline",
    "worker_hijack_root_logger": "aqueue never configures logging; its CLI does",
    "worker_redirect_stdouts": "aqueue leaves the standard streams alone",
    "worker_log_color": "aqueue's worker log has no colours",
    "beat_scheduler": "aqueue's scheduler keeps its entries in the result backend",
    "beat_schedule_filename": "the scheduler's state lives in the result backend, not a file",
    "beat_sync_every": "the scheduler records each entry's state as it sends the entry's task",
    "beat_enable_remote_control": "change entries with aqueue beat add/remove/pause/resume",
    "beat_remote_control_max_tick_age": "change entries with aqueue beat add/remove/pause/resume",
    # monitoring events travel on the broker's capped ``events`` topic (docs/fleet.md)
    "event_queue_ttl": "events are kept by count in the broker's stream (event_max_kept)",
    "event_queue_expires": "a monitor's subscription ends with it; nothing is left to expire",
    "event_queue_prefix": "events travel on the broker's `events` topic, under its prefix",
    "event_queue_durable": "events travel on the broker's `events` topic, not a queue",
    "event_queue_exclusive": "events travel on the broker's `events` topic, not a queue",
    "event_exchange": "events travel on the broker's `events` topic, not an exchange",
    "event_serializer": "events are always JSON",
}

#: Celery settings whose effect aqueue cannot give: refused, naming what to do instead
CELERY_REFUSED: dict[str, str] = {
    "task_always_eager": (
        "aqueue has no eager mode: in tests, use broker='memory://' with an embedded worker "
        "(async with app.worker(): ...), which runs tasks as the real worker does"
    ),
    "task_eager_propagates": "aqueue has no eager mode (see task_always_eager)",
}


def _check_exchange_type(value: Any) -> str:
    if value not in EXCHANGE_TYPES:
        raise ConfigurationError(
            f"setting task_default_exchange_type must be direct, topic or fanout, not {value!r}"
        )
    return str(value)


def _check_max_priority(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 255:
        raise ConfigurationError("setting task_queue_max_priority must be 1..255, or None")
    return value


def _check_default_priority(value: int) -> int:
    if not 0 <= value <= MAX_PRIORITY:
        raise ConfigurationError(
            f"setting task_default_priority must be 0..{MAX_PRIORITY} (higher runs first)"
        )
    return value


#: settings checked beyond their type
_ROUTING_CHECKS: dict[str, Any] = {
    "task_routes": check_routes,
    "task_queues": check_queues,
    "task_default_exchange_type": _check_exchange_type,
    "task_queue_max_priority": _check_max_priority,
    "task_default_priority": _check_default_priority,
}


def _coerce(name: str, value: Any) -> Any:
    hint = _FIELDS[name]
    bad = ConfigurationError(f"setting {name} must be {_describe(hint)}, not {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
    elif hint in (int, int | None):
        if value is None and hint is not int:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad
    elif hint in (float, float | None):
        if value is None and hint is not float:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise bad
        value = float(value)
    elif hint == list[str]:
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise bad
        return list(value)
    elif name == "signing_keys":
        return _check_signing_keys(value)
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
    if name in _ROUTING_CHECKS:
        return _ROUTING_CHECKS[name](value)
    if name == "timezone" and value is not None:
        _check_zone(value)
    if name == "signing_key_id" and value is not None:
        check_key_id(value)
    if (
        name
        in (
            "lease_seconds",
            "worker_concurrency",
            "max_deliveries",
            "publish_chunk_size",
            "beat_max_loop_interval",
            "beat_lease_seconds",
            "worker_heartbeat_interval",
            "worker_lost_timeout",
            "event_max_kept",
        )
        and not value
    ):
        raise ConfigurationError(f"setting {name} must be positive")
    if name == "worker_prefetch_multiplier" and not value:
        raise ConfigurationError(
            "setting worker_prefetch_multiplier must be positive: aqueue has no unlimited "
            "prefetch (Celery's 0); give a count with worker_prefetch instead"
        )
    return value


def _check_signing_keys(value: Any) -> dict[str, Any]:
    """``signing_keys``: a mapping of key id to secret (str or bytes), or its text form.

    Errors never show a secret.
    """
    if isinstance(value, str):
        return parse_keys(value)
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            "setting signing_keys must be a dict of key id -> secret, or 'kid:secret,...'"
        )
    keys: dict[str, Any] = {}
    for kid, secret in value.items():
        check_key_id(kid)
        if not isinstance(secret, str | bytes) or not secret:
            raise ConfigurationError(f"signing key {kid!r}: the secret must be str or bytes")
        keys[kid] = secret
    return keys


def _check_zone(name: str) -> None:
    """``timezone`` names a zone the zone database knows."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"setting timezone: unknown time zone {name!r}; use an IANA name such as "
            "'Europe/Berlin' or 'UTC' (on systems without a zone database: pip install tzdata)"
        ) from None
