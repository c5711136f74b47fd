"""Flower's REST API against a real worker sending events, on Redis and SQLite: the
dashboard in process (httpx's ASGI transport), the worker embedded in the same loop. The
requests are Flower's documented examples (``curl -X POST -d ...``: form bodies, or JSON
sent as a form), so a script written for Flower works unchanged.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount

from aqueue import App
from aqueue.web import Dashboard, dashboard_app

from ..conftest import delete_redis_prefix, make_url, prefix_of
from .helpers import SEED_FIELDS, task_state, until
from .webapp import make_app

WORKER = "w1@web"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends


class Fleet:
    def __init__(self, app: App, board: Dashboard, client: httpx.AsyncClient) -> None:
        self.app, self.board, self.client = app, board, client


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), pytest.param("sqlite")])
async def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Fleet]:
    url = make_url(request.param, tmp_path)
    app = make_app(url)
    try:
        async with app, app.worker(task_events=True, hostname=WORKER, concurrency=4):
            web = dashboard_app(app, show_arguments=True)
            board: Dashboard = web.state.dashboard
            transport = httpx.ASGITransport(app=web)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield Fleet(app, board, c)
            await board.close()
    finally:
        if request.param == "redis":
            delete_redis_prefix(prefix_of(url))


async def seed_chain(f: Fleet) -> list[str]:
    """The seed's workflow: ``div.s(4, 2) | mul.s(3) | add.s(6) | sub.s(2)``; its ids."""
    t = f.app.tasks
    handle = await (
        t["div"].s(4, 2) | t["mul"].s(3) | t["add"].s(6) | t["diff-of-two-numbers"].s(2)
    ).apply_async()
    assert await handle.get(timeout=15) == 10
    ids = [handle.id]
    node = handle.parent
    while node is not None:
        ids.insert(0, node.id)
        node = node.parent
    return ids


async def test_task_info_has_the_seeds_fields_with_true_values(fleet: Fleet) -> None:
    f = fleet
    await f.client.get("/api/task/types")  # the first request starts the model
    before = time.time()
    ids = await seed_chain(f)
    await until(f.board, lambda: task_state(f.board, ids[-1]) == "SUCCESS")
    response = await f.client.get(f"/api/task/info/{ids[-1]}")
    assert response.status_code == 200
    info = response.json()
    assert list(info) == [*SEED_FIELDS[:26], "root_id", "parent_id", "children", "root", "parent"]
    assert set(info) == set(SEED_FIELDS)
    assert info["uuid"] == ids[-1] and info["name"] == "diff-of-two-numbers"
    assert info["state"] == "SUCCESS" and info["worker"] == WORKER
    for key in ("sent", "received", "started", "succeeded", "timestamp", "runtime"):
        assert isinstance(info[key], float), key
    assert before <= info["sent"] <= info["received"] <= info["started"] <= info["succeeded"]
    assert info["timestamp"] == info["succeeded"] and 0 <= info["runtime"] < 5
    for key in ("failed", "retried", "revoked", "rejected", "exception", "traceback", "eta"):
        assert info[key] is None, key
    assert info["args"] == "(12.0, 2)" and info["kwargs"] == "{}" and info["result"] == "10.0"
    assert info["retries"] == 0 and isinstance(info["clock"], int)
    assert info["root"] == info["root_id"] == ids[0]
    assert info["parent"] == info["parent_id"] == ids[2]
    assert info["children"] == [] and info["routing_key"] == "celery"
    root = (await f.client.get(f"/api/task/info/{ids[0]}")).json()
    assert root["children"] == [ids[1]] and root["parent_id"] is None and root["args"] == "(4, 2)"
    missing = await f.client.get("/api/task/info/no-such-task")
    assert missing.status_code == 404 and "Unknown task" in missing.text


