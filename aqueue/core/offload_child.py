"""The child side of the process pool: a loop reading calls and writing replies.

A child is a fresh interpreter started by :class:`aqueue.core.offload.ProcessPool`. It talks
to the pool over its original stdin and stdout, moved to private descriptors at start so
that ``print()`` in task code goes to stderr instead of corrupting the frames. Every frame is
a 4-byte big-endian length and a msgpack body (no pickle: functions travel as module and
qualified name, arguments and results as msgpack).

Frames: the child sends :class:`Ready` once, then one :class:`Reply` per :class:`Call`. EOF
on its input means "exit now". ``SIGUSR1`` raises :class:`SoftTimeLimitExceeded` inside the
running function; ``SIGINT`` is ignored (a terminal's Ctrl-C is for the worker, which stops
its children itself).
"""

from __future__ import annotations

import faulthandler
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

import msgspec

from .arguments import ArgumentSpec
from .errors import ArgumentError, SoftTimeLimitExceeded
from .offload_wire import HEADER, MAX_FRAME, NIL, Call, Ready, Reply, describe, encoder, resolve
from .task import Task

#: environment variable carrying the parent's ``sys.path`` (JSON) to the bootstrap
PATH_ENV: Final = "AQUEUE_OFFLOAD_SYS_PATH"
#: ``python -c`` program that starts a child with the parent's import path
BOOTSTRAP: Final = (
    "import json, os, sys\n"
    f"sys.path[:] = json.loads(os.environ.pop({PATH_ENV!r}))\n"
    "from aqueue.core.offload_child import main\n"
    "main()\n"
)


_call_decoder = msgspec.msgpack.Decoder(Call)


class _SoftLimit:
    """Whether ``SIGUSR1`` may raise now: armed while a call runs, disarmed by firing once.

    Disarming on the first delivery means a late signal can never raise inside this module's
    own bookkeeping, and a signal arriving while idle is ignored.
    """

    def __init__(self) -> None:
        self.armed = False
        self.seconds: float | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            self.armed = False
            when = f" ({self.seconds}s)" if self.seconds is not None else ""
            raise SoftTimeLimitExceeded(f"soft time limit{when} exceeded")


_soft = _SoftLimit()
_resolved: dict[tuple[str, str], tuple[Callable[..., Any], ArgumentSpec | None]] = {}


def _function(module: str, qualname: str) -> tuple[Callable[..., Any], ArgumentSpec | None]:
    cached = _resolved.get((module, qualname))
    if cached is not None:
        return cached
    target = resolve(module, qualname)
    spec: ArgumentSpec | None
    if isinstance(target, Task):
        # ``run`` rather than ``fn``: a bind=True task gets this process's Task as ``self``.
        fn: Callable[..., Any] = target.run
        spec = target.spec
    else:
        fn = target
        try:
            spec = ArgumentSpec(fn, skip_first=False)
        except (TypeError, ValueError):  # no signature (some builtins): arguments as sent
            spec = None
    _resolved[(module, qualname)] = (fn, spec)
    return fn, spec


def _arguments(spec: ArgumentSpec | None, call: Call) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Decode arguments against the annotations, so a Struct or a tuple arrives as one."""
    if spec is not None:
        try:
            return spec.decode(call.args, call.kwargs, "msgpack")
        except ArgumentError:
            raise
        except TypeError:  # an annotation msgspec cannot decode into: take values as sent
            pass
    args: list[Any] = msgspec.msgpack.decode(call.args)
    kwargs: dict[str, Any] = msgspec.msgpack.decode(call.kwargs)
    return tuple(args), kwargs


def rss_kib() -> int:
    """This process's resident memory in KiB (peak RSS where ``/proc`` is missing)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


def _invoke(call: Call) -> Reply:
    try:
        _soft.seconds = call.soft
        _soft.armed = True
        fn, spec = _function(call.module, call.qualname)
        args, kwargs = _arguments(spec, call)
        value = fn(*args, **kwargs)
        _soft.armed = False
        try:
            body = encoder.encode(value)
        except Exception as exc:
            raise TypeError(
                f"the result of {call.module}.{call.qualname} cannot be sent back: msgpack "
                f"cannot encode it ({exc})"
            ) from exc
        if len(body) > MAX_FRAME - 64:  # room for the reply around it
            raise ValueError(f"the result of {call.module}.{call.qualname} is over 4 GiB")
        return Reply(value=msgspec.Raw(body), error=None, rss_kib=rss_kib())
    except BaseException as exc:
        # SystemExit and KeyboardInterrupt too: the call failed, the child lives on.
        _soft.armed = False
        return Reply(value=NIL, error=describe(exc), rss_kib=rss_kib())


def _read_exactly(stream: io.BufferedReader, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def _send(stream: io.BufferedWriter, message: Ready | Reply) -> None:
    body = encoder.encode(message)
    stream.write(HEADER.pack(len(body)))
    stream.write(body)
    stream.flush()


def _watch_parent(parent: int) -> None:
    """Exit when the parent dies mid-call (an idle child exits on EOF by itself)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def main() -> None:
    """Serve calls until the pool closes our input."""
    parent = os.getppid()
    faulthandler.enable()  # a segfault in C code leaves a Python traceback on stderr
    calls_in = os.dup(0)
    replies_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # task output goes to stderr, never between our frames
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # even if the worker ignores it
    signal.signal(signal.SIGUSR1, _soft.handler)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    with open(calls_in, "rb") as reader, open(replies_out, "wb") as writer:
        _send(writer, Ready(pid=os.getpid()))
        while True:
            header = _read_exactly(reader, HEADER.size)
            if header is None:
                return
            body = _read_exactly(reader, HEADER.unpack(header)[0])
            if body is None:
                return
            call = _call_decoder.decode(body)
            try:
                reply = _invoke(call)
            except SoftTimeLimitExceeded as exc:  # fired in the gap after the call ended
                reply = Reply(value=NIL, error=describe(exc), rss_kib=rss_kib())
            _send(writer, reply)
