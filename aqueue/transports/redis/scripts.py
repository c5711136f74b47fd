"""Lua scripts: loaded from ``.lua`` files once, run by SHA, one round trip per batch.

A broker or backend keeps its scripts in a ``lua/`` folder beside its code and loads each
once, when its module is imported (:meth:`Script.load`: package files, no network). A
script may start with the shared helpers (``lua/helpers.lua`` here: ``now``, ``fmt``,
``split``, ``column``) and with constants from Python (``local NAME = value`` lines), so a
number both sides must agree on is written once.

Calls run by ``EVALSHA``; a server that answers ``NOSCRIPT`` (restarted, or flushed with
``SCRIPT FLUSH``) is sent the script and the calls it refused run again: that rule is
:class:`ScriptBatch`, shared by every way of sending below (the asyncio client, the
blocking client, a connection the caller holds).

Nothing here does I/O beyond reading the package's script files at import, and nothing here
ever formats a password.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import redispy

__all__ = [
    "HELPERS",
    "NotSent",
    "ReplicasMissing",
    "Script",
    "ScriptBatch",
    "ScriptCall",
    "command",
    "pack_fields",
    "pack_script_call",
    "run_scripts",
    "run_scripts_on",
    "run_scripts_once",
    "run_scripts_sync",
]

#: a constant handed to a script: a number, a plain string, or a set of plain strings (a
#: Lua table of ``name = true``)
LuaConstant = int | str | Collection[str]


def command(target: Any, *args: Any) -> Any:
    """``target.execute_command(*args)``: a client, a pipeline, async or blocking.

    redis-py's typed command wrappers return ``Awaitable[T] | T`` unions and add a Python
    call layer per command; the raw form is both cheaper and simpler to type.
    """
    return target.execute_command(*args)


def pack_fields(fields: Sequence[bytes | str]) -> tuple[bytes, bytes]:
    """Pack many script arguments into two: big-endian u32 lengths, and the joined bytes.

    redis-py encodes and frames every argument in Python (microseconds each, and its
    asyncio framing re-copies a growing buffer); a batch of a thousand settlements would
    spend more time there than in Redis. The scripts split the pair back (``split``).
    """
    encoded = [f if isinstance(f, bytes) else f.encode() for f in fields]
    return struct.pack(f">{len(encoded)}I", *map(len, encoded)), b"".join(encoded)


def lua_source(path: Traversable) -> str:
    """A ``.lua`` file of the package, as text."""
    return path.read_text(encoding="utf-8")


#: the helpers every script may start with: now(), fmt(x), split(lens, data), column(f, w, k)
HELPERS = lua_source(files(__package__) / "lua" / "helpers.lua")


def _lua_literal(name: str, value: LuaConstant) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str | Collection):
        raise TypeError(f"Lua constant {name}: {value!r} is not a number, string or set")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _lua_string(name, value)
    items = ", ".join(f"[{_lua_string(name, item)}] = true" for item in sorted(value))
    return "{" + items + "}"


def _lua_string(name: str, text: str) -> str:
    if not text.isprintable() or any(c in text for c in "'\\"):
        raise ValueError(f"Lua constant {name}: {text!r} needs quoting; keep it plain")
    return f"'{text}'"


class Script:
    """A Lua script run by SHA, loaded on first ``NOSCRIPT`` (e.g. after a restart)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    @classmethod
    def load(
        cls,
        path: Traversable,
        *,
        uses: Sequence[str] = (),
        constants: Mapping[str, LuaConstant] | None = None,
    ) -> Script:
        """The script in ``path`` (a ``.lua`` file of a package), named after the file.

        Args:
            path: e.g. ``files(__package__) / "lua" / "claim.lua"``.
            uses: Lua source put first, in order (e.g. :data:`HELPERS`).
            constants: ``local NAME = value`` lines put after ``uses``: the Python side's
                numbers and names the script must agree with.
        """
        lines = [f"local {n} = {_lua_literal(n, v)}\n" for n, v in (constants or {}).items()]
        return cls(path.name.removesuffix(".lua"), "".join([*uses, *lines, lua_source(path)]))

    def __repr__(self) -> str:
        return f"<Script {self.name} {self.sha[:8]}>"