async def test_tasks_with_flowers_filters(fleet: Fleet) -> None:
    f = fleet
    await f.client.get("/api/tasks")
    ids = await seed_chain(f)
    failed = await f.app.tasks["fail"].delay("k")
    await until(
        f.board,
        lambda: (
            task_state(f.board, failed.id) == "FAILURE"
            and task_state(f.board, ids[-1]) == "SUCCESS"
        ),
    )
    every = (await f.client.get("/api/tasks")).json()
    assert set(every) == {*ids, failed.id}
    assert every[failed.id]["exception"] == "KeyError('k')"
    assert "KeyError" in every[failed.id]["traceback"]
    only_failed = (await f.client.get("/api/tasks", params={"state": "FAILURE"})).json()
    assert list(only_failed) == [failed.id]
    adds = (await f.client.get("/api/tasks", params={"taskname": "add"})).json()
    assert list(adds) == [ids[2]]
    assert (await f.client.get("/api/tasks", params={"workername": "nobody"})).json() == {}
    by_received = (await f.client.get("/api/tasks", params={"sort_by": "received"})).json()
    assert list(by_received)[:4] == ids
    newest_first = (await f.client.get("/api/tasks", params={"sort_by": "-received"})).json()
    assert list(newest_first) == list(reversed(list(by_received)))
    page = (
        await f.client.get("/api/tasks", params={"sort_by": "received", "limit": 2, "offset": 1})
    ).json()
    assert list(page) == ids[1:3]
    future = time.strftime("%Y-%m-%d %H:%M", time.gmtime(time.time() + 3600))
    assert (await f.client.get("/api/tasks", params={"received_start": future})).json() == {}
    assert set((await f.client.get("/api/tasks", params={"received_end": future})).json()) == set(
        every
    )
    assert (await f.client.get("/api/tasks", params={"sort_by": "nope"})).status_code == 400
    assert (await f.client.get("/api/tasks", params={"received_start": "x"})).status_code == 400
    types = (await f.client.get("/api/task/types")).json()
    assert {"div", "mul", "add", "diff-of-two-numbers", "fail", "sleepy"} <= set(
        types["task-types"]
    )


async def test_apply_send_and_result(fleet: Fleet) -> None:
    f = fleet
    # Flower's example: curl -X POST -d '{"args":[1,2]}' .../api/task/async-apply/tasks.add
    applied = await f.client.post(
        "/api/task/async-apply/add", content='{"args": [1, 2]}', headers=FORM
    )
    assert applied.status_code == 200, applied.text
    body = applied.json()
    assert set(body) == {"task-id", "state"} and body["state"] in (
        "PENDING",
        "RECEIVED",
        "STARTED",
        "SUCCESS",
    )
    result = await f.client.get(f"/api/task/result/{body['task-id']}", params={"timeout": 10})
    assert result.json() == {"task-id": body["task-id"], "state": "SUCCESS", "result": 3}
    sent = await f.client.post("/api/task/send-task/mul", json={"args": [6], "kwargs": {"y": 7}})
    got = await f.client.get(f"/api/task/result/{sent.json()['task-id']}", params={"timeout": 10})
    assert got.json()["result"] == 42
    failing = await f.client.post("/api/task/async-apply/fail", json={"args": ["x"]})
    failed = await f.client.get(f"/api/task/result/{failing.json()['task-id']}?timeout=10")
    assert failed.json()["state"] == "FAILURE" and "KeyError" in failed.json()["traceback"]
    unknown = await f.client.post("/api/task/async-apply/nope", json={})
    assert unknown.status_code == 404
    # send-task takes any name (the workers know it, or dead-letter it)
    other = await f.client.post("/api/task/send-task/elsewhere.task", json={"args": []})
    assert other.status_code == 200 and "task-id" in other.json()
    pending = await f.client.get("/api/task/result/never-sent")
    assert pending.json() == {"task-id": "never-sent", "state": "PENDING", "result": None}
    late = await f.client.get("/api/task/result/never-sent", params={"timeout": "0.2"})
    assert late.status_code == 408
    bad = await f.client.post("/api/task/async-apply/add", json={"args": {"x": 1}})
    assert bad.status_code == 400


