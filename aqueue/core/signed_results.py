"""Signed result records: a result backend seen through a keyring.

With signing on, the app's backend is a :class:`SignedBackend` around the real one: every
record stored is signed (with its task id as the signature's context, so a record cannot
be copied to another id), and every record read is verified before anyone decodes it. One
place for every writer and reader of records (workers, ``update_state``, revocations,
workflows, ``AsyncResult``, ``GroupResult``, chords). Readers get the plain record bytes;
a record that fails verification raises :class:`~aqueue.core.errors.SignatureError`.

The real backend keeps what it alone does (optional capabilities such as
:class:`~aqueue.core.protocols.RoutesResults`): find it with :func:`underlying`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

from .config import keyring_of
from .errors import ConfigurationError, SignatureError

if TYPE_CHECKING:
    from .config import Settings
    from .protocols import ResultBackend
    from .signing import Keyring

log = logging.getLogger("aqueue.signing")


class SignedBackend:
    """A :class:`~aqueue.core.protocols.ResultBackend` that signs and verifies records."""

    def __init__(self, inner: ResultBackend, conf: Settings) -> None:
        self.inner = inner
        self._conf = conf

    @property
    def keyring(self) -> Keyring:
        """The keyring the settings describe now (``conf.update()`` may rotate keys)."""
        keyring = keyring_of(self._conf)
        if keyring is None:
            raise ConfigurationError(
                "signing_keys were emptied while the app was connected: reconnect "
                "(app.close(), then use it again) to stop signing"
            )
        return keyring

    def __repr__(self) -> str:
        return f"SignedBackend({self.inner!r})"

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def store(
        self, task_id: str, record: bytes, *, state: str, attempt: int, ttl: float | None
    ) -> bool:
        signed = self.keyring.sign(record, context=task_id.encode())
        return await self.inner.store(task_id, signed, state=state, attempt=attempt, ttl=ttl)

    def verify(self, task_id: str, raw: bytes) -> bytes:
        """The record ``raw`` stored under ``task_id``, verified.

        Raises:
            SignatureError: unsigned (when required), unknown key, bad signature.
        """
        try:
            return self.keyring.verify(raw, task_id.encode())
        except SignatureError as exc:
            log.error("result record of %s refused (%s): %s", task_id, exc.reason, exc)
            raise SignatureError(
                exc.reason, f"the result record of {task_id} is not trusted: {exc}"
            ) from None

    async def get(self, task_id: str) -> bytes | None:
        raw = await self.inner.get(task_id)
        return None if raw is None else self.verify(task_id, raw)

    async def watch(self, task_id: str) -> AsyncGenerator[bytes, None]:
        stream = self.inner.watch(task_id)
        try:
            async for raw in stream:
                yield self.verify(task_id, raw)
        finally:
            await stream.aclose()

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        raws = await self.inner.get_many(task_ids)
        return [
            None if raw is None else self.verify(tid, raw)
            for tid, raw in zip(task_ids, raws, strict=True)
        ]

    async def forget(self, task_id: str) -> None:
        await self.inner.forget(task_id)

    async def chord_join(
        self, chord_id: str, member_id: str, size: int, *, failed: bool, ttl: float | None
    ) -> bool:
        return await self.inner.chord_join(chord_id, member_id, size, failed=failed, ttl=ttl)


def underlying(backend: ResultBackend | None) -> ResultBackend | None:
    """The real backend behind ``backend`` (itself when it is not signed)."""
    return backend.inner if isinstance(backend, SignedBackend) else backend
