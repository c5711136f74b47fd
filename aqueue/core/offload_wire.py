"""What crosses the offload pool's process boundary, and how the other side rebuilds it.

Every frame is a 4-byte big-endian length and a msgpack body; nothing is pickled. A function
travels by reference (module and qualified name, imported by the child), so lambdas and
nested functions are refused before anything is sent. Arguments and results are msgpack.

An exception raised in a child travels as text (:class:`ErrorInfo`) and is rebuilt in the
parent: builtin exceptions and aqueue errors as the same type (from their ``args`` when msgpack
carried them, else from the message); anything else as a :class:`RemoteError` subclass whose
``__qualname__`` and ``__module__`` are the original's, so ``type(exc).__qualname__`` is the
name to record. Either way ``exc.__cause__`` is a :class:`RemoteTraceback` holding the child's
traceback text, so ``traceback.format_exception(exc)`` shows both sides.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import inspect
import struct
import traceback
from collections.abc import Callable
from typing import Any, Final, cast

import msgspec

from . import errors
from .arguments import ArgumentSpec
from .errors import AqueueError, ConfigurationError
from .serialization import decode
from .task import Task

HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final = 2**32 - 1


class Call(msgspec.Struct, tag="call", array_like=True):
    """Parent to child: run ``module.qualname(*args, **kwargs)``."""

    module: str
    qualname: str
    args: msgspec.Raw
    kwargs: msgspec.Raw
    #: the soft limit in seconds, only to word the exception the same way as in-process
    soft: float | None = None


class ErrorInfo(msgspec.Struct, array_like=True):
    """An exception raised in the child, as text plus its ``args`` when they encode."""

    module: str
    qualname: str
    message: str
    traceback: str
    #: msgpack of ``list(exc.args)``, or of ``None`` when they do not encode
    args: msgspec.Raw


class Ready(msgspec.Struct, tag="ready", array_like=True):
    """Child to parent, once: imports are done and calls may be sent."""

    pid: int


class Reply(msgspec.Struct, tag="reply", array_like=True):
    """Child to parent: the outcome of one call and the child's resident memory after it."""

    value: msgspec.Raw
    error: ErrorInfo | None
    rss_kib: int


encoder = msgspec.msgpack.Encoder()
#: msgpack ``nil``, the value of a reply that carries an error
NIL: Final = msgspec.Raw(encoder.encode(None))


class RemoteError(AqueueError):
    """An exception from a child process whose type is not rebuilt in the parent.

    Each original type gets its own subclass with the original ``__qualname__`` and
    ``__module__``, so ``type(exc).__qualname__`` names the original while
    ``except RemoteError`` catches them all.

    Attributes:
        exc_type: the original type's qualified name (``"MyError"``).
        exc_module: the original type's module.
        message: ``str()`` of the original exception.
        traceback: the child's traceback text.
    """

    def __init__(self, exc_type: str, message: str, traceback: str, exc_module: str = "") -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.message = message
        self.traceback = traceback