async def test_workers_pool_rate_limit_revoke_queues(fleet: Fleet) -> None:
    f = fleet
    workers = (await f.client.get("/api/workers", params={"refresh": 1})).json()
    assert list(workers) == [WORKER]
    info = workers[WORKER]
    assert {
        "stats",
        "registered",
        "active_queues",
        "active",
        "reserved",
        "scheduled",
        "revoked",
        "conf",
    } <= set(info)
    assert info["stats"]["pool"]["max-concurrency"] == 4
    assert "add" in info["registered"] and info["active_queues"][0]["name"] == "celery"
    await until(f.board, lambda: WORKER in f.board.state.workers)  # its worker-online event
    status = (await f.client.get("/api/workers", params={"status": 1})).json()
    assert status == {WORKER: True}
    assert (await f.client.get("/api/workers", params={"workername": "x@y"})).status_code == 404
    # curl -X POST -d 'n=2' .../api/worker/pool/grow/celery@worker2
    grown = await f.client.post(f"/api/worker/pool/grow/{WORKER}", content="n=2", headers=FORM)
    assert grown.status_code == 200 and "by 2" in grown.json()["message"]
    stats = (await f.client.get("/api/workers", params={"refresh": 1})).json()[WORKER]["stats"]
    assert stats["pool"]["max-concurrency"] == 6
    shrunk = await f.client.post(f"/api/worker/pool/shrink/{WORKER}", content="n=1", headers=FORM)
    assert shrunk.status_code == 200
    stats = (await f.client.get("/api/workers", params={"refresh": 1})).json()[WORKER]["stats"]
    assert stats["pool"]["max-concurrency"] == 5
    assert (await f.client.post("/api/worker/pool/grow/x@y")).status_code == 404
    # curl -X POST -d 'workername=celery@worker1&ratelimit=10' .../api/task/rate-limit/tasks.sleep
    limited = await f.client.post(
        "/api/task/rate-limit/add", content=f"workername={WORKER}&ratelimit=10/m", headers=FORM
    )
    assert (
        limited.status_code == 200
        and "new rate limit set successfully" in limited.json()["message"]
    )
    assert (
        await f.client.post(
            "/api/task/rate-limit/add", data={"workername": "x@y", "ratelimit": "1"}
        )
    ).status_code == 404
    assert (
        await f.client.post("/api/task/rate-limit/add", data={"ratelimit": "fast"})
    ).status_code == 400
    # curl -X POST -d 'terminate=True' .../api/task/revoke/<id>
    sleeping = await f.app.tasks["sleepy"].delay(60)
    await until(f.board, lambda: task_state(f.board, sleeping.id) == "STARTED")
    revoked = await f.client.post(
        f"/api/task/revoke/{sleeping.id}", content="terminate=True", headers=FORM
    )
    assert revoked.json() == {"message": f"Revoked '{sleeping.id}'"}
    await until(f.board, lambda: task_state(f.board, sleeping.id) == "REVOKED")
    info2 = (await f.client.get(f"/api/task/info/{sleeping.id}")).json()
    assert info2["state"] == "REVOKED" and isinstance(info2["revoked"], float)
    queued = (await f.client.get("/api/queues/length")).json()
    assert queued == {"active_queues": [{"name": "celery", "messages": 0}]}


# -- security: auth, read-only, redaction, CSRF, embedding ----------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_auth_read_only_and_redaction() -> None:
    app = make_app(f"memory://web{time.monotonic_ns()}")
    async with app, app.worker(task_events=True, hostname=WORKER):
        web = dashboard_app(app, read_only=True, basic_auth="admin:s3cret", token="tok")
        board: Dashboard = web.state.dashboard
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=web), base_url="http://t"
        ) as c:
            refused = await c.get("/api/tasks")
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith(
                "Basic"
            )
            assert (await c.get("/", headers=basic("admin", "wrong"))).status_code == 401
            assert (
                await c.get("/api/tasks", headers={"Authorization": "Bearer nope"})
            ).status_code == 401
            ok = basic("admin", "s3cret")
            assert (await c.get("/api/tasks", headers=ok)).status_code == 200
            bearer = {"Authorization": "Bearer tok"}
            assert (await c.get("/api/tasks", headers=bearer)).status_code == 200
            handle = await app.tasks["add"].delay(2, 3)
            await until(board, lambda: task_state(board, handle.id) == "SUCCESS")
            info = (await c.get(f"/api/task/info/{handle.id}", headers=ok)).json()
            assert info["args"] is info["kwargs"] is info["result"] is None  # hidden by default
            assert info["state"] == "SUCCESS" and info["name"] == "add"
            result = (await c.get(f"/api/task/result/{handle.id}", headers=ok)).json()
            assert result["state"] == "SUCCESS" and result["result"] is None
            page = await c.get(f"/task/{handle.id}", headers=ok)
            assert "(2, 3)" not in page.text and "hidden" in page.text
            # read-only: no action is rendered, every action answers 403
            assert 'action="/action/' not in page.text and "read-only" in page.text
            assert 'action="/action/' not in (await c.get("/workers", headers=ok)).text
            for path in (
                f"/api/task/revoke/{handle.id}",
                "/api/task/async-apply/add",
                "/api/task/send-task/add",
                f"/api/worker/shutdown/{WORKER}",
                f"/api/worker/pool/grow/{WORKER}",
                "/api/task/rate-limit/add",
                f"/action/revoke/{handle.id}",
                f"/action/shutdown/{WORKER}",
            ):
                assert (
                    await c.post(path, headers=ok, data={"ratelimit": "1"})
                ).status_code == 403, path
        await board.close()


