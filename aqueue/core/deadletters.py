"""``app.control.dead_letters``: list, show, replay and purge dead letters.

A dead letter is a message a worker set aside with a reason (undecodable, unknown task,
bad arguments, ``max_deliveries`` crashes, a failure with ``dead_letter`` on). Replaying
one puts its message back in its queue as a new message: the broker forgets its delivery
count, the header ``x-aqueue-replayed`` counts the replays, ``prior_attempts`` is raised
past the attempt the result backend recorded, and that record (the FAILURE the dead
letter left) is deleted, so the replay runs instead of being taken for a finished
duplicate. See docs/fleet.md, "Dead letters".
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

import msgspec

from .config import keyring_of
from .errors import AqueueError, ConfigurationError, DecodeError, SignatureError
from .message import INTERNAL_HEADER_PREFIX, decode_message, decode_result
from .protocols import DeadLetter, Outgoing, ReplaysDeadLetters
from .serialization import encode, format_of

if TYPE_CHECKING:
    from .app import App

#: how many times a message was replayed from the dead letters
REPLAYED_HEADER = f"{INTERNAL_HEADER_PREFIX}replayed"
#: dead letters looked at to find one by id, or to replay them all
SCAN_LIMIT = 100_000


class DeadLetterError(AqueueError):
    """A dead letter cannot be found or replayed (the message says why)."""


class DeadLetters:
    """The dead-letter store of the app's broker."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def list(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters (of ``queue``, or of every queue), newest first."""
        broker = await self.app.connected_broker()
        return await broker.dead_letters(queue, limit)

    async def get(self, task_id: str, queue: str | None = None) -> DeadLetter:
        """The newest dead letter of ``task_id``.

        Raises:
            DeadLetterError: there is none (among the newest ``SCAN_LIMIT``).
        """
        for letter in await self.list(queue, SCAN_LIMIT):
            if letter.id == task_id:
                return letter
        raise DeadLetterError(f"no dead letter with id {task_id!r}")

    async def replay(self, task_id: str, queue: str | None = None) -> DeadLetter:
        """Put the newest dead letter of ``task_id`` back in its queue; return it.

        Raises:
            DeadLetterError: there is none, its body was cut when it was stored, it is not
                a task message, or the id is queued again already.
            ConfigurationError: the broker cannot replay dead letters.
        """
        await self._broker()  # a broker that cannot replay says so before any lookup
        letter = await self.get(task_id, queue)
        await self._replay(letter)
        return letter

    async def replay_all(self, queue: str | None = None) -> tuple[int, builtins.list[str]]:
        """Replay every dead letter (of ``queue``); ``(replayed, errors)``, an error per
        letter that could not be (named by id, with why), oldest first."""
        await self._broker()
        replayed, errors = 0, builtins.list[str]()
        for letter in reversed(await self.list(queue, SCAN_LIMIT)):
            try:
                await self._replay(letter)
            except DeadLetterError as exc:
                errors.append(str(exc))
            else:
                replayed += 1
        return replayed, errors

    async def purge(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue`` (``None``: all); how many."""
        return await (await self._broker()).purge_dead_letters(queue)

    async def _broker(self) -> ReplaysDeadLetters:
        broker = await self.app.connected_broker()
        if not isinstance(broker, ReplaysDeadLetters):
            raise ConfigurationError(
                f"the broker {type(broker).__name__} cannot replay or purge dead letters"
            )
        return broker

    async def _replay(self, letter: DeadLetter) -> None:
        broker = await self._broker()
        message, stored = await self._message(letter)
        # the record goes first: a worker claiming the replay at once must not find it
        backend = self.app.backend
        if backend is not None and stored is not None:
            await backend.forget(letter.id)
        if not await broker.replay_dead_letter(letter, message):
            if backend is not None and stored is not None:  # put it back as it was
                record = decode_result(stored)
                await backend.store(
                    letter.id,
                    stored,
                    state=record.state,
                    attempt=record.attempt,
                    ttl=self.app.conf.result_expires,
                )
            raise DeadLetterError(
                f"dead letter {letter.id} was not replayed: it is gone, or the id is queued "
                "or running again"
            )

    async def _message(self, letter: DeadLetter) -> tuple[Outgoing, bytes | None]:
        """The message to enqueue for ``letter``, and the task's stored record."""
        if letter.size > len(letter.body):
            raise DeadLetterError(
                f"dead letter {letter.id} cannot be replayed: only the first {len(letter.body)} "
                f"of its {letter.size} bytes were kept"
            )
        keyring = keyring_of(self.app.conf)
        body = letter.body
        if keyring is not None:  # never sign again what nobody vouched for
            try:
                body = keyring.verify(body)
            except SignatureError as exc:
                raise DeadLetterError(
                    f"dead letter {letter.id} cannot be replayed: its signature is not "
                    f"trusted ({exc.reason}: {exc})"
                ) from None
        try:
            msg = decode_message(body, self.app.conf.max_message_bytes)
        except DecodeError as exc:
            raise DeadLetterError(
                f"dead letter {letter.id} cannot be replayed: not a task message ({exc})"
            ) from None
        prior = msg.prior_attempts
        await self.app.connect()
        backend = self.app.backend
        stored = await backend.get(msg.id) if backend is not None else None
        if stored is not None:
            prior = max(prior, decode_result(stored).attempt)
        times = int(msg.headers.get(REPLAYED_HEADER, "0") or 0) + 1
        again = msgspec.structs.replace(
            msg, headers={**msg.headers, REPLAYED_HEADER: str(times)}, prior_attempts=prior
        )
        body = encode(again, format_of(body))
        if keyring is not None:
            body = keyring.sign(body, eta=msg.eta)
        message = Outgoing(id=msg.id, queue=letter.queue, body=body, priority=msg.priority)
        return message, stored


def describe(letter: DeadLetter) -> dict[str, object]:
    """A dead letter as ``aqueue dlq`` prints it in JSON (the body as text if it is)."""
    try:
        text: str | None = letter.body.decode()
    except UnicodeDecodeError:
        text = None
    return {
        "id": letter.id,
        "queue": letter.queue,
        "reason": letter.reason,
        "at": letter.at,
        "size": letter.size,
        "kept": len(letter.body),
        "body": text if text is not None else letter.body.hex(),
        "body_encoding": "text" if text is not None else "hex",
    }


def task_of(letter: DeadLetter, max_bytes: int) -> tuple[str | None, dict[str, str]]:
    """The task name and headers of a dead letter's message, if it decodes."""
    try:
        msg = decode_message(letter.body, max_bytes)
    except DecodeError:
        return None, {}
    return msg.task, dict(msg.headers)
