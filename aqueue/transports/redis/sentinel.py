"""Redis Sentinel URLs: a master found by name through its sentinels.

Two spellings name the same thing:

* aqueue's, one URL: ``redis+sentinel://[[user]:password@]host1[:port],host2[:port]/<master>[/<db>]``
  (the sentinels, comma-separated, 26379 when a port is left out; the path is the master's
  name, then the database);
* Celery's (kombu's), one ``sentinel://`` URL per sentinel joined by ``;``:
  ``sentinel://[:password@]host1:26379/0;sentinel://host2:26379/0``, the master's name in
  the ``master_name`` option (Celery's ``broker_transport_options``) or ``?master_name=``.

In both, the URL's password (and user) are the master's, as kombu reads them; the
sentinels' own credentials are the ``sentinel_password`` / ``sentinel_username`` options
(or Celery's ``sentinel_kwargs={"password": ...}``).

Nothing here does I/O, and no message here holds a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from aqueue.core.errors import ConfigurationError
from aqueue.core.urls import JOINED_URLS

__all__ = [
    "DEFAULT_PORT",
    "DIGITS",
    "SENTINEL_SCHEMES",
    "SentinelTarget",
    "SentinelURL",
    "split_url",
]

#: the schemes of a Sentinel URL: aqueue's and Celery's
SENTINEL_SCHEMES = ("redis+sentinel", "sentinel")
#: a sentinel's port when the URL names none
DEFAULT_PORT = 26379

#: a port (or a database number) as written: digits only
DIGITS = re.compile(r"[0-9]+\Z")


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where the master is found: its name and the sentinels to ask.

    Attributes:
        master: the name the sentinels know the master by (``sentinel monitor <name>``).
        nodes: the sentinels, ``(host, port)``, in the order given.
        username: the sentinels' ACL user (``sentinel_username``), if any.
        password: the sentinels' password (``sentinel_password``), if any; never shown.
    """

    master: str
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A Sentinel URL taken apart (no option checked yet: see ``settings.parse_settings``).

    Attributes:
        nodes: the sentinels.
        master: the master's name from the path (aqueue's spelling), or ``None``.
        path: what is left of the path for the database: ``""`` or ``/<db>``.
        username, password: the master's credentials from the userinfo (unquoted).
        query: the query strings, one per URL (Celery's spelling has several).
    """

    nodes: tuple[tuple[str, int], ...]
    master: str | None
    path: str
    username: str | None = field(repr=False)
    password: str | None = field(repr=False)
    query: tuple[str, ...]


def split_url(url: str, what: str, shown: str) -> SentinelURL:
    """Take a ``redis+sentinel://`` or ``sentinel://[;sentinel://...]`` URL apart.

    Args:
        url: the URL.
        what: who reads it, for messages (``redis broker``).
        shown: the URL with its passwords hidden, for messages.

    Raises:
        ConfigurationError: no sentinel address, an empty host, a bad port, a path that is
            not ``/<master>[/<db>]`` (or ``/<db>`` for Celery's), URLs of Celery's spelling
            that disagree on the database or the password.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme == "redis+sentinel":
        return _split_aqueue(url, what, shown)
    return _split_celery(url, what, shown)


def _split_aqueue(url: str, what: str, shown: str) -> SentinelURL:
    rest = url.split("://", 1)[1]
    rest, _, _fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    # the userinfo ends at the last "@" before the path (a password may hold "@" or "/")
    at = rest.rfind("@")
    userinfo, hostpart = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    hosts, slash, path = hostpart.partition("/")
    nodes = _nodes(hosts.split(",") if hosts else [], what, shown)
    segments = [unquote(s) for s in path.split("/")] if slash else []
    while segments and segments[-1] == "":  # "/mymaster/" and "/" are fine
        segments.pop()
    if len(segments) > 2 or any(s == "" for s in segments):
        raise ConfigurationError(
            f"{what}: the path of {shown!r} must be /<master name>[/<db>], not /{path}"
        )
    master = segments[0] if segments else None
    db_path = f"/{segments[1]}" if len(segments) == 2 else ""
    username, password = _userinfo(userinfo)
    return SentinelURL(nodes, master, db_path, username, password, (query,))


def _split_celery(url: str, what: str, shown: str) -> SentinelURL:
    nodes: list[tuple[str, int]] = []
    paths: set[str] = set()
    users: set[str] = set()
    passwords: set[str] = set()
    queries: list[str] = []
    for part in JOINED_URLS.split(url):
        if not part.lower().startswith("sentinel://"):
            raise ConfigurationError(
                f"{what}: {shown!r} joins a URL that is not sentinel://; Celery's spelling "
                "is sentinel://host1:26379;sentinel://host2:26379"
            )
        try:
            parts = urlsplit(part)
        except ValueError as exc:
            raise ConfigurationError(f"{what}: bad sentinel URL in {shown!r}: {exc}") from None
        hostport = parts.netloc.rpartition("@")[2]
        nodes += _nodes([hostport], what, shown)
        if parts.path not in ("", "/"):
            paths.add(parts.path)
        username, password = _userinfo(parts.netloc.rpartition("@")[0])
        if username:
            users.add(username)
        if password:
            passwords.add(password)
        if parts.query:
            queries.append(parts.query)
    if len(paths) > 1:
        raise ConfigurationError(f"{what}: the URLs of {shown!r} name different databases")
    if len(passwords) > 1 or len(users) > 1:
        raise ConfigurationError(f"{what}: the URLs of {shown!r} give different credentials")
    return SentinelURL(
        tuple(nodes),
        None,
        next(iter(paths), ""),
        next(iter(users), None),
        next(iter(passwords), None),
        tuple(queries),
    )


def _userinfo(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, colon, password = text.partition(":")
    return (unquote(user) or None), (unquote(password) if colon and password else None)


def _nodes(addresses: list[str], what: str, shown: str) -> tuple[tuple[str, int], ...]:
    """``host[:port]`` and ``[v6]:port`` texts as ``(host, port)`` pairs."""
    if not addresses:
        raise ConfigurationError(
            f"{what}: {shown!r} names no sentinel: give host:port[,host:port...]"
        )
    nodes: list[tuple[str, int]] = []
    for address in addresses:
        address = address.strip()
        if address.startswith("["):
            host, bracket, tail = address[1:].partition("]")
            if not bracket or (tail and not tail.startswith(":")):
                raise ConfigurationError(f"{what}: bad sentinel address {address!r} in {shown!r}")
            port_text = tail[1:] if tail else None
        else:
            host, colon, port_text_or_empty = address.rpartition(":")
            if not colon:
                host, port_text = address, None
            else:
                port_text = port_text_or_empty
        if not host:
            raise ConfigurationError(f"{what}: an empty sentinel host in {shown!r}")
        if port_text is None:
            port = DEFAULT_PORT
        elif DIGITS.match(port_text) and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ConfigurationError(
                f"{what}: bad port {port_text!r} for sentinel {host!r} in {shown!r} "
                "(a number 1..65535)"
            )
        nodes.append((host, port))
    return tuple(nodes)
