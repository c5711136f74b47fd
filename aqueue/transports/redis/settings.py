"""Redis settings: a URL and options checked once, when a broker or backend is built, and
the clients they make.

Every mistake a URL can hold is reported here, as a ``ConfigurationError`` naming the bad
part, rather than by redis-py at the first connect (a raw ``TypeError``) or not at all (a
mistyped database silently meant database 0). What is accepted:

* ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://...`` (TLS): the path is
  empty, ``/`` or ``/<db>`` with ``<db>`` a non-negative decimal number, nothing else;
* ``unix://[[user]:password@]/path/to/socket``: the path is the socket, the database goes
  in ``?db=``;
* ``redis+sentinel://[[user]:password@]host1[:port],host2[:port]/<master>[/<db>]`` and
  Celery's ``sentinel://host1:port;sentinel://host2:port[/<db>]`` with the ``master_name``
  option: a master found through Redis Sentinel (:mod:`.sentinel`); the clients ask the
  sentinels for the master on every new connection, so they follow a failover;
* ``redis+cluster://[[user]:password@]host:port[,host:port...][/0]``: a Redis Cluster,
  found from any of the nodes listed (each with its port); a cluster has database 0 only;
* ``?db=<db>`` (any scheme) and a ``db`` keyword option: the same number as the path if
  both are given;
* query options and keyword options: aqueue's own (``OWN_OPTIONS``) and the redis-py
  connection options listed in ``REDIS_PY_OPTIONS`` (and ``TLS_OPTIONS`` for
  ``rediss://``) that the installed redis-py accepts; each option once. Keyword options
  win over the query.

Nothing here does I/O at import time or while parsing, and nothing here ever formats a
password: messages use :attr:`RedisSettings.redacted` or :meth:`RedisSettings.scrub`.

TLS: a ``rediss://`` connection does its TCP connect and its TLS handshake as two steps
(:class:`~aqueue.transports.redis.redispy.AsyncTLSConnection` and its blocking twin), so a
failed handshake is told apart from an unreachable server and is never retried: a plaintext
Redis server does not answer a TLS hello at all (it waits for the end of a line that never
comes), and retrying would only wait out the connect timeout again.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import redis
import redis.asyncio as aioredis

from aqueue.core.errors import ConfigurationError
from aqueue.core.urls import REDIS_SCHEMES, redact

from . import redispy
from .sentinel import DIGITS, SENTINEL_SCHEMES, SentinelTarget, SentinelURL, split_url

__all__ = [
    "CLUSTER_SCHEME",
    "OWN_OPTIONS",
    "REDIS_PY_OPTIONS",
    "TLS_OPTIONS",
    "RedisSettings",
    "accepted_options",
    "parse_settings",
]

#: the scheme of a Redis Cluster URL
CLUSTER_SCHEME = "redis+cluster"
#: spellings of a cluster URL that are refused with a hint (no TLS to a cluster yet)
_CLUSTER_REFUSED = {
    "rediss+cluster": "TLS to a Redis Cluster is not supported yet; use redis+cluster://",
    "redis-cluster": "a Redis Cluster URL is spelled redis+cluster://host:port[,host:port...]",
    "rediscluster": "a Redis Cluster URL is spelled redis+cluster://host:port[,host:port...]",
}

# aqueue's own options: read from keyword options first, then from the URL query string,
# and never passed on to redis-py.
_FLOAT_OPTIONS = {
    "socket_timeout": 5.0,
    "socket_connect_timeout": 5.0,
    "health_check_interval": 15.0,
    "operation_timeout": 10.0,
    "dedupe_ttl": 86400.0,
    "wait_timeout": 1.0,
}
_INT_OPTIONS = {
    "retries": 3,
    "dead_letter_limit": 10000,
    "protocol": 2,
    "max_connections": 64,
    "wait_replicas": -1,  # -1: 1 behind Sentinel, 0 otherwise
}
#: aqueue's own options
OWN_OPTIONS = ("prefix", *_FLOAT_OPTIONS, *_INT_OPTIONS)
#: aqueue's own options of a Sentinel URL (``sentinel_kwargs``: keyword option only)
SENTINEL_OPTIONS = ("master_name", "sentinel_username", "sentinel_password")
#: the keys Celery's ``sentinel_kwargs`` may hold, and the option each one is
_SENTINEL_KWARGS = {"password": "sentinel_password", "username": "sentinel_username"}

#: redis-py connection options passed on to it, in a URL query (redis-py parses their text,
#: ``redis.connection.parse_url``) or as keyword options. Left out on purpose: what aqueue
#: sets itself (the timeouts, health checks, pool size and protocol above; ``retry``,
#: ``retry_on_timeout``, ``retry_on_error``: see ``retries``; ``socket_keepalive``), the
#: pool's ``timeout`` (a call waits for a connection within ``operation_timeout``), and what
#: changes how replies or keys are encoded (``decode_responses``, ``encoding``,
#: ``encoding_errors``, ``legacy_responses``): aqueue reads and writes raw bytes.
REDIS_PY_OPTIONS = (
    "db",
    "username",
    "password",
    "client_name",
    "lib_name",
    "lib_version",
    "socket_read_size",
)
#: redis-py's TLS options, for ``rediss://`` only
TLS_OPTIONS = (
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_ca_data",
    "ssl_check_hostname",
    "ssl_password",
    "ssl_ciphers",
    "ssl_min_version",
    "ssl_include_verify_flags",
    "ssl_exclude_verify_flags",
)
#: redis-py options in a URL query whose text aqueue parses and passes on as a keyword
#: (redis-py < 8 passes it on as text, which fails at the first read)
_PARSED_HERE: dict[str, Callable[[str], Any]] = {"socket_read_size": int}
#: redis-py options that are Python objects: keyword options only
_KEYWORD_ONLY = ("credential_provider",)
#: options whose values are secrets: never shown, scrubbed from every message
_SECRET_OPTIONS = ("password", "ssl_password", "sentinel_password")

_DB_PATH = re.compile(r"/([0-9]+)\Z")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Everything needed to open Redis clients, parsed once from a URL and options.

    Attributes:
        url: the URL handed to redis-py: canonical (``scheme://netloc/<db>``, or the socket
            path and ``?db=`` for ``unix://``) with aqueue's own options removed. It may
            hold a password, so it is never printed; use ``redacted``.
        redacted: the URL as given, with any password replaced by ``***``.
        scheme: ``redis``, ``rediss``, ``unix``, ``redis+sentinel``, ``sentinel`` or
            ``redis+cluster``.
        prefix: first component of every key.
        socket_timeout: seconds a single read or write of the blocking client (lease
            renewal) may take; also caps how long one blocking wait of a claim lasts.
        socket_connect_timeout: seconds to establish a connection (and its TLS handshake).
        health_check_interval: seconds of idleness after which a connection is pinged
            before use (and the pub/sub connection is pinged to detect a dead peer).
        operation_timeout: overall deadline of one asyncio broker/backend call, retries
            included (a blocking wait adds its own length).
        retries: reconnect-and-retry attempts on connection errors (with jittered backoff).
        dedupe_ttl: seconds an enqueued id is remembered by the broker; ``0`` disables.
        dead_letter_limit: dead letters kept per queue (older ones are trimmed).
        protocol: RESP version for command connections (pub/sub always uses RESP2).
        max_connections: asyncio connections per client; further callers wait for one
            (within their deadline) instead of failing.
        wait_replicas: replicas that must confirm a publish (``WAIT``) before it returns;
            0: none asked (1 by default behind Sentinel).
        wait_timeout: seconds a publish waits for those confirmations.
        extra: redis-py options given as keywords, passed to it unchanged.
        sentinel: the master's name and its sentinels, for a Sentinel URL; else ``None``.
        nodes: a cluster's startup nodes as ``(host, port)`` (empty: not a cluster).
        shards: on a cluster, the queues spread over several slots, as ``(queue, count)``.
    """

    url: str = field(repr=False)
    redacted: str
    scheme: str
    prefix: str
    socket_timeout: float
    socket_connect_timeout: float
    health_check_interval: float
    operation_timeout: float
    retries: int
    dedupe_ttl: float
    dead_letter_limit: int
    protocol: int
    max_connections: int
    wait_replicas: int = 0
    wait_timeout: float = 1.0
    extra: dict[str, Any] = field(repr=False, default_factory=dict)
    secrets: tuple[str, ...] = field(repr=False, default=())
    sentinel: SentinelTarget | None = None
    nodes: tuple[tuple[str, int], ...] = ()
    shards: tuple[tuple[str, int], ...] = ()

    @property
    def cluster(self) -> bool:
        """Whether the URL names a Redis Cluster (``redis+cluster://``)."""
        return bool(self.nodes)

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the password removed."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def describe(self, exc: BaseException) -> str:
        """A one-line, password-free description of ``exc``.

        A failed TLS handshake is described by itself, not by the connection error redis-py
        wraps it in.
        """
        tls = redispy.tls_failure(exc)
        if tls is not None:
            return self.scrub(str(tls))
        return self.scrub(f"{type(exc).__name__}: {exc}")

    def _client_kwargs(self, *, asyncio_client: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            # redis-py's asyncio send path wraps writes in asyncio.wait_for when a socket
            # timeout is set, and on Python 3.11 wait_for can swallow the caller's
            # cancellation (cpython#86296): a cancelled claim would keep running. So the
            # asyncio clients bound each call with asyncio.timeout (operation_timeout,
            # see guarded()) and only the blocking client uses the socket timeout.
            "socket_timeout": None if asyncio_client else self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            "health_check_interval": self.health_check_interval,
            "protocol": self.protocol,
            **self.extra,
        }
        if self.scheme != "unix":  # a Unix socket has no TCP keepalive to set
            kwargs["socket_keepalive"] = True
        if self.sentinel is not None:
            # the master's connections are redis-py's SentinelManagedConnection (it asks
            # the sentinels for the master's address on every connect); the database and
            # credentials are keywords, there being no single-server URL to carry them
            kwargs["db"] = self.database
        elif self.scheme == "rediss":
            kwargs["connection_class"] = (
                redispy.AsyncTLSConnection if asyncio_client else redispy.TLSConnection
            )
        return kwargs

    def async_client(self) -> aioredis.Redis:
        """A pooled asyncio client that retries connection errors with backoff.

        redis-py disconnects a connection whose command was cancelled between send and
        reply (``read_response`` closes it on any ``BaseException``), so a cancelled or
        timed-out call never leaves a half-read reply for the next user of the pool.
        """
        if self.nodes:
            raise ConfigurationError(f"{self.redacted} is a Redis Cluster: no single-node client")
        retry = redispy.async_retry(self.retries)
        kwargs = self._client_kwargs(asyncio_client=True)
        # a bounded pool that queues callers (the default pool raises when full, which a
        # burst of concurrent wait() calls would hit)
        if self.sentinel is not None:
            return redispy.sentinel_async_client(
                self.sentinel,
                self._sentinel_kwargs(),
                max_connections=self.max_connections,
                timeout=None,
                retry=retry,
                **kwargs,
            )
        return redispy.async_client(
            self.url, max_connections=self.max_connections, timeout=None, retry=retry, **kwargs
        )

    def sync_client(self) -> redis.Redis:
        """A pooled blocking client (thread-safe), used where the event loop cannot be."""
        if self.nodes:
            raise ConfigurationError(f"{self.redacted} is a Redis Cluster: no single-node client")
        retry = redispy.sync_retry(self.retries)
        kwargs = self._client_kwargs(asyncio_client=False)
        if self.sentinel is not None:
            return redispy.sentinel_sync_client(
                self.sentinel, self._sentinel_kwargs(), retry=retry, **kwargs
            )
        return redispy.sync_client(self.url, retry=retry, **kwargs)

    def async_cluster_client(self) -> redispy.AsyncRedisCluster:
        """The asyncio client of a Redis Cluster (``redis+cluster://``): commands go to the
        node that holds their keys' slot, redirections and failovers are followed, with
        ``retries`` attempts; at most ``max_connections`` connections per node."""
        kwargs = self._client_kwargs(asyncio_client=True)
        retry = redispy.async_retry(self.retries)
        return redispy.async_cluster_client(
            self.nodes, max_connections=self.max_connections, retry=retry, **kwargs
        )

    def sync_cluster_client(self) -> redispy.SyncRedisCluster:
        """The blocking twin of :meth:`async_cluster_client` (thread-safe)."""
        kwargs = self._client_kwargs(asyncio_client=False)
        retry = redispy.sync_retry(self.retries)
        return redispy.sync_cluster_client(self.nodes, retry=retry, **kwargs)

    def pubsub_connection(self, client_name: str, node: int = 0) -> redispy.Connection:
        """One unpooled RESP2 connection for pub/sub, reconnected by its owner, not redis-py.

        Args:
            client_name: shown by ``CLIENT LIST``, so operators can tell it apart.
            node: on a cluster, which of its startup nodes (modulo their number): a
                reconnect tries the next one, since any node hears every ``PUBLISH``.
        """
        kwargs = self._client_kwargs(asyncio_client=True)
        kwargs.update(
            protocol=2,
            health_check_interval=0,
            retry=redispy.async_retry(0),
            client_name=client_name,
        )
        if self.sentinel is not None:
            return redispy.sentinel_unpooled_connection(
                self.sentinel, self._sentinel_kwargs(), **kwargs
            )
        url = self.url
        if self.nodes:
            host, port = self.nodes[node % len(self.nodes)]
            url = f"redis://{_bracketed(host)}:{port}/0"
        return redispy.unpooled_connection(url, **kwargs)

    @property
    def confirm(self) -> tuple[int, float] | None:
        """``(wait_replicas, wait_timeout)`` for writes that must outlive a failover
        (publishes, result stores, chord joins); ``None`` when no replica is waited for."""
        return (self.wait_replicas, self.wait_timeout) if self.wait_replicas else None

    @property
    def database(self) -> int:
        """The database number."""
        if self.sentinel is not None:
            return int(self.url.rsplit("/", 1)[1])
        if self.scheme == "unix":
            return int(dict(parse_qsl(urlsplit(self.url).query)).get("db", "0"))
        return int(urlsplit(self.url).path.strip("/") or "0")

    def _sentinel_kwargs(self) -> dict[str, Any]:
        """The options of the connections to the sentinels themselves."""
        target = self.sentinel
        assert target is not None
        kwargs: dict[str, Any] = {
            # a sentinel that stops answering must not hold up the search for the master
            "socket_timeout": self.socket_connect_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
        }
        if self.scheme != "unix":
            kwargs["socket_keepalive"] = True
        if target.username is not None:
            kwargs["username"] = target.username
        if target.password is not None:
            kwargs["password"] = target.password
        return kwargs


