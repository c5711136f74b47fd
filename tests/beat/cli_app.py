"""Apps the ``aqueue beat`` command tests load by module:attribute (the tests point
``app`` at their own store first)."""

from __future__ import annotations

from aqueue import App
from aqueue.beat import crontab

app = App("beatcli", broker="memory://beatcli")
app.conf.beat_schedule = {
    "auto-sms-rating": {"task": "auto_sms_rating", "schedule": crontab(minute="*/10")}
}


@app.task
async def report(kind: str = "full") -> str:
    return kind


#: a bad code entry: every scheduler refuses to start, naming it
bad_app = App("beatbad", broker="memory://beatbad")
bad_app.conf.beat_schedule = {"broken": {"task": "x", "schedule": "every monday"}}

#: results over rpc:// cannot hold schedules
rpc_app = App("beatrpc", broker="amqp://guest:secret-pw@127.0.0.1:1//")
