"""Celery protocol 2 read and written, and Celery's result meta: no Celery, no server.

``CAPTURED`` is what Celery 5.7 (kombu 5.7, JSON, Redis) pushed for the chain
``add.s(2, 3, z=1).set(countdown=60, expires=3600, time_limit=30, soft_time_limit=20) |
next.s(10) | last.s()``, taken off the list before any worker saw it; the other cases are
built in the same form by :func:`celery_envelope`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest

from aqueue.contrib.celery.protocol import (
    CeleryTask,
    Refused,
    applied,
    envelope,
    failure_meta,
    queue_list,
    read_envelope,
    read_followers,
    read_meta,
    signature,
    success_meta,
)

MAX = 1 << 20

CAPTURED = (
    '{"body": "W1syLCAzXSwgeyJ6IjogMX0sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbC'
    "wgImNoYWluIjogW3sidGFzayI6ICJwcm9qLmxhc3QiLCAiYXJncyI6IFtdLCAia3dhcmdzIjoge30sICJvcH"
    "Rpb25zIjogeyJ0YXNrX2lkIjogIjUxMzRlNjIyLTg3ZjEtNGIwOS1iNDk1LTYwMDQ5YWFjOGNlYSIsICJyZX"
    "BseV90byI6ICIyYTlhMzIwMy02NWYyLTNiOGQtOTg3Ni0wNWZlZTk5NWEwN2QifSwgInN1YnRhc2tfdHlwZS"
    "I6IG51bGwsICJpbW11dGFibGUiOiBmYWxzZX0sIHsidGFzayI6ICJwcm9qLm5leHQiLCAiYXJncyI6IFsxMF"
    "0sICJrd2FyZ3MiOiB7fSwgIm9wdGlvbnMiOiB7InRhc2tfaWQiOiAiOTgzYmUwNDgtMjRmOC00OGRmLTgyYj"
    "MtNDEwMGJjYTJjNzdjIiwgInJlcGx5X3RvIjogIjJhOWEzMjAzLTY1ZjItM2I4ZC05ODc2LTA1ZmVlOTk1YT"
    "A3ZCJ9LCAic3VidGFza190eXBlIjogbnVsbCwgImltbXV0YWJsZSI6IGZhbHNlfV0sICJjaG9yZCI6IG51bG"
    'x9XQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers":'
    ' {"lang": "py", "task": "proj.add", "id": "01045328-89b8-4fc9-b7bd-1bc7b4c5faa4", "s'
    'hadow": null, "eta": "2026-12-07T12:44:31.813712+00:00", "expires": "2026-12-07T13:4'
    '3:31.813712+00:00", "group": null, "group_index": null, "retries": 0, "timelimit": ['
    '30, 20], "root_id": "01045328-89b8-4fc9-b7bd-1bc7b4c5faa4", "parent_id": null, "args'
    'repr": "(2, 3)", "kwargsrepr": "{\'z\': 1}", "origin": "gen1958@vm", "ignore_result": '
    'false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properti'
    'es": {"correlation_id": "01045328-89b8-4fc9-b7bd-1bc7b4c5faa4", "reply_to": "2a9a320'
    '3-65f2-3b8d-9876-05fee995a07d", "delivery_mode": 2, "expiration": "3600000", "delive'
    'ry_info": {"exchange": "", "routing_key": "capture-q-1f2e"}, "priority": 0, "body_en'
    'coding": "base64", "delivery_tag": "1543b078-900b-4ce5-96f8-50ebf670b129"}}'
)


def celery_envelope(
    *,
    headers: dict[str, Any] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    raw_body: bytes | None = None,
) -> bytes:
    """An envelope as kombu's Redis transport writes it for a Celery 5 protocol 2 message."""
    base_headers = {
        "lang": "py",
        "task": "proj.add",
        "id": "f3f0b0c4-1111-2222-3333-444455556666",
        "shadow": None,
        "eta": "2026-12-07T12:01:00.000000+00:00",
        "expires": "2026-12-07T13:00:00+00:00",
        "group": "g-1",
        "group_index": 0,
        "retries": 2,
        "timelimit": [30, 20],
        "root_id": "root-1",
        "parent_id": "parent-1",
        "argsrepr": "(2, 3)",
        "kwargsrepr": "{'z': 1}",
        "origin": "gen123@host",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    base_headers.update(headers or {})
    if body is None:
        body = [
            [2, 3],
            {"z": 1},
            {
                "callbacks": [signature("proj.log", queue="logs")],
                "errbacks": None,
                "chain": [signature("proj.last"), signature("proj.next", (10,))],
                "chord": None,
            },
        ]
    data = raw_body if raw_body is not None else json.dumps(body).encode()
    return json.dumps(
        {
            "body": base64.b64encode(data).decode(),
            "content-encoding": "utf-8" if content_type == "application/json" else "binary",
            "content-type": content_type,
            "headers": base_headers,
            "properties": {
                "correlation_id": base_headers["id"],
                "reply_to": "5c1c1c1c-aaaa-bbbb-cccc-dddddddddddd",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "celery", "routing_key": "celery"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": "0b2f0f0e-aaaa-4bbb-8ccc-0123456789ab",
            },
        }
    ).encode()


def test_a_captured_celery_envelope_reads() -> None:
    task = read_envelope(CAPTURED.encode(), MAX)
    assert (task.id, task.task, task.args, task.kwargs) == (
        "01045328-89b8-4fc9-b7bd-1bc7b4c5faa4",
        "proj.add",
        (2, 3),
        {"z": 1},
    )
    assert task.root_id == task.id and task.parent_id is None and task.group_id is None
    assert task.eta == dt.datetime.fromisoformat("2026-12-07T12:44:31.813712+00:00").timestamp()
    assert task.expires is not None and task.expires - task.eta == 3540.0
    assert (task.time_limit, task.soft_time_limit) == (30.0, 20.0)
    assert [s["task"] for s in task.chain] == ["proj.last", "proj.next"]  # the next one last
    assert task.reply_to == "2a9a3203-65f2-3b8d-9876-05fee995a07d"
    step = applied(task.chain[-1], (5,))
    assert (step.name, step.args, step.task_id) == (
        "proj.next",
        (5, 10),
        "983be048-24f8-48df-82b3-4100bca2c77c",
    )
    assert step.options["reply_to"] == task.reply_to


def test_headers_and_embed_map_onto_the_request() -> None:
    task = read_envelope(celery_envelope(), MAX)
    assert (task.id, task.task) == ("f3f0b0c4-1111-2222-3333-444455556666", "proj.add")
    assert (task.args, task.kwargs, task.retries) == ((2, 3), {"z": 1}, 2)
    assert task.eta == dt.datetime(2026, 12, 7, 12, 1, tzinfo=dt.UTC).timestamp()
    assert task.expires == dt.datetime(2026, 12, 7, 13, 0, tzinfo=dt.UTC).timestamp()
    assert (task.time_limit, task.soft_time_limit) == (30.0, 20.0)
    assert (task.root_id, task.parent_id, task.group_id) == ("root-1", "parent-1", "g-1")
    assert [s["task"] for s in task.callbacks] == ["proj.log"]
    assert [s["task"] for s in task.chain] == ["proj.last", "proj.next"]  # next step last
    assert task.reply_to == "5c1c1c1c-aaaa-bbbb-cccc-dddddddddddd"
    followers = read_followers(task.embed_header())
    assert followers.chain == task.chain and followers.callbacks == task.callbacks


def test_naive_times_are_utc_and_missing_ones_none() -> None:
    raw = celery_envelope(headers={"eta": "2026-12-07T12:01:00", "expires": None})
    task = read_envelope(raw, MAX)
    assert task.eta == dt.datetime(2026, 12, 7, 12, 1, tzinfo=dt.UTC).timestamp()
    assert task.expires is None


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("application/x-python-serialize", "pickle"),
        ("application/x-yaml", "yaml"),
        ("application/x-msgpack", "msgpack"),
        ("application/x-my-codec", "custom (application/x-my-codec)"),
    ],
)
def test_other_content_types_are_refused_by_name(content_type: str, named: str) -> None:
    raw = celery_envelope(content_type=content_type, raw_body=b"\x80\x04\x95 not read")
    with pytest.raises(Refused) as caught:
        read_envelope(raw, MAX)
    assert caught.value.reason == f"celery:unsupported-content-type {named}"
    assert caught.value.task_id == "f3f0b0c4-1111-2222-3333-444455556666"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"headers": {"task": "celery.chord_unlock"}}, "celery:unsupported-chord-unlock"),
        ({"headers": {"task": "celery.accumulate"}}, "celery:unsupported-builtin"),
        ({"body": [[1], {}, {"chord": signature("proj.body")}]}, "celery:unsupported-chord"),
        (
            {"body": [[1], {}, {"chain": [{**signature("g"), "subtask_type": "group"}]}]},
            "celery:unsupported-canvas",
        ),
        ({"body": {"task": "proj.add"}}, "celery:bad-message"),
        ({"headers": {"eta": "tomorrow"}}, "celery:bad-message"),
        ({"raw_body": b"[1, 2"}, "celery:bad-message"),
    ],
)
def test_what_aqueue_does_not_run_is_refused_with_a_reason(
    change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Refused) as caught:
        read_envelope(celery_envelope(**change), MAX)
    assert caught.value.reason.startswith(reason)


