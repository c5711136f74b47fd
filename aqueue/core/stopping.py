"""Stopping a long-running command on SIGTERM / SIGINT, and giving the signals back after.

An event loop's signal handlers outlive it: uvloop leaves SIGINT and SIGTERM pointing at
the closed loop, so a worker, supervisor or beat run inside a bigger program (an embedding
application, a test) would leave that program deaf to Ctrl-C once it returned.
:func:`stop_on_signals` installs the handlers for its block only and puts back what was
there before.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

__all__ = ["STOP_SIGNALS", "stop_on_signals"]

#: the signals that ask a worker, supervisor or scheduler to stop gracefully
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    stop: Callable[[], object], signals: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> Iterator[None]:
    """Call ``stop`` on the running loop when one of ``signals`` arrives, inside the block;
    each signal's previous handler is restored when the block ends."""
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