#: the command that loads a script, as one name: a Redis Cluster client routes it to every
#: master by that name (redis-py < 8 looks up only the first word), and redis-py splits it
#: into its two words when it frames it
_SCRIPT_LOAD = "SCRIPT LOAD"

#: one script invocation: (script, keys, args)
ScriptCall = tuple[Script, Sequence[str | bytes], Sequence[str | bytes | int | float]]

#: framed "EVALSHA <sha> <numkeys> <keys...>" per script and key set (one per queue, in
#: practice), so a call frames only its arguments
_HEADS: dict[tuple[str, tuple[str | bytes, ...]], bytes] = {}


def pack_script_call(call: ScriptCall) -> bytes:
    """``EVALSHA`` of one script call, framed (see :func:`redispy.pack_command`)."""
    script, keys, args = call
    key = (script.sha, tuple(keys))
    head = _HEADS.get(key)
    if head is None:
        head = redispy.frame(["EVALSHA", script.sha, len(keys), *keys])
        if len(_HEADS) < 4096:
            _HEADS[key] = head
    return b"*%d\r\n%s%s" % (3 + len(keys) + len(args), head, redispy.frame(args))


class ScriptBatch:
    """The ``NOSCRIPT`` rule, once for every way of sending script calls.

    Send :meth:`pending`, hand every reply (error replies as exception objects) to
    :meth:`take`: it keeps the results and returns the scripts the server did not have.
    Load those and send :meth:`pending` again (only the refused calls: ``NOSCRIPT`` means a
    call did not run, so sending it again cannot apply it twice); once :meth:`take` returns
    nothing, :attr:`results` holds every reply in call order. Any other error reply is
    raised (the first one), and so is a second ``NOSCRIPT`` for the same batch.
    """

    __slots__ = ("_calls", "_loaded", "_todo", "results")

    def __init__(self, calls: Sequence[ScriptCall]) -> None:
        self._calls = calls
        self._todo: Sequence[int] = range(len(calls))
        self._loaded = False
        #: each call's reply, in call order (complete once :meth:`take` returned nothing)
        self.results: list[Any] = [None] * len(calls)

    def pending(self) -> list[ScriptCall]:
        """The calls to send now."""
        calls = self._calls
        return [calls[i] for i in self._todo]

    def take(self, replies: Sequence[Any]) -> list[Script]:
        """Record the replies to :meth:`pending`; the scripts to load before sending again."""
        missing: list[int] = []
        failure: Exception | None = None
        results = self.results
        for i, reply in zip(self._todo, replies, strict=True):
            if isinstance(reply, NoScriptError):
                missing.append(i)
            elif isinstance(reply, Exception):
                failure = failure or reply
            else:
                results[i] = reply
        if failure is not None:
            raise failure
        if not missing:
            return []
        if self._loaded:
            raise RedisError("scripts could not be loaded")
        self._loaded = True
        self._todo = missing
        return list({self._calls[i][0].sha: self._calls[i][0] for i in missing}.values())


async def run_scripts(
    client: redispy.AsyncClient, calls: Sequence[ScriptCall], *, confirm: Confirm = None
) -> list[Any]:
    """Run script calls in one round trip (a pipeline when several), returning their replies.

    Raises the first error reply. Error text never includes the arguments (message bodies);
    redis-py's pipeline would add them, so errors are collected with ``raise_on_error=False``.

    Args:
        confirm: ``(replicas, timeout)``: ``WAIT`` for that many replicas to confirm the
            writes, in the same pipeline; :class:`ReplicasMissing` if fewer did.
    """
    batch = ScriptBatch(calls)
    while True:
        replies = await _send(client, batch.pending(), confirm)
        confirmed: Any = replies.pop() if confirm is not None else None
        missing = batch.take(replies)
        if not missing:
            break
        for script, node in _loads(client, missing, batch.pending()):
            if node is None:
                await command(client, _SCRIPT_LOAD, script.source)
            else:
                await _load_on(client, script, node)
    if confirm is not None:
        _check_confirmed(confirmed, confirm)
    return batch.results