def parse_settings(url: str, options: Mapping[str, Any], *, what: str) -> RedisSettings:
    """Check a Redis URL and keyword options and parse them into :class:`RedisSettings`.

    See the module docstring for what is accepted. Keyword options win over URL query
    parameters.

    Raises:
        ConfigurationError: an unsupported scheme, a malformed port or database, an option
            that is unknown, given twice or has a bad value; the message names the part.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    target: SentinelURL | None = None
    if scheme in _CLUSTER_REFUSED:
        raise ConfigurationError(f"{what}: {redact(url)!r}: {_CLUSTER_REFUSED[scheme]}")
    if scheme == CLUSTER_SCHEME:
        return _parse_cluster(url, options, what=what)
    if scheme == "rediss+sentinel":
        raise ConfigurationError(
            f"{what}: {redact(url)!r}: TLS behind Redis Sentinel is not supported yet; "
            "use redis+sentinel:// on a trusted network"
        )
    if scheme in SENTINEL_SCHEMES:
        redacted = redact(url)
        target = split_url(url, what, redacted)
        queries = target.query
        path, username, password, netloc = target.path, target.username, target.password, ""
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError as exc:
            # not even the redacted URL: redacting needs the URL to parse
            raise ConfigurationError(f"{what}: bad Redis URL: {exc}") from None
        redacted = redact(url)
        scheme = parts.scheme.lower()
        if scheme not in REDIS_SCHEMES or not url.lower().startswith(f"{scheme}://"):
            raise ConfigurationError(
                f"{what}: unsupported URL {redacted!r}; use redis://, rediss://, unix://, "
                "redis+sentinel:// or redis+cluster://"
            )
        queries = (parts.query,)
        path, username, password, netloc = parts.path, parts.username, parts.password, parts.netloc
    query = [pair for text in queries for pair in parse_qsl(text, keep_blank_values=True)]
    seen: dict[str, None] = {}  # in order
    for name, _ in query:
        if name in seen:
            raise ConfigurationError(f"{what}: option {name!r} is given twice in {redacted!r}")
        seen[name] = None
    given = {name: value for name, value in query if value != ""}
    redacted = _redact_query(redacted)
    in_url = accepted_options(scheme, keyword=False)
    for name in seen:
        if name not in in_url:
            raise ConfigurationError(_unknown(what, name, scheme, in_url, where=repr(redacted)))
    as_keyword = accepted_options(scheme, keyword=True)
    for name in options:
        if name not in as_keyword:
            raise ConfigurationError(_unknown(what, name, scheme, as_keyword, where="options"))

    merged: dict[str, Any] = {**given, **options}
    values: dict[str, Any] = {}
    try:
        for name, default in _FLOAT_OPTIONS.items():
            raw = merged.get(name)
            values[name] = default if raw in (None, "") else float(raw)
        for name, idefault in _INT_OPTIONS.items():
            raw = merged.get(name)
            values[name] = idefault if raw in (None, "") else int(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what}: bad option for {redacted!r}: {exc}") from None
    prefix = str(merged.get("prefix") or "aqueue")
    if any(c in prefix for c in "{}"):
        # a brace in the prefix would move the cluster hash tag out of the queue name
        raise ConfigurationError(f"{what}: the key prefix must not contain braces")
    if values["socket_timeout"] <= 0 or values["operation_timeout"] <= 0:
        raise ConfigurationError(f"{what}: timeouts must be positive")
    if merged.get("wait_replicas") not in (None, "") and values["wait_replicas"] < 0:
        raise ConfigurationError(f"{what}: wait_replicas must be 0 or more")
    if values["wait_replicas"] < 0:
        values["wait_replicas"] = 1 if target is not None else 0
    if values["wait_timeout"] <= 0:
        raise ConfigurationError(f"{what}: wait_timeout must be positive")

    db = _database(scheme, path, given.get("db"), options.get("db"), what, redacted)
    # redis-py options: the query's stay in the URL (redis-py parses them; their text is
    # checked here first) unless a keyword option replaces them; keyword ones are passed on
    own = {*OWN_OPTIONS, *SENTINEL_OPTIONS, "sentinel_kwargs"}
    rest: list[tuple[str, str]] = []
    parsed: dict[str, Any] = {}
    for name, value in given.items():
        if name in own or name == "db" or name in options:
            continue
        ours = _PARSED_HERE.get(name)
        parser = ours or redispy.url_parser(name)
        if parser is not None:
            try:
                typed = parser(value)
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"{what}: bad value for {name!r} in {redacted!r}"
                ) from None
            if ours is not None or target is not None:
                parsed[name] = typed
                continue
        if target is not None:  # no single-server URL to carry it: a keyword
            parsed[name] = value
            continue
        rest.append((name, value))
    extra = {k: v for k, v in options.items() if k not in own and k != "db"} | parsed
    sentinel: SentinelTarget | None = None
    if target is not None:
        sentinel = _sentinel_target(target, merged, what, redacted)
        for key, credential in (("username", username), ("password", password)):
            if credential is not None:
                extra.setdefault(key, credential)
        hosts = ",".join(f"{_bracketed(h)}:{p}" for h, p in sentinel.nodes)
        # canonical, so both spellings of one master compare equal (``bind_records``)
        clean = f"redis+sentinel://{hosts}/{quote(sentinel.master, safe='')}/{db}"
    elif scheme == "unix":
        if not path:
            raise ConfigurationError(f"{what}: {redacted!r} names no socket path")
        rest.append(("db", str(db)))
        clean = f"unix://{netloc}{path}"
    else:
        clean = f"{scheme}://{netloc}/{db}"
    if rest:
        clean += "?" + urlencode(rest)

    candidates = {password, unquote(password or "")}
    candidates |= {given.get(name) for name in _SECRET_OPTIONS}
    candidates |= {v for k, v in options.items() if k in _SECRET_OPTIONS and isinstance(v, str)}
    if sentinel is not None:
        candidates.add(sentinel.password)
    secrets = tuple(sorted((s for s in candidates if s), key=len, reverse=True))
    return RedisSettings(
        url=clean,
        redacted=redacted,
        scheme=scheme,
        prefix=prefix,
        extra=extra,
        secrets=secrets,
        sentinel=sentinel,
        **values,
    )


def _sentinel_target(
    target: SentinelURL, merged: Mapping[str, Any], what: str, redacted: str
) -> SentinelTarget:
    """The master's name (the path, or ``master_name``) and the sentinels' credentials
    (``sentinel_username`` / ``sentinel_password``, or Celery's ``sentinel_kwargs``)."""
    named = merged.get("master_name")
    if named is not None and not isinstance(named, str):
        raise ConfigurationError(f"{what}: master_name must be a string, not {named!r}")
    if named and target.master and named != target.master:
        raise ConfigurationError(
            f"{what}: {redacted!r} names master {target.master!r} but master_name is {named!r}"
        )
    master = target.master or named
    if not master:
        raise ConfigurationError(
            f"{what}: {redacted!r} names no master: give its name in the path "
            "(redis+sentinel://host:26379/mymaster/0) or the master_name option "
            "(Celery's broker_transport_options={'master_name': 'mymaster'}, or "
            "?master_name=mymaster)"
        )
    credentials = {name: merged.get(name) for name in ("sentinel_username", "sentinel_password")}
    celery = merged.get("sentinel_kwargs")
    if celery is not None:
        if not isinstance(celery, Mapping):
            raise ConfigurationError(f"{what}: sentinel_kwargs must be a dict")
        for key, value in celery.items():
            name = _SENTINEL_KWARGS.get(key)
            if name is None:
                raise ConfigurationError(
                    f"{what}: sentinel_kwargs key {key!r} is not supported; accepted are "
                    f"{', '.join(_SENTINEL_KWARGS)} (aqueue sets the sentinels' timeouts "
                    "from its own socket_connect_timeout)"
                )
            if credentials[name] is not None and credentials[name] != value:
                raise ConfigurationError(f"{what}: sentinel_kwargs[{key!r}] and {name} differ")
            credentials[name] = value
    for name, value in credentials.items():
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"{what}: {name} must be a string")
    return SentinelTarget(
        master=master,
        nodes=target.nodes,
        username=credentials["sentinel_username"] or None,
        password=credentials["sentinel_password"] or None,
    )


