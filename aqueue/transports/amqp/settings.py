"""The AMQP URL and connection options, parsed once; text about them without the password.

One parser for every role: the connection options (``prefix``, ``heartbeat``,
``connect_timeout``, ``operation_timeout``) are read here, and each role names its own
options (``own``), which are read from the same query string and keywords and handed back
typed for the role to check.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from aqueue.core.errors import ConfigurationError
from aqueue.core.urls import redact
from aqueue.transports import tls

log = logging.getLogger("aqueue.amqp")

#: the URL options named in messages about TLS
TLS_OPTION_NAMES = tls.TLSOptionNames(
    ca="cafile", cert="certfile", key="keyfile", insecure="no_verify_ssl=1"
)

#: the AMQP ``content_type`` of every message aqueue publishes
CONTENT_TYPE = "application/x-aqueue"

#: a converter from the text of a query parameter (or a keyword's value) to its type
Converter = Callable[[Any], Any]

#: the connection options every role takes, and their types
CONNECTION_OPTIONS: Mapping[str, Converter] = {
    "prefix": str,
    "heartbeat": int,
    "connect_timeout": float,
    "operation_timeout": float,
}

# query parameters aio-pika / aiormq understand and that may stay in the URL
_CLIENT_PARAMS = frozenset(
    {"cafile", "capath", "cadata", "keyfile", "certfile", "no_verify_ssl", "name", "auth"}
)
#: aiormq's TLS parameters also taken as keyword options (``broker_options``), which win
#: over the query: paths (``str`` or ``os.PathLike``) and ``no_verify_ssl`` (a bool).
#: ``cadata`` (base64 in aiormq's URL) stays a query parameter.
TLS_KEYWORDS = ("cafile", "capath", "certfile", "keyfile", "no_verify_ssl")


@dataclass(frozen=True, slots=True)
class RabbitSettings:
    """How to reach RabbitMQ, for one broker or backend.

    Attributes:
        client_url: the URL handed to aio-pika (carries the password: never log it).
        redacted: the URL with the password replaced, for logs and reprs.
        prefix: first component of every queue name.
        heartbeat: AMQP heartbeat, seconds.
        connect_timeout: seconds a connection attempt may take.
        operation_timeout: seconds any other call may take.
    """

    client_url: str = field(repr=False)
    redacted: str
    prefix: str = "aqueue"
    heartbeat: int = 30
    connect_timeout: float = 10.0
    operation_timeout: float = 10.0

    def scrub(self, exc: BaseException) -> str:
        """An exception as text, without the password (aiormq may echo the URL)."""
        return self._scrub_text(f"{type(exc).__name__}: {exc}")

    def describe_connect_error(self, exc: BaseException) -> str:
        """What a failed connect raised, as text without the password; a TLS failure in
        words naming the URL option to change (``cafile``, ``certfile``, ...)."""
        parts = urlsplit(self.client_url)
        if parts.scheme != "amqps":
            return self.scrub(exc)
        query = dict(parse_qsl(parts.query))
        files = {name: query.get(name) for name in ("cafile", "certfile", "keyfile", "capath")}
        why = tls.explain(exc, TLS_OPTION_NAMES, files)
        if why is not None:
            return self._scrub_text(f"TLS failed: {why}")
        return self.scrub(exc)

    def _scrub_text(self, text: str) -> str:
        password = urlsplit(self.client_url).password or ""
        for secret in (password, unquote(password)):
            if secret:
                text = text.replace(secret, "***")
        return text


#: URL schemes taken for AMQP: Celery's ``pyamqp://`` is ``amqp://``
SCHEMES: Mapping[str, str] = {"amqp": "amqp", "amqps": "amqps", "pyamqp": "amqp"}


def with_defaults(url: str) -> SplitResult:
    """``url`` with Celery's (kombu's) defaults filled in: host ``localhost``, user and
    password ``guest``, virtual host ``/``; ``pyamqp://`` read as ``amqp://``.

    So ``amqp://``, ``pyamqp://`` and ``amqp://guest@localhost//`` all mean the local
    RabbitMQ's default virtual host as the guest user.

    Raises:
        ConfigurationError: not an AMQP URL.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"unparsable AMQP URL {redact(url)!r}") from None
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigurationError(f"not an amqp://, amqps:// or pyamqp:// URL: {redact(url)!r}")
    user = parts.username if parts.username is not None else "guest"
    password = parts.password if parts.password is not None else "guest"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{password}@{host}" + (f":{port}" if port is not None else "")
    # the path is the virtual host; none, "/" and kombu's "//" all mean the default one
    path = parts.path if parts.path not in ("", "/", "//") else "/%2F"
    return SplitResult(scheme, netloc, path, parts.query, parts.fragment)


def parse_settings(
    url: str,
    options: Mapping[str, Any],
    *,
    owner: str,
    own: Mapping[str, Converter] | None = None,
) -> tuple[RabbitSettings, dict[str, Any]]:
    """The connection settings from ``url``'s query and ``options`` (which win), a clean URL
    for aio-pika, and the role's ``own`` options found there, converted to their types.

    Args:
        url: ``amqp://`` or ``amqps://``.
        options: keyword options; ``None`` values count as not given.
        owner: what takes them, for error messages (``"rabbitmq broker"``).
        own: the role's options and their converters.

    Raises:
        ConfigurationError: not an AMQP URL, an unknown option, a value of the wrong type,
            or a prefix that is empty or starts with ``amq.``.
    """
    converters: dict[str, Converter] = {**CONNECTION_OPTIONS, **(own or {})}
    parts = with_defaults(url)
    values: dict[str, Any] = {}
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in converters:
            values[key] = value
        elif key in _CLIENT_PARAMS:
            kept.append((key, value))
        else:
            log.debug("ignoring unknown query parameter %r of the amqp URL", key)
    tls_given = {k: v for k, v in options.items() if k in TLS_KEYWORDS and v is not None}
    if tls_given:
        kept = [(k, v) for k, v in kept if k not in tls_given]
        for key, value in tls_given.items():
            if key == "no_verify_ssl":
                kept.append((key, "1" if value not in (False, 0, "0", "") else "0"))
            else:
                kept.append((key, os.fspath(value)))
    options = {k: v for k, v in options.items() if k not in TLS_KEYWORDS}
    unknown = sorted(set(options) - set(converters))
    if unknown:
        raise ConfigurationError(
            f"unknown {owner} option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(converters))} and the TLS options "
            f"{', '.join(TLS_KEYWORDS)}"
        )
    values.update({k: v for k, v in options.items() if v is not None})
    typed: dict[str, Any] = {}
    for key, raw in values.items():
        try:
            typed[key] = converters[key](raw)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"{owner} option {key}={raw!r} is not a valid {converters[key].__name__}"
            ) from None
    connection = {k: typed.pop(k) for k in CONNECTION_OPTIONS if k in typed}
    prefix = connection.get("prefix", "aqueue")
    if not prefix or prefix.startswith("amq."):
        raise ConfigurationError(f"{owner} option prefix must be non-empty, not amq.*")
    kept.append(("heartbeat", str(connection.get("heartbeat", 30))))
    client_url = urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment)
    )
    shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return RabbitSettings(client_url=client_url, redacted=redact(shown), **connection), typed
