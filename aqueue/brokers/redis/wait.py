"""The Redis broker's blocking claim: ``BLPOP`` and the claim script in one round trip.

Written together on one connection, so Redis runs the claim the moment the wait ends and a
woken worker gets its messages in the reply to its wait (see ``RedisBroker._wait_and_claim``
for the cancellation protocol around it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from aqueue.transports.redis import redispy
from aqueue.transports.redis.scripts import command
from aqueue.transports.redis.settings import RedisSettings

from .scripts import CLAIM

__all__ = ["BlockingClaim"]


class BlockingClaim:
    """One wait-then-claim exchange on a connection of its own (see ``_wait_and_claim``)."""

    def __init__(
        self,
        settings: RedisSettings,
        client: redispy.AsyncClient,
        notify: list[str],
        block: float,
        keys: list[str],
        args: list[str | bytes | int | float],
        *,
        unblockable: bool,
    ) -> None:
        self._settings = settings
        self._client = client
        self._commands: list[bytes] = [
            redispy.pack_command("BLPOP", *notify, f"{block:.3f}"),
            redispy.pack_command("EVALSHA", CLAIM.sha, len(keys), *keys, *args),
        ]
        if unblockable:
            self._commands.insert(0, redispy.pack_command("CLIENT", "ID"))
        self._unblockable = unblockable
        self._block = block
        #: the server refused ``CLIENT ID`` (an ACL without it): do not ask again
        self.client_id_refused = False
        # the server's id for the connection, known once its first reply is read
        self._client_id: int | None = None
        self._known = asyncio.Event()

    async def run(self) -> list[Any] | None:
        """The claim's reply, or ``None`` if the script was not loaded (it did not run)."""
        conn = await redispy.take(self._client)
        try:
            await redispy.send(conn, self._commands, check_health=True)
            # every reply is read, error replies included, so the connection stays in
            # step (a failed read disconnects it: redis-py does that on any exception)
            replies: list[Any] = []
            for _ in self._commands:
                replies.append(await redispy.read_reply(conn))
                if self._unblockable and len(replies) == 1:
                    if isinstance(replies[0], ResponseError):
                        self.client_id_refused = True
                    else:
                        self._client_id = int(replies[0])
                    self._known.set()
        finally:
            self._known.set()
            await redispy.give_back(self._client, conn)
        wait, claim = replies[-2], replies[-1]
        if isinstance(wait, ResponseError):
            raise wait
        if isinstance(claim, NoScriptError):
            return None
        if isinstance(claim, ResponseError):
            raise claim
        return list(claim)

    async def unblock(self, call: asyncio.Future[Any]) -> None:
        """End the wait at once, so the shielded exchange finishes (and hands back)."""
        async with asyncio.timeout(self._settings.operation_timeout + self._block):
            await self._known.wait()
            if self._client_id is None:
                return
            while not call.done():
                # 0 while the wait has not reached the server yet, or is over already
                if await command(self._client, "CLIENT", "UNBLOCK", self._client_id):
                    return
                await asyncio.sleep(0.005)
