"""Tasks added to a running chord (``self.add_to_chord()``), without moving its count.

A chord fires when its ``n`` members have joined (``chord_join``, an idempotent set); ``n``
is fixed when the chord is applied, and a joiner passes the size it read, so growing ``n``
while members join could fire the chord early. Instead, the count never changes: a member
``X`` that added tasks joins only once *its slot* is complete, i.e. ``X`` and everything
it added (and everything those added, ...) succeeded.

* ``X`` marks the chord's meta (``additions``, written as attempt 1 so that building the
  chord again cannot clear it) and records the shapes of what it adds under
  ``chord-adds:<chord>:<X>`` (the whole list, rewritten on each add), both before
  publishing them. The list is final once ``X``'s result is stored.
* What ``X`` added carries the chord reference ``<chord>`` + ``\\x1f`` + ``X``: when it
  finishes, the engine checks ``X``'s slot and, if complete, joins the chord *as* ``X``.
  ``X``'s own completion does the same check when the meta is marked (so a chord nothing
  was added to costs its members no extra read).
* The check reads records after the caller's own result was stored, so of the tasks of a
  slot finishing at the same time the last one to store sees all the others done; joining
  as ``X`` twice is harmless (the set is idempotent, the chord fires once).
* A failure of anything added fails the chord at once, as a member's failure does.

When the chord fires, the added tasks' values follow the members' values, in the order
they were added (what members added, then what those added, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ..core import states
from ..core.message import decode_result
from ..core.nodes import Shape, leaves
from ..core.serialization import SerializerName, decode, encode, format_of

if TYPE_CHECKING:
    from ..core.protocols import ResultBackend

#: separates a chord id from the member whose slot a chord reference points into
SLOT: Final = "\x1f"
#: ``chord-adds:<chord>:<adder>``: the shapes of what a task added, in order
_ADDS: Final = "chord-adds:"


def slot_ref(chord_id: str, owner: str) -> str:
    """The chord reference of what ``owner`` (a member of ``chord_id``) adds to it."""
    return f"{chord_id}{SLOT}{owner}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """A chord reference as ``(chord id, owner)``; ``owner`` is ``None`` for a member."""
    chord_id, _, owner = ref.partition(SLOT)
    return chord_id, owner or None


def adds_key(chord_id: str, adder: str) -> str:
    """Where the shapes of what ``adder`` added to ``chord_id`` are stored."""
    return f"{_ADDS}{chord_id}:{adder}"


async def record(
    backend: ResultBackend,
    chord_id: str,
    adder: str,
    shapes: list[Shape],
    *,
    fmt: SerializerName,
    ttl: float,
) -> None:
    """Store ``adder``'s list of additions."""
    await backend.store(
        adds_key(chord_id, adder), encode(shapes, fmt), state="META", attempt=0, ttl=ttl
    )


def _shapes(raws: list[bytes | None]) -> list[Shape]:
    return [s for raw in raws if raw is not None for s in decode(raw, list[Any], format_of(raw))]


async def slot_done(backend: ResultBackend, chord_id: str, owner: str) -> bool:
    """Whether ``owner`` and everything it added (transitively) succeeded."""
    frontier = [owner]
    while frontier:
        keys = [*frontier, *(adds_key(chord_id, t) for t in frontier)]
        raws = await backend.get_many(keys)
        records, lists = raws[: len(frontier)], raws[len(frontier) :]
        for raw in records:
            if raw is None or decode_result(raw).state != states.SUCCESS:
                return False
        frontier = leaves(_shapes(lists))
    return True


class NotDone(Exception):
    """An added task's record is not SUCCESS when its chord fires (it failed meanwhile)."""

    def __init__(self, task_id: str, state: str) -> None:
        super().__init__(f"{task_id} is {state}")
        self.task_id = task_id
        self.state = state


async def added_values(
    backend: ResultBackend, chord_id: str, member_ids: tuple[str, ...]
) -> list[Any]:
    """The values of what the chord's members added, in order (see the module docstring).

    Raises:
        NotDone: an added task has no SUCCESS record.
    """
    out: list[Any] = []
    frontier = list(member_ids)
    while frontier:
        shapes = _shapes(await backend.get_many([adds_key(chord_id, t) for t in frontier]))
        ids = leaves(shapes)
        if not ids:
            break
        values: dict[str, Any] = {}
        for task_id, raw in zip(ids, await backend.get_many(ids), strict=True):
            found = decode_result(raw) if raw is not None else None
            if found is None or found.state != states.SUCCESS:
                raise NotDone(task_id, found.state if found else "missing")
            values[task_id] = (
                None if len(found.value) == 0 else decode(found.value, Any, format_of(raw or b""))
            )
        out += [_value(s, values) for s in shapes]
        frontier = ids
    return out


def _value(shape: Shape, values: dict[str, Any]) -> Any:
    return values[shape] if isinstance(shape, str) else [_value(s, values) for s in shape]