async def test_csrf_and_cross_site_posts_are_refused() -> None:
    app = make_app(f"memory://web{time.monotonic_ns()}")
    async with app, app.worker(task_events=True, hostname=WORKER):
        web = dashboard_app(app)
        board: Dashboard = web.state.dashboard
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=web), base_url="http://t"
        ) as c:
            sleeping = await app.tasks["sleepy"].delay(60)
            await c.get("/")  # the first request starts the model: it catches up
            await until(board, lambda: task_state(board, sleeping.id) == "STARTED")
            page = await c.get(f"/task/{sleeping.id}")
            token = c.cookies["aqueue_csrf"]
            assert (
                f'value="{token}"' in page.text
                and f'action="/action/revoke/{sleeping.id}"' in page.text
            )
            # a form from another site: refused by its Origin, then without the token
            evil = await c.post(
                f"/action/revoke/{sleeping.id}",
                data={"csrf_token": token},
                headers={"Origin": "http://evil.example"},
            )
            assert evil.status_code == 403
            api_evil = await c.post(
                f"/api/task/revoke/{sleeping.id}", headers={"Sec-Fetch-Site": "cross-site"}
            )
            assert api_evil.status_code == 403
            assert (await c.post(f"/action/revoke/{sleeping.id}", data={})).status_code == 403
            assert (
                await c.post(f"/action/revoke/{sleeping.id}", data={"csrf_token": "forged"})
            ).status_code == 403
            assert task_state(board, sleeping.id) == "STARTED"
            done = await c.post(
                f"/action/revoke/{sleeping.id}",
                data={"csrf_token": token, "terminate": "1"},
                headers={"Origin": "http://t", "Referer": f"http://t/task/{sleeping.id}"},
            )
            assert done.status_code == 303 and "flash=terminated" in done.headers["location"]
            await until(board, lambda: task_state(board, sleeping.id) == "REVOKED")
        await board.close()


async def test_mounted_in_an_application_with_a_metrics_mount() -> None:
    app = make_app(f"memory://web{time.monotonic_ns()}")
    metrics = PlainTextResponse("aqueue_tasks_total 0\n")

    async def metrics_app(scope: Any, receive: Any, send: Any) -> None:
        await metrics(scope, receive, send)

    async with app, app.worker(task_events=True, hostname=WORKER):
        calls: list[str] = []

        def hook(request: Any) -> bool:
            calls.append(request.url.path)
            return request.headers.get("x-user") == "ops"

        board_app = dashboard_app(app, auth=hook, mounts={"/metrics": metrics_app})
        outer = Starlette(routes=[Mount("/flower", board_app)])
        board: Dashboard = board_app.state.dashboard
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=outer), base_url="http://t"
        ) as c:
            assert (await c.get("/flower/api/task/types")).status_code == 401
            user = {"x-user": "ops"}
            assert (await c.get("/flower/metrics", headers=user)).text == "aqueue_tasks_total 0\n"
            handle = await app.tasks["add"].delay(1, 1)
            await until(board, lambda: task_state(board, handle.id) == "SUCCESS")
            page = await c.get("/flower/tasks", headers=user)
            assert f'href="/flower/task/{handle.id}"' in page.text
            assert 'href="/flower/static/style.css"' in page.text
            assert (await c.get("/flower/static/live.js", headers=user)).status_code == 200
            assert calls
        await board.close()