def _check_confirmed(confirmed: Any, confirm: tuple[int, float]) -> None:
    """Raise unless ``confirmed`` (a ``WAIT`` reply) reaches ``confirm``'s replicas."""
    if isinstance(confirmed, Exception):
        raise confirmed
    if int(confirmed) < confirm[0]:
        raise ReplicasMissing(
            f"written on the master, but {int(confirmed)} of the {confirm[0]} replica(s) "
            f"asked for confirmed it within {confirm[1]:g}s (wait_replicas, wait_timeout)"
        )


def _load_on(client: Any, script: Script, node: Any) -> Any:
    """``SCRIPT LOAD`` on one node of a cluster (awaitable for the asyncio client)."""
    return client.execute_command(_SCRIPT_LOAD, script.source, target_nodes=node)


def _loads(
    client: redispy.AsyncClient | redispy.SyncClient,
    missing: Sequence[Script],
    refused: Sequence[ScriptCall],
) -> list[tuple[Script, Any]]:
    """What to load where: each missing script on one server (node ``None``); on a Redis
    Cluster, on the node of each refused call's keys only (a restarted or promoted master
    lacks the scripts; loading on every master would fail while another one is down)."""
    if not isinstance(client, redispy.AsyncRedisCluster | redispy.SyncRedisCluster):
        return [(script, None) for script in missing]
    by_name: dict[tuple[str, str], tuple[Script, Any]] = {}
    for script, keys, _ in refused:
        cluster: Any = client  # get_node_from_key takes str only in redis-py's annotations
        node: Any = cluster.get_node_from_key(keys[0]) if keys else cluster.get_random_node()
        by_name.setdefault((script.sha, str(node.name)), (script, node))
    return list(by_name.values())


async def _send(
    client: redispy.AsyncClient, calls: list[ScriptCall], confirm: Confirm = None
) -> list[Any]:
    if len(calls) == 1 and confirm is None:  # no pipeline for one call: cheaper
        script, keys, args = calls[0]
        try:
            return [await command(client, "EVALSHA", script.sha, len(keys), *keys, *args)]
        except NoScriptError as exc:
            return [exc]
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        command(pipe, "EVALSHA", script.sha, len(keys), *keys, *args)
    if confirm is not None:  # on the writes' connection: WAIT counts what it wrote
        command(pipe, "WAIT", confirm[0], _ms(confirm[1]))
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies


def run_scripts_sync(client: redispy.SyncClient, calls: Sequence[ScriptCall]) -> list[Any]:
    """The blocking twin of :func:`run_scripts` (always a pipeline)."""
    batch = ScriptBatch(calls)
    while missing := batch.take(_pipeline(client, batch.pending()).execute(raise_on_error=False)):
        for script, node in _loads(client, missing, batch.pending()):
            if node is None:
                command(client, _SCRIPT_LOAD, script.source)
            else:
                _load_on(client, script, node)
    return batch.results


def _pipeline(client: redispy.SyncClient, calls: list[ScriptCall]) -> Any:
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        command(pipe, "EVALSHA", script.sha, len(keys), *keys, *args)
    return pipe


class NotSent(RedisError):
    """No connection could be made for a call, or the server refused it unrun because it is
    a replica now (a failover): nothing of it ran."""


class ReplicasMissing(RedisError):
    """Calls ran on the master, but fewer replicas than asked confirmed them in time
    (``WAIT``): a failover now could lose them."""


#: ``(replicas, timeout in seconds)``: a ``WAIT`` sent after the calls; ``None``: no wait
Confirm = tuple[int, float] | None