def accepted_options(scheme: str, *, keyword: bool) -> tuple[str, ...]:
    """The options accepted for ``scheme`` in a URL query (or as keyword options)."""
    sentinel = scheme in SENTINEL_SCHEMES
    installed = redispy.connection_keywords("redis" if sentinel else scheme)
    names = list(REDIS_PY_OPTIONS)
    if scheme == "rediss":
        names += TLS_OPTIONS
    if keyword:
        names += _KEYWORD_ONLY
    ours: tuple[str, ...] = OWN_OPTIONS
    if sentinel:
        ours += SENTINEL_OPTIONS + (("sentinel_kwargs",) if keyword else ())
    return (*ours, *(n for n in names if n in installed))


def _unknown(what: str, name: str, scheme: str, accepted: tuple[str, ...], *, where: str) -> str:
    """The message for an option ``name`` that is not accepted."""
    if name in TLS_OPTIONS and scheme in SENTINEL_SCHEMES:
        return f"{what}: {name!r} in {where}: TLS behind Redis Sentinel is not supported yet"
    if name in TLS_OPTIONS and scheme != "rediss":
        return f"{what}: {name!r} in {where} is a TLS option: use a rediss:// URL"
    if name in (*SENTINEL_OPTIONS, "sentinel_kwargs") and scheme not in SENTINEL_SCHEMES:
        return (
            f"{what}: {name!r} in {where} is a Redis Sentinel option: use a "
            "redis+sentinel:// URL (or Celery's sentinel://)"
        )
    own = {*OWN_OPTIONS, *SENTINEL_OPTIONS, "sentinel_kwargs"}
    ours = [n for n in accepted if n in own]
    theirs = [n for n in accepted if n not in own]
    hint = difflib.get_close_matches(name, accepted, n=1)
    guess = f" (did you mean {hint[0]!r}?)" if hint else ""
    return (
        f"{what}: unknown option {name!r} in {where}{guess}; accepted are aqueue's "
        f"{', '.join(ours)} and redis-py's {', '.join(theirs)}"
    )


