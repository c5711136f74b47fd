"""RabbitMQ clean-up for the amqp rows (the bench's own queues only)."""

from __future__ import annotations

import asyncio
import contextlib

from ..config import AMQP_URL


def delete_queues(names: list[str]) -> None:
    async def run() -> None:
        import aio_pika

        conn = await aio_pika.connect(AMQP_URL)
        async with conn:
            for name in names:
                channel = await conn.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name)
                with contextlib.suppress(Exception):
                    await channel.close()

    with contextlib.suppress(Exception):
        asyncio.run(asyncio.wait_for(run(), 15))