async def test_page_actions_retry_replay_rate_limit_pool_and_schedules(fleet: Fleet) -> None:
    f = fleet
    await f.client.get("/")  # starts the model, sets the CSRF cookie
    token = f.client.cookies["aqueue_csrf"]

    async def act(path: str, **fields: str) -> httpx.Response:
        return await f.client.post(path, data={"csrf_token": token, **fields})

    # retry a failed task: sent again with the arguments its record kept, as a new task
    failed = await f.app.tasks["fail"].delay("k")
    await until(f.board, lambda: task_state(f.board, failed.id) == "FAILURE")
    page = await f.client.get(f"/task/{failed.id}")
    assert f'action="/action/retry/{failed.id}"' in page.text and "KeyError" in page.text
    retried = await act(f"/action/retry/{failed.id}")
    assert retried.status_code == 303
    new_id = retried.headers["location"].split("/task/")[1].split("?")[0]
    assert new_id != failed.id
    await until(f.board, lambda: task_state(f.board, new_id) == "FAILURE")
    assert f.board.state.tasks[new_id].args == "('k',)"
    # a dead letter (a task no worker knows), replayed from its page
    lost = await f.app.send_task("no.such.task", [1])

    async def lettered() -> bool:
        return any(d.id == lost.id for d in await f.app.control.dead_letters.list())

    await until(f.board, lettered)
    page = await f.client.get("/dead-letters")
    assert lost.id in page.text and f'action="/action/replay/{lost.id}"' in page.text
    replayed = await act(f"/action/replay/{lost.id}")
    assert replayed.status_code == 303 and "replayed" in replayed.headers["location"]
    assert (await act("/action/replay/not-a-letter")).status_code == 409
    # rate limit and pool size on a worker
    limited = await act("/action/rate-limit", task_name="add", rate="5/s", worker=WORKER)
    assert limited.status_code == 303
    assert (await act("/action/rate-limit", task_name="add", rate="fast")).status_code == 400
    assert (await act(f"/action/pool/{WORKER}", direction="grow")).status_code == 303
    stats = (await f.client.get("/api/workers", params={"refresh": 1})).json()[WORKER]["stats"]
    assert stats["pool"]["max-concurrency"] == 5
    # schedules: beat's entries, stored in the result backend
    from aqueue.beat.admin import BeatSchedule

    async with BeatSchedule(f.app) as schedule:
        await schedule.add("nightly-sum", "add", every=3600, args=[1, 2])
    page = await f.client.get("/schedules")
    assert "nightly-sum" in page.text and "every" in page.text
    for path in ("/", "/tasks", "/workers", "/queues", "/tasks?state=FAILURE&since=5&page=1"):
        assert (await f.client.get(path)).status_code == 200, path
    assert (await f.client.get("/task/unknown-id")).status_code == 404


@pytest.mark.rabbitmq
async def test_rabbitmq_with_rpc_results_no_registry(_rabbit_prefixes: list[str]) -> None:
    """amqp:// with rpc:// results keeps no worker registry and no shared results: every
    page still loads, workers come from inspect and events, task info from events."""
    from ..conftest import RABBIT_HOST, RABBIT_PORT, rabbit_url, require_service

    require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    prefix = f"aqt-{time.monotonic_ns()}"
    _rabbit_prefixes.append(prefix)
    app = make_app(rabbit_url(prefix))
    async with app, app.worker(task_events=True, hostname=WORKER):
        web = dashboard_app(app)
        board: Dashboard = web.state.dashboard
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=web), base_url="http://t"
        ) as c:
            await c.get("/")
            handle = await app.tasks["add"].delay(1, 2)
            assert await handle.get(timeout=15) == 3
            await until(board, lambda: task_state(board, handle.id) == "SUCCESS")
            for path in (
                "/",
                "/tasks",
                f"/task/{handle.id}",
                "/workers",
                "/queues",
                "/dead-letters",
                "/schedules",
            ):
                assert (await c.get(path)).status_code == 200, path
            info = (await c.get(f"/api/task/info/{handle.id}")).json()
            assert info["state"] == "SUCCESS" and info["worker"] == WORKER
            assert WORKER in (await c.get("/api/workers")).json()
            await until(board, lambda: WORKER in board.state.workers)
            assert (await c.get("/api/workers", params={"status": 1})).json() == {WORKER: True}
            assert (await c.get("/api/queues/length")).json()["active_queues"][0][
                "name"
            ] == "celery"
        await board.close()