def _database(
    scheme: str, path: str, in_query: str | None, keyword: Any, what: str, redacted: str
) -> int:
    """The database number, from the path, ``?db=`` and the ``db`` keyword (0 if none)."""
    found: list[tuple[str, int]] = []
    if scheme != "unix" and path not in ("", "/"):
        match = _DB_PATH.match(path)
        if match is None:
            raise ConfigurationError(
                f"{what}: the path of {redacted!r} must be a database number "
                f"(/0, /1, ...), not {path!r}"
            )
        found.append((f"path /{match[1]}", int(match[1])))
    if in_query is not None:
        if not DIGITS.match(in_query):
            raise ConfigurationError(
                f"{what}: db={in_query!r} in {redacted!r} is not a database number (0, 1, ...)"
            )
        found.append((f"?db={in_query}", int(in_query)))
    if keyword is not None:
        if isinstance(keyword, bool) or not (
            (isinstance(keyword, int) and keyword >= 0)
            or (isinstance(keyword, str) and DIGITS.match(keyword))
        ):
            raise ConfigurationError(
                f"{what}: the db option must be a database number (0, 1, ...), not {keyword!r}"
            )
        found.append((f"db={keyword!r}", int(keyword)))
    if len({number for _, number in found}) > 1:
        named = " and ".join(where for where, _ in found)
        raise ConfigurationError(f"{what}: two different databases for {redacted!r}: {named}")
    return found[0][1] if found else 0


