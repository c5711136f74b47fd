"""The tasks the blocking-API tests send: the seed's day-4 arithmetic, and one that fails."""

from __future__ import annotations

from aqueue import App


def register(app: App) -> None:
    """Register ``div``, ``mul``, ``add``, ``sub`` and ``boom`` on ``app``."""

    @app.task(name="sync.div")
    async def div(x: float, y: float) -> float:
        return x / y

    @app.task(name="sync.mul")
    async def mul(x: float, y: float) -> float:
        return x * y

    @app.task(name="sync.add")
    async def add(x: float, y: float) -> float:
        return x + y

    @app.task(name="sync.sub")
    async def sub(x: float, y: float) -> float:
        return x - y

    @app.task(name="sync.boom")
    def boom(message: str) -> None:
        raise ValueError(message)
