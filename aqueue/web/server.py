"""``aqueue dashboard``: the dashboard served by uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING

import uvicorn

from ..core.errors import ConfigurationError
from .app import dashboard_app

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from aqueue.core.app import App

log = logging.getLogger("aqueue.web")


def is_loopback(address: str) -> bool:
    """Whether ``address`` only listens on this machine."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def serve(
    app: App,
    *,
    address: str = "127.0.0.1",
    port: int = 5555,
    read_only: bool = False,
    show_arguments: bool = False,
    basic_auth: str | None = None,
    token: str | None = None,
    max_tasks: int = 10_000,
) -> None:
    """Serve the dashboard until interrupted (SIGINT / SIGTERM: a graceful stop; open live
    streams are closed after two seconds)."""
    if not is_loopback(address) and basic_auth is None and token is None:
        log.warning(
            "dashboard on %s without --basic-auth or --token: anyone who reaches it can "
            "see the fleet%s",
            address,
            "" if read_only else " and act on it",
        )
    mounts: dict[str, ASGIApp] = {}
    try:  # the fleet's Prometheus metrics, when aqueue[prometheus] is installed
        from ..contrib.prometheus import metrics_app
    except (ImportError, ConfigurationError):
        log.info("no /metrics: prometheus-client is not installed (aqueue[prometheus])")
    else:
        mounts["/metrics"] = metrics_app(app)
    web = dashboard_app(
        app,
        read_only=read_only,
        show_arguments=show_arguments,
        basic_auth=basic_auth,
        token=token,
        max_tasks=max_tasks,
        mounts=mounts,
        close_app=True,
    )
    config = uvicorn.Config(
        web,
        host=address,
        port=port,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=2,
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()