def _redact_query(redacted: str) -> str:
    """``redacted`` (netloc password already hidden) with secret query values hidden too."""
    parts = urlsplit(redacted)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(name in _SECRET_OPTIONS for name, _ in pairs):
        return redacted
    hidden = [(n, "***" if n in _SECRET_OPTIONS else v) for n, v in pairs]
    return parts._replace(query=urlencode(hidden, safe="*")).geturl()


def _bracketed(host: str) -> str:
    """``host`` as written in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _cluster_nodes(hosts: str, what: str, redacted: str) -> tuple[tuple[str, int], ...]:
    """The ``host:port`` pairs of a cluster URL's netloc (after any ``user:password@``)."""
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        spec = part.strip()
        host, sep, port = spec.rpartition(":")
        if spec.startswith("[") and "]" in spec:  # [IPv6]:port
            host, sep, port = spec[1:].partition("]:")
        if not sep or not host or not DIGITS.match(port) or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"{what}: {redacted!r}: each cluster node is host:port, not {spec!r} "
                "(redis+cluster://host:port[,host:port...])"
            )
        nodes.append((host, int(port)))
    return tuple(dict.fromkeys(nodes))


def _parse_cluster(url: str, options: Mapping[str, Any], *, what: str) -> RedisSettings:
    """:func:`parse_settings` for ``redis+cluster://``: the options are checked as for
    ``redis://`` (on the first node), then the nodes are listed and the database checked."""
    redacted = redact(url)
    rest = url.split("://", 1)[1]
    netloc, slash, tail = rest.partition("/")
    if not slash:
        netloc, mark, query = netloc.partition("?")
        tail = f"?{query}" if mark else ""
    userinfo, at, hosts = netloc.rpartition("@")
    if not hosts:
        raise ConfigurationError(f"{what}: {redacted!r} names no cluster node")
    nodes = _cluster_nodes(hosts, what, redacted)
    # ``shards`` is the cluster's own option: taken out before the rest is checked
    path, mark, query = tail.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    in_url = [value for name, value in pairs if name == "shards"]
    if len(in_url) > 1:
        raise ConfigurationError(f"{what}: option 'shards' is given twice in {redacted!r}")
    kept = [(name, value) for name, value in pairs if name != "shards"]
    tail = path + (f"?{urlencode(kept)}" if kept else "")
    options = dict(options)
    given = options.pop("shards", None)
    shards = _shards(in_url[0] if given is None and in_url else given, what)
    first = f"{_bracketed(nodes[0][0])}:{nodes[0][1]}"
    single = parse_settings(f"redis://{userinfo}{at}{first}/{tail}", options, what=what)
    if single.wait_replicas > 0:
        # the cluster broker and backend never WAIT after a write, and a WAIT sent through
        # the cluster client reaches one node only: refused rather than silently ignored
        raise ConfigurationError(
            f"{what}: {redacted!r}: wait_replicas applies to one server or a master behind "
            "Redis Sentinel only, not to a Redis Cluster (leave it out, or 0)"
        )
    path = single.url.split("?", 1)[0]
    if not path.endswith("/0"):
        db = path.rsplit("/", 1)[1]
        raise ConfigurationError(
            f"{what}: {redacted!r}: a Redis Cluster has database 0 only, not {db}"
        )
    if any(name in single.extra for name in ("lib_name", "lib_version")):
        raise ConfigurationError(f"{what}: lib_name and lib_version are not taken for a cluster")
    parts = urlsplit(f"redis://{userinfo}{at}{first}")
    extra = dict(single.extra)
    # redis-py options left in the URL query for redis-py to parse
    for name, value in parse_qsl(urlsplit(single.url).query):
        parser = redispy.url_parser(name)
        extra.setdefault(name, parser(value) if parser is not None else value)
    if parts.username:
        extra.setdefault("username", unquote(parts.username))
    if parts.password is not None:
        extra.setdefault("password", unquote(parts.password))
    shown = ",".join(f"{_bracketed(h)}:{p}" for h, p in nodes)
    clean = f"{CLUSTER_SCHEME}://{userinfo}{at}{shown}/0"
    return replace(
        single,
        url=clean,
        redacted=redacted,
        scheme=CLUSTER_SCHEME,
        extra=extra,
        nodes=nodes,
        shards=shards,
    )


