"""``aqueue events``: print the monitoring event stream live (Celery's ``celery events --dump``).

One line per event (:func:`describe`), or with ``--json`` one JSON object per line (Celery's
event dict: ``type``, ``timestamp``, ``hostname``, ... and the type's fields). ``--since``
catches up on the events still kept from that many seconds ago first; ``--type`` keeps the
types matching its globs; ``--count`` and ``--timeout`` end it (for scripts and tests);
Ctrl-C ends it quietly. See docs/fleet.md, "Events".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from .core.app import App
from .core.events import Event, EventStream, encode_event

#: fields every event has, shown at the start of a line rather than as ``key=value``
_HEAD = frozenset({"type", "timestamp", "hostname", "pid", "clock", "utcoffset"})
#: how long one read waits before looking at the clock again (``--timeout``)
_READ_WAIT = 0.5


def describe(event: Event) -> str:
    """One readable line: time (UTC), sender, type, then the type's fields as ``key=value``
    (a traceback by its last line)."""
    when = datetime.fromtimestamp(event.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    parts = [when, event.hostname, event.type]
    for key, value in event.to_dict().items():
        if key in _HEAD:
            continue
        if key == "traceback" and isinstance(value, str):
            lines = value.strip().splitlines()
            value = lines[-1] if lines else ""
        if key == "runtime" and isinstance(value, float):
            value = f"{value:.6f}s"
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def as_json(event: Event) -> str:
    """The event as one line of JSON (Celery's event dict, as it came on the wire)."""
    return encode_event(event).decode()


async def dump(
    app: App,
    echo: Callable[[str], None],
    *,
    json_lines: bool = False,
    since: float | None = None,
    types: Sequence[str] = (),
    count: int | None = None,
    timeout: float | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Print events as they come until ``count`` were printed or ``timeout`` seconds
    passed (neither: until cancelled); how many were printed.

    Args:
        since: seconds back: the events still kept from then on come first.
        types: globs of the event types to print (none: every type).
        on_ready: called once subscribed: nothing published from then on is missed.
    """
    start = time.time()
    stream = EventStream(
        app, since=start - since if since is not None else None, types=list(types) or None
    )
    deadline = time.monotonic() + timeout if timeout is not None else None
    printed = 0
    line = as_json if json_lines else describe
    try:
        await stream.subscribe()
        if on_ready is not None:
            on_ready()
        while count is None or printed < count:
            wait = _READ_WAIT
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            batch = await stream.next_batch(wait)
            if count is not None:
                batch = batch[: count - printed]
            if batch:  # one write per batch: a busy stream is thousands of lines a second
                echo("\n".join(map(line, batch)))
                printed += len(batch)
    finally:
        await stream.aclose()
    return printed
