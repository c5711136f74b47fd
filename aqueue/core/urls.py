"""Broker and backend URLs: scheme lookup and redaction of credentials."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError

# scheme -> (module, class, pip extra). Core names modules as strings and imports them only
# when a URL asks for them, so it never imports a broker module itself.
_BROKERS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("aqueue.brokers.memory", "MemoryBroker", None),
    "sqlite": ("aqueue.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("aqueue.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("aqueue.brokers.redis", "RedisBroker", "redis"),
    "unix": ("aqueue.brokers.redis", "RedisBroker", "redis"),
    "amqp": ("aqueue.brokers.rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "amqps": ("aqueue.brokers.rabbitmq", "RabbitMQBroker", "rabbitmq"),
}
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("aqueue.backends.memory", "MemoryBackend", None),
    "sqlite": ("aqueue.backends.sqlite", "SQLiteBackend", None),
    "redis": ("aqueue.backends.redis", "RedisBackend", "redis"),
    "rediss": ("aqueue.backends.redis", "RedisBackend", "redis"),
    "unix": ("aqueue.backends.redis", "RedisBackend", "redis"),
    "rpc": ("aqueue.backends.rpc", "RPCBackend", "rabbitmq"),
}


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``: safe for logs, reprs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def scheme_of(url: str) -> str:
    """The URL's scheme, or a ConfigurationError naming the supported ones."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _BROKERS and scheme not in _BACKENDS:
        known = ", ".join(sorted(set(_BROKERS) | set(_BACKENDS)))
        raise ConfigurationError(
            f"unsupported URL {redact(url)!r}: the scheme must be one of {known} "
            "(for example redis://localhost:6379/0 or sqlite:///aqueue.db)"
        )
    return scheme


def _load(table: dict[str, tuple[str, str, str | None]], url: str, kind: str) -> Any:
    scheme = scheme_of(url)
    if scheme not in table:
        raise ConfigurationError(f"{scheme}:// cannot be used as a {kind} ({redact(url)})")
    module_name, class_name, extra = table[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise ConfigurationError(
            f"{scheme}:// needs an extra that is not installed ({exc.name}): "
            f'pip install "aqueue[{extra}]"'
        ) from None
    return getattr(module, class_name)


def broker_class(url: str) -> Any:
    """The broker class for ``url``'s scheme."""
    return _load(_BROKERS, url, "broker")


def backend_class(url: str) -> Any:
    """The result backend class for ``url``'s scheme."""
    return _load(_BACKENDS, url, "result backend")


def default_backend_url(broker_url: str) -> str | None:
    """The backend a broker URL implies: the same store where the broker has one, and
    reply queues on the same RabbitMQ (``rpc://``) for an AMQP broker."""
    scheme = scheme_of(broker_url)
    if scheme in ("amqp", "amqps"):
        return "rpc://"
    return broker_url if scheme in _BACKENDS else None