#: most slots one queue may be spread over
MAX_SHARDS = 1024
_SHARD_SPEC = re.compile(r"([^:,{}#\s]+):([0-9]+)\Z")


def _shards(raw: Any, what: str) -> tuple[tuple[str, int], ...]:
    """The ``shards`` option: ``"hot:8,bulk:4"`` (a URL's query) or ``{"hot": 8}``."""
    if raw is None or raw == "":
        return ()
    pairs: list[tuple[str, Any]]
    if isinstance(raw, str):
        pairs = []
        for part in raw.split(","):
            match = _SHARD_SPEC.match(part.strip())
            if match is None:
                raise ConfigurationError(
                    f"{what}: shards={raw!r}: each entry is queue:count (hot:8,bulk:4)"
                )
            pairs.append((match[1], int(match[2])))
    elif isinstance(raw, Mapping):
        pairs = list(raw.items())
    else:
        raise ConfigurationError(f"{what}: shards must map queue names to counts, not {raw!r}")
    out: dict[str, int] = {}
    for name, count in pairs:
        if not isinstance(name, str) or not name or any(c in name for c in "{}#"):
            raise ConfigurationError(
                f"{what}: shards: {name!r} is not a queue name (no braces, no '#')"
            )
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SHARDS:
            raise ConfigurationError(
                f"{what}: shards: {name!r} needs a count from 1 to {MAX_SHARDS}, not {count!r}"
            )
        if count > 1:
            out[name] = count
    return tuple(out.items())