def test_protocol_1_and_oversized_messages_are_refused() -> None:
    envelope_v1 = json.loads(celery_envelope())
    del envelope_v1["headers"]["task"]
    with pytest.raises(Refused, match="celery:unsupported-protocol 1"):
        read_envelope(json.dumps(envelope_v1).encode(), MAX)
    with pytest.raises(Refused, match="celery:too-large"):
        read_envelope(celery_envelope(), 100)
    with pytest.raises(Refused, match="celery:bad-envelope"):
        read_envelope(b'{"body": 1, "content-type": "application/json"}', MAX)


def test_a_very_long_workflow_is_refused_rather_than_cut() -> None:
    chain = tuple(signature("proj.step", ("x" * 100,)) for _ in range(100))
    task = CeleryTask(id="t", task="proj.add", args=(), kwargs={}, chain=chain)
    with pytest.raises(Refused, match="celery:workflow-too-large"):
        task.embed_header()


def test_what_aqueue_sends_reads_back_as_celery_would_see_it() -> None:
    task = CeleryTask(
        id="id-1",
        task="proj.mul",
        args=(3,),
        kwargs={"by": 2},
        retries=1,
        eta=1_800_000_000.0,
        time_limit=9.0,
        root_id="root",
        parent_id="parent",
        chain=(signature("proj.z"),),
    )
    raw = envelope(task, queue="hi", priority=0, origin="aqueue@host")
    parsed = json.loads(raw)
    assert parsed["content-type"] == "application/json"
    assert parsed["properties"]["delivery_info"] == {"exchange": "", "routing_key": "hi"}
    headers = parsed["headers"]
    assert headers["argsrepr"] == "<1 args>"  # never the arguments themselves
    assert headers["eta"] == "2027-01-15T08:00:00+00:00"
    back = read_envelope(raw, MAX)
    assert (back.id, back.task, back.args, back.kwargs) == ("id-1", "proj.mul", (3,), {"by": 2})
    assert (back.retries, back.eta, back.time_limit) == (1, 1_800_000_000.0, 9.0)
    assert (back.root_id, back.parent_id, back.chain) == ("root", "parent", task.chain)