class WorkerLostError(AqueueError):
    """The child process running a call died: ``os._exit``, a signal, the OOM killer.

    Attributes:
        pid: the dead child's process id.
        exitcode: its exit code, negative for a signal (``-9`` for ``SIGKILL``).
    """

    def __init__(self, message: str, *, pid: int, exitcode: int | None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


class RemoteTraceback(Exception):
    """The ``__cause__`` of an exception raised in a child: the child's traceback text."""

    def __init__(self, traceback: str) -> None:
        super().__init__(traceback)
        self.traceback = traceback

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback}"""'


_remote_types: dict[tuple[str, str], type[RemoteError]] = {}


def _remote_type(module: str, qualname: str) -> type[RemoteError]:
    cls = _remote_types.get((module, qualname))
    if cls is None:
        if len(_remote_types) >= 1024:  # bound the cache against endless distinct names
            _remote_types.clear()
        namespace = {"__module__": module, "__qualname__": qualname, "__doc__": RemoteError.__doc__}
        cls = cast(type[RemoteError], type(qualname.rpartition(".")[2], (RemoteError,), namespace))
        _remote_types[(module, qualname)] = cls
    return cls


def _same_type(info: ErrorInfo) -> Exception | None:
    """Rebuild a builtin exception or an aqueue error as its own type, if it allows."""
    if info.module == "builtins":
        cls, base = getattr(builtins, info.qualname, None), Exception
    elif info.module == errors.__name__:
        cls, base = getattr(errors, info.qualname, None), AqueueError
    else:
        return None
    # StopIteration raised out of a coroutine turns into RuntimeError; keep it remote.
    if not (isinstance(cls, type) and issubclass(cls, base)) or issubclass(
        cls, (StopIteration, StopAsyncIteration)
    ):
        return None
    try:
        args = msgspec.msgpack.decode(info.args)
    except msgspec.DecodeError:
        args = None
    # The original args give the original message (KeyError quotes its key); failing
    # that, the message alone.
    attempts = [args, [info.message]] if isinstance(args, list) else [[info.message]]
    for attempt in attempts:
        with contextlib.suppress(Exception):  # a constructor wanting other arguments
            return cls(*attempt)
    return None


def rebuild_exception(info: ErrorInfo) -> Exception:
    """The parent-side exception for an error reported by a child (see the module docstring)."""
    exc = _same_type(info)
    if exc is None:
        exc = _remote_type(info.module, info.qualname)(
            info.qualname, info.message, info.traceback, info.module
        )
    exc.__cause__ = RemoteTraceback(info.traceback)
    return exc


def resolve(module: str, qualname: str) -> Any:
    """Import ``module`` and walk ``qualname``'s dotted attributes."""
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


_result_types: dict[tuple[str, str], Any] = {}


def reference(fn: Callable[..., Any]) -> tuple[str, str, Any]:
    """The module and qualified name a child imports ``fn`` by, and its result type.

    Raises:
        ConfigurationError: ``fn`` cannot be found again by importing it by name.
    """
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ConfigurationError(
            f"{fn!r} has no module and qualified name; offload runs functions defined at "
            "module level"
        )
    where = f"{module}.{qualname}"
    if "<" in qualname:
        raise ConfigurationError(
            f"{where} cannot run in a child process: a child imports functions by module and "
            "name, so lambdas and nested functions cannot be sent; define it at module level"
        )
    if module == "__main__":
        raise ConfigurationError(
            f"{where} is defined in the script being run (__main__), which a child process "
            "does not import; move it into an importable module"
        )
    if fn.is_async if isinstance(fn, Task) else inspect.iscoroutinefunction(fn):
        raise ConfigurationError(
            f"{where} is an async function: it belongs on the event loop, not in a process"
        )
    try:
        target = resolve(module, qualname)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"{where} cannot be imported by name ({exc}), so a child could not find it"
        ) from None
    if not (target is fn or target == fn or (isinstance(target, Task) and target.fn is fn)):
        raise ConfigurationError(
            f"importing {where} gives {target!r}, not {fn!r}: a child would run the wrong thing"
        )
    key = (module, qualname)
    if isinstance(target, Task):
        result_type = target.spec.result_type
    elif key in _result_types:
        result_type = _result_types[key]
    else:
        try:
            result_type = ArgumentSpec(target, skip_first=False).result_type
        except (TypeError, ValueError):  # no signature (some builtins)
            result_type = Any
        _result_types[key] = result_type
    return module, qualname, result_type


def decode_result(raw: msgspec.Raw, tp: Any) -> Any:
    """Decode a result against the return annotation, or as it comes when it does not fit."""
    if tp is not Any:
        try:
            return decode(raw, tp, "msgpack")
        except (msgspec.ValidationError, TypeError):
            # The value does not match the annotation (or msgspec cannot decode into it):
            # return it as the function returned it, not an error for a call that worked.
            pass
    return msgspec.msgpack.decode(raw)


def describe(exc: BaseException) -> ErrorInfo:
    """Capture an exception as text (and its args when msgpack can carry them)."""
    try:
        args = msgspec.Raw(encoder.encode(list(exc.args)))
    except Exception:
        args = NIL
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    return ErrorInfo(
        module=type(exc).__module__,
        qualname=type(exc).__qualname__,
        message=message,
        traceback="".join(traceback.format_exception(exc)),
        args=args,
    )
