"""The systems compared, by name. Adapters import their library only when used."""

from __future__ import annotations

import importlib

from .base import System

#: name -> (module, factory attribute, constructor keyword arguments)
_REGISTRY: dict[str, tuple[str, str, dict[str, str]]] = {
    "aqueue": ("aqueue_", "AqueueSystem", {"variant": "redis"}),
    "celery": ("celery_", "CelerySystem", {}),
    "taskiq": ("taskiq_", "TaskiqSystem", {"variant": "redis"}),
    "arq": ("arq_", "ArqSystem", {}),
    "saq": ("saq_", "SaqSystem", {}),
    "streaq": ("streaq_", "StreaqSystem", {}),
    "dramatiq": ("dramatiq_", "DramatiqSystem", {}),
    "raw-redis": ("raw_redis", "RawRedisSystem", {}),
    "aqueue-events": ("aqueue_", "AqueueSystem", {"variant": "redis-events"}),
    "aqueue-sqlite": ("aqueue_", "AqueueSystem", {"variant": "sqlite"}),
    "aqueue-amqp": ("aqueue_", "AqueueSystem", {"variant": "amqp"}),
    "aqueue-amqp-rpc": ("aqueue_", "AqueueSystem", {"variant": "amqp-rpc"}),
    "aqueue-amqp-redis": ("aqueue_", "AqueueSystem", {"variant": "amqp-redis"}),
    "taskiq-amqp": ("taskiq_", "TaskiqSystem", {"variant": "amqp"}),
}

ALL = list(_REGISTRY)
#: the Redis comparison, in table order
REDIS_SYSTEMS = ["aqueue", "celery", "taskiq", "arq", "saq", "streaq", "dramatiq", "raw-redis"]


def get(name: str) -> System:
    try:
        module_name, attr, kwargs = _REGISTRY[name]
    except KeyError:
        raise SystemExit(f"unknown system {name!r}; known: {', '.join(ALL)}") from None
    module = importlib.import_module(f"{__name__}.{module_name}")
    system: System = getattr(module, attr)(**kwargs)
    return system
