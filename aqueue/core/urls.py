"""Broker and backend URLs: which class a scheme names, and redaction of credentials.

aqueue's own brokers and backends are listed in the tables below by module name and
imported only when a URL asks for them, so core never imports a broker or backend module.
Other packages add schemes through entry points, in the groups ``aqueue.brokers`` and
``aqueue.backends`` (the name is the scheme, the value ``package.module:Class``)::

    [project.entry-points."aqueue.brokers"]
    nats = "aqueue_nats:NatsBroker"

A broker class is called as ``Class(url, **broker_options)``, a backend class as
``Class(url)``; see docs/extending.md.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .protocols import Broker, ResultBackend

BROKER_GROUP: Final = "aqueue.brokers"
BACKEND_GROUP: Final = "aqueue.backends"


@dataclass(frozen=True, slots=True)
class Implementation:
    """Where the class for a scheme lives."""

    #: ``package.module:Class``
    target: str
    #: the pip extra that installs what it needs (``None``: nothing beyond aqueue)
    extra: str | None = None
    #: a backend built with ``broker_url=`` (``rpc://`` sends results over the broker)
    needs_broker_url: bool = False


BROKERS: Final[dict[str, Implementation]] = {
    "memory": Implementation("aqueue.brokers.memory:MemoryBroker"),
    "sqlite": Implementation("aqueue.brokers.sqlite:SQLiteBroker"),
    "redis": Implementation("aqueue.brokers.redis:RedisBroker", "redis"),
    "rediss": Implementation("aqueue.brokers.redis:RedisBroker", "redis"),
    "unix": Implementation("aqueue.brokers.redis:RedisBroker", "redis"),
    "redis+sentinel": Implementation("aqueue.brokers.redis:RedisBroker", "redis"),
    "sentinel": Implementation("aqueue.brokers.redis:RedisBroker", "redis"),
    "redis+cluster": Implementation("aqueue.brokers.redis:RedisClusterBroker", "redis"),
    "amqp": Implementation("aqueue.brokers.rabbitmq:RabbitMQBroker", "rabbitmq"),
    "amqps": Implementation("aqueue.brokers.rabbitmq:RabbitMQBroker", "rabbitmq"),
    "pyamqp": Implementation("aqueue.brokers.rabbitmq:RabbitMQBroker", "rabbitmq"),
}
BACKENDS: Final[dict[str, Implementation]] = {
    "memory": Implementation("aqueue.backends.memory:MemoryBackend"),
    "sqlite": Implementation("aqueue.backends.sqlite:SQLiteBackend"),
    "redis": Implementation("aqueue.backends.redis:RedisBackend", "redis"),
    "rediss": Implementation("aqueue.backends.redis:RedisBackend", "redis"),
    "unix": Implementation("aqueue.backends.redis:RedisBackend", "redis"),
    "redis+sentinel": Implementation("aqueue.backends.redis:RedisBackend", "redis"),
    "sentinel": Implementation("aqueue.backends.redis:RedisBackend", "redis"),
    "redis+cluster": Implementation("aqueue.backends.redis:RedisClusterBackend", "redis"),
    "rpc": Implementation("aqueue.backends.rpc:RPCBackend", "rabbitmq", needs_broker_url=True),
}


#: the schemes of a Redis URL (a server, or a master found through Redis Sentinel)
REDIS_SCHEMES: Final = ("redis", "rediss", "unix", "redis+sentinel", "sentinel", "redis+cluster")

#: names of options (in a URL's query, in broker_options) whose values are never printed
SECRET_NAME: Final = re.compile(r"pass|secret|token|key|cert|credential", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with its secrets replaced by ``***``: safe for logs, reprs and errors.

    Hidden: the password of the userinfo, the value of every query option whose name says
    it is a secret (``password=``, ``ssl_password=``, ...), and the password of a URL given
    as a query value (``?dedupe_url=redis://:pw@host``). Several URLs joined by ``;``
    (Celery's Sentinel spelling) are redacted one by one, and a netloc of several hosts
    (``redis+sentinel://:pw@h1:26379,h2:26379/mymaster``) keeps its hosts.
    """
    joined = JOINED_URLS.split(url)
    if len(joined) > 1:
        return ";".join(redact(part) for part in joined)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    try:
        port = parts.port
    except ValueError:
        if "," not in parts.netloc:
            return "<unparsable url>"
        port = None  # several hosts: kept as they are, only the password hidden
    netloc = parts.netloc
    if "," in netloc and "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else netloc
    elif parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{port}" if port is not None else "")
    query = _redact_query(parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    # by hand, not urlunsplit: that drops the "//" of an empty netloc (unix:///path)
    shown = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else f"{netloc}{parts.path}"
    shown += f"?{query}" if query else ""
    return shown + (f"#{parts.fragment}" if parts.fragment else "")


#: where URLs joined by ``;`` meet (a ``;`` followed by a scheme): Celery's spelling of
#: several sentinels, ``sentinel://h1:26379;sentinel://h2:26379``
JOINED_URLS: Final = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def _redact_query(query: str) -> str:
    """``query`` with secret option values, and passwords of URLs given as values, hidden."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    hidden = [
        (name, "***" if SECRET_NAME.search(name) else redact(value) if "://" in value else value)
        for name, value in pairs
    ]
    if hidden == pairs:
        return query
    return urlencode(hidden, safe="*:/@")


def redact_options(options: Any) -> Any:
    """``options`` (a dict, list or value, nested) with secret-named values and the
    passwords of URLs hidden: safe to print."""
    if isinstance(options, dict):
        return {
            k: "***" if isinstance(k, str) and SECRET_NAME.search(k) else redact_options(v)
            for k, v in options.items()
        }
    if isinstance(options, list | tuple):
        return type(options)(redact_options(v) for v in options)
    if isinstance(options, str) and "://" in options:
        return redact(options)
    return options


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased (``""`` if it has none)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def full_url(url: str) -> str:
    """Celery's bare spellings as URLs: ``"rpc"`` is ``"rpc://"``, ``"redis"`` is
    ``"redis://"`` (a name that is a known scheme, without ``://``)."""
    name = url.strip().lower()
    if "://" not in name and (name in BROKERS or name in BACKENDS):
        return f"{name}://"
    return url


def _registered(group: str) -> dict[str, Implementation]:
    """Schemes other packages register through entry points."""
    return {ep.name.lower(): Implementation(ep.value) for ep in entry_points(group=group)}


def _find(
    table: dict[str, Implementation], group: str, url: str, kind: str
) -> tuple[Implementation, Any]:
    scheme = scheme_of(url)
    found = table.get(scheme) or _registered(group).get(scheme)
    if found is None:
        known = sorted(set(table) | set(_registered(group)))
        raise ConfigurationError(
            f"unsupported URL {redact(url)!r} for a {kind}: the scheme must be one of "
            f"{', '.join(known)} (for example redis://localhost:6379/0 or "
            f"sqlite:///aqueue.db); other packages add schemes through the {group!r} "
            "entry points"
        )
    module_name, _, class_name = found.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if found.extra is None:
            raise
        raise ConfigurationError(
            f"{scheme}:// needs an extra that is not installed ({exc.name}): "
            f'pip install "aqueue[{found.extra}]"'
        ) from None
    return found, getattr(module, class_name)


def broker_class(url: str) -> Any:
    """The broker class for ``url``'s scheme."""
    return _find(BROKERS, BROKER_GROUP, url, "broker")[1]


def backend_class(url: str) -> Any:
    """The result backend class for ``url``'s scheme."""
    return _find(BACKENDS, BACKEND_GROUP, url, "result backend")[1]


def make_broker(url: str, options: dict[str, Any]) -> Broker:
    """The broker for ``url``, built with the app's ``broker_options``."""
    broker: Broker = broker_class(url)(url, **options)
    return broker


def make_backend(url: str, broker_url: str) -> ResultBackend:
    """The result backend for ``url`` (given the broker's URL where it needs it)."""
    found, cls = _find(BACKENDS, BACKEND_GROUP, url, "result backend")
    backend: ResultBackend = cls(url, broker_url=broker_url) if found.needs_broker_url else cls(url)
    return backend


def default_backend_url(broker_url: str) -> str | None:
    """The backend a broker URL implies: the same store where the broker has one, and
    reply queues on the same RabbitMQ (``rpc://``) for an AMQP broker."""
    scheme = scheme_of(broker_url)
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "rpc://"
    return broker_url if scheme in BACKENDS else None