def test_signatures_apply_as_celery_applies_them() -> None:
    sig = signature("proj.add", (10,), {"k": 1}, queue="q")
    step = applied(sig, (5,))
    assert (step.name, step.args, step.kwargs) == ("proj.add", (5, 10), {"k": 1})
    assert step.task_id == sig["options"]["task_id"] and step.options["queue"] == "q"
    frozen = applied(signature("proj.add", (1, 2), immutable=True), (5,))
    assert frozen.args == (1, 2)


def test_priorities_map_onto_kombus_lists() -> None:
    assert queue_list("celery", 0) == "celery"
    assert queue_list("celery", 2) == "celery"
    assert queue_list("celery", 3) == "celery\x06\x163"
    assert queue_list("celery", 9) == "celery\x06\x169"


def test_result_meta_has_celerys_json_fields() -> None:
    meta = json.loads(success_meta("id-1", {"n": [1, 2]}, group_id="g", parent_id="p"))
    assert meta["status"] == "SUCCESS" and meta["result"] == {"n": [1, 2]}
    assert meta["task_id"] == "id-1" and meta["children"] == [] and meta["traceback"] is None
    assert dt.datetime.fromisoformat(meta["date_done"]).tzinfo is not None
    assert (meta["group_id"], meta["parent_id"]) == ("g", "p")
    failed = json.loads(
        failure_meta("id-2", "ValueError", "bad", "Traceback...", exc_module="builtins")
    )
    assert failed["status"] == "FAILURE"
    assert failed["result"] == {
        "exc_type": "ValueError",
        "exc_message": ["bad"],
        "exc_module": "builtins",
    }
    assert failed["traceback"] == "Traceback..."
    retry = json.loads(failure_meta("id-3", "IOError", "again", None, state="RETRY"))
    assert retry["status"] == "RETRY" and retry["date_done"] is None


def test_stored_meta_reads_back() -> None:
    ok = read_meta("a", success_meta("a", 7))
    assert ok.ready and ok.result == 7
    failed = read_meta("b", failure_meta("b", "KeyError", "k", "tb"))
    assert failed.error() == ("KeyError", "k") and failed.traceback == "tb"
    assert not read_meta("c", b'{"status": "STARTED", "result": null}').ready
    with pytest.raises(Refused, match="celery:bad"):
        read_meta("d", b"\x80\x04pickled")
