"""The dashboard and Flower's REST API (``aqueue dashboard``; docs/dashboard.md).

Needs the ``web`` extra (``pip install 'aqueue[web]'``): Starlette, Jinja2, uvicorn.

    from aqueue.web import dashboard_app
    fastapi_app.mount("/flower", dashboard_app(app, read_only=True))
"""

from .app import Dashboard, dashboard_app
from .state import State, TaskInfo, WorkerInfo

__all__ = ["Dashboard", "State", "TaskInfo", "WorkerInfo", "dashboard_app"]