async def run_scripts_once(
    client: redispy.AsyncClient, calls: Sequence[ScriptCall], *, confirm: Confirm = None
) -> list[Any]:
    """:func:`run_scripts` for calls that must never be sent twice (publishes).

    redis-py's retry re-sends a command whose connection failed, whether or not the server
    had already run it. For a publish, that turns a lost reply into a silent second send
    (refused as a duplicate, or, with no dedupe window, enqueued twice). Here a connection
    is checked out first (connecting and health-checking with redis-py's retries: nothing
    of the call is on the wire yet), then the call is written exactly once; a connection
    error after that propagates, and the caller reports the outcome as unknown.

    Raises:
        NotSent: no usable connection could be made (or the server turned out to be a
            replica); the calls certainly did not run.
        ReplicasMissing: ``confirm`` was given and fewer replicas confirmed the calls.
        redis.exceptions.ConnectionError: the connection failed after the calls were
            (maybe partly) written: they may or may not have run.
    """
    try:
        conn = await redispy.take(client)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise NotSent(f"could not connect, nothing was sent ({exc})") from exc
    try:
        return await run_scripts_on(conn, calls, confirm=confirm)
    finally:
        await redispy.give_back(client, conn)


async def run_scripts_on(
    conn: redispy.Connection, calls: Sequence[ScriptCall], *, confirm: Confirm = None
) -> list[Any]:
    """Write script calls once on a connection the caller holds and read every reply.

    The connection is (re)connected and health-checked first. For calls that must not be
    re-sent (see :func:`run_scripts_once`): nothing here retries after the write, except a
    call the server refused unrun (``NOSCRIPT``).

    Args:
        confirm: ``(replicas, timeout)``: ``WAIT`` for that many replicas to confirm the
            connection's writes, written in the same round trip as the calls.

    Raises:
        NotSent: the connection could not be made usable, or the server refused the first
            call as a replica (``READONLY``: a failover); nothing ran.
        ReplicasMissing: fewer than ``confirm``'s replicas confirmed within its timeout.
    """
    try:
        await redispy.make_usable(conn)  # a PING if it sat idle too long: still ours unsent
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise NotSent(f"connection unusable, nothing was sent ({exc})") from exc
    batch = ScriptBatch(calls)
    wait = [] if confirm is None else [redispy.pack_command("WAIT", confirm[0], _ms(confirm[1]))]
    while True:
        replies = await _exchange(conn, [*map(pack_script_call, batch.pending()), *wait])
        confirmed: Any = replies.pop() if wait else None
        missing = batch.take(replies)
        if not missing:
            break
        loading = (redispy.pack_command("SCRIPT", "LOAD", script.source) for script in missing)
        for reply in await _exchange(conn, loading):
            if isinstance(reply, Exception):
                raise reply
    if confirm is not None:
        try:
            _check_confirmed(confirmed, confirm)
        except ReplicasMissing:
            # reconnect before the next use: behind Sentinel this server may be a master
            # that was replaced (it has lost its replicas), and a connect asks again
            await redispy.drop(conn)
            raise
    return batch.results


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))  # WAIT's 0 would wait forever


async def _exchange(conn: redispy.Connection, commands: Iterable[bytes]) -> list[Any]:
    """Write framed commands at once, then read one reply per command (errors as values,
    so the connection stays in step).

    Raises:
        NotSent: the first command was refused by a server that is a replica now (a
            failover): it did not run, nor did any after it (a replica stays one).
    """
    packed = list(commands)
    await redispy.send(conn, packed)
    replies: list[Any] = []
    for _ in packed:
        try:
            reply = await redispy.read_reply(conn)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not replies and redispy.demoted(exc):
                raise NotSent("the server is a replica now (a failover): nothing ran") from exc
            raise
        if not replies and redispy.demoted(reply):
            # a plain connection hands READONLY back as a reply: nothing of it ran either
            await redispy.drop(conn)
            raise NotSent("the server is a replica now (a failover): nothing ran")
        replies.append(reply)
    return replies
