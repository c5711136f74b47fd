"""What a failed TLS connection means, in words a user can act on, for every transport.

Python's ``ssl`` errors name OpenSSL's reason (``CERTIFICATE_VERIFY_FAILED``,
``TLSV13_ALERT_CERTIFICATE_REQUIRED``) and, for a missing file, not even the file.
:func:`explain` turns the common failures into a sentence naming the URL option to change;
each transport passes its own option names (:class:`TLSOptionNames`) and the files its URL
names. Nothing here formats a password (no option it names holds one).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["TLSOptionNames", "explain", "ssl_error_in"]

#: OpenSSL reasons with which a server refuses a client for its certificate (none, or one
#: signed by a CA the server does not trust)
_CLIENT_REFUSED = (
    "CERTIFICATE_REQUIRED",
    "HANDSHAKE_FAILURE",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
)


@dataclass(frozen=True, slots=True)
class TLSOptionNames:
    """A transport's URL options for TLS, named in messages.

    Attributes:
        ca: the CA file the server's certificate is checked against.
        cert: the client certificate file.
        key: the client key file.
        insecure: the option (with its value) that turns verification off.
    """

    ca: str
    cert: str
    key: str
    insecure: str


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and exceptions held in their ``args`` (aiormq
    wraps the ``ssl`` error in an ``AMQPConnectionError``'s arguments)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [a for a in current.args if isinstance(a, BaseException)]
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def ssl_error_in(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` that ``exc`` is, was caused by, or wraps, if any."""
    for seen in _chain(exc):
        if isinstance(seen, ssl.SSLError):
            return seen
    return None


def explain(
    exc: BaseException, names: TLSOptionNames, files: Mapping[str, object | None]
) -> str | None:
    """A sentence saying what went wrong with TLS, or ``None`` if ``exc`` is no TLS failure.

    Args:
        exc: what the connect raised.
        names: the transport's option names.
        files: the file options as given (option name to path); a missing one is named.
    """
    failure = ssl_error_in(exc)
    if failure is None:
        chain = list(_chain(exc))
        if any(isinstance(e, FileNotFoundError) for e in chain):
            return _missing_file(files)
        if not files.get(names.cert) and any(isinstance(e, ConnectionResetError) for e in chain):
            # a server that requires a client certificate may reset the connection rather
            # than send its alert first (which of the two arrives first is a race)
            return (
                "the server reset the connection during the TLS setup; if it requires a "
                f"client certificate, give one with {names.cert} and {names.key}"
            )
        return None
    if isinstance(failure, ssl.SSLCertVerificationError):
        why = failure.verify_message or failure.reason or str(failure)
        return (
            f"certificate verification failed: the server's certificate is not trusted "
            f"({why}); name the CA that signed it with {names.ca} "
            f"(or turn verification off with {names.insecure}, which is insecure)"
        )
    reason = failure.reason or ""
    if any(r in reason for r in _CLIENT_REFUSED):
        return (
            f"the server refused this client's certificate ({reason}): it requires a client "
            f"certificate signed by a CA it trusts; give one with {names.cert} and {names.key}"
        )
    if reason == "WRONG_VERSION_NUMBER":
        return "the server does not speak TLS on this port (WRONG_VERSION_NUMBER)"
    if reason in ("PEM_LIB", "NO_START_LINE", "KEY_VALUES_MISMATCH") or failure.library == "PEM":
        missing = _missing_file(files)
        if missing is not None:
            return missing
        return f"a TLS file ({', '.join(n for n, v in files.items() if v)}) is unusable: {failure}"
    return None


def _missing_file(files: Mapping[str, object | None]) -> str | None:
    for name, path in files.items():
        if path and isinstance(path, str | os.PathLike) and not os.path.exists(path):
            return f"{name}={os.fspath(path)!s} does not exist"
    return None
