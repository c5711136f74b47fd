"""The celery101 API against a live worker (a subprocess: ``aqueue worker --django``), with
Django's test runner: ``python manage.py test`` (tests/examples/test_django_app.py runs it).

TransactionTestCase, not TestCase: rows are really committed, so ``on_commit`` fires as in
production and the worker process reads them from the test database (a file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from celery101.aqueue import app
from django.db import connection, transaction
from django.test import TransactionTestCase

from aqueue.django import enqueue_on_commit, run_in_loop

from .jobs import check_numbers, start_workflow
from .models import Run

EXAMPLE = Path(__file__).resolve().parent.parent


class Celery101Api(TransactionTestCase):
    worker: subprocess.Popen[bytes]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="celery101.settings",
            CELERY101_DB=str(connection.settings_dict["NAME"]),  # the test database
            AQUEUE_WORKER_IN_PROCESS="1",
        )
        aqueue = Path(sys.executable).with_name("aqueue")
        cls.worker = subprocess.Popen(
            [str(aqueue), "worker", "celery101.aqueue:app", "--django", "-c", "4", "-l", "warning"],
            cwd=EXAMPLE,
            env=env,
        )

    @classmethod
    def tearDownClass(cls) -> None:
        cls.worker.terminate()
        cls.worker.wait(timeout=30)
        super().tearDownClass()

    def post(self, testcase: str, job_data: dict[str, list[float]]) -> dict[str, Any]:
        response = self.client.post("/", {"testcase": testcase, "job_data": json.dumps(job_data)})
        self.assertEqual(response.status_code, 201, response.content)
        body: dict[str, Any] = response.json()
        return body

    def finish(self, body: dict[str, Any]) -> dict[str, Any]:
        """Wait for start_workflow, then for the workflow's last step; the GET answer."""
        ids = run_in_loop(app.AsyncResult(body["start"]).wait(timeout=30))
        for task_id in ids:  # a chain stops at its first failure
            step = app.AsyncResult(task_id)
            run_in_loop(step.wait(timeout=30, propagate=False))
            if step.status != "SUCCESS":
                break
        response = self.client.get(f"/runs/{body['run']}")
        self.assertEqual(response.status_code, 200)
        status: dict[str, Any] = response.json()
        return status

    def test_tc01_runs_all_four_steps(self) -> None:
        # celery101: 4 / 2 * 3 + 6 - 2
        body = self.post("ESG-TC01", {"div": [4, 2], "mul": [3], "add": [6], "sub": [2]})
        status = self.finish(body)
        self.assertEqual(status["state"], "SUCCESS")
        self.assertEqual(status["result"], 10)
        self.assertEqual(
            [s["task"] for s in status["steps"]],
            [
                "division-of-two-numbers",
                "product-of-two-numbers",
                "sum-of-two-numbers",
                "diff-of-two-numbers",
            ],
        )
        self.assertEqual({s["state"] for s in status["steps"]}, {"SUCCESS"})
        self.assertEqual(status["start"], "SUCCESSFUL")
        # Django's TaskResult, read back through the backend
        result = start_workflow.get_result(body["start"])
        self.assertEqual(result.return_value, [s["id"] for s in status["steps"]])
        self.assertEqual(Run.objects.get(pk=body["run"]).task_ids, result.return_value)

    def test_tc02_and_a_failing_step(self) -> None:
        status = self.finish(self.post("ESG-TC02", {"div": [4, 2], "mul": [3]}))
        self.assertEqual((status["state"], status["result"]), ("SUCCESS", 6))
        failed = self.finish(self.post("ESG-TC02", {"div": [4, 0], "mul": [3]}))
        self.assertEqual(failed["state"], "FAILURE")
        self.assertEqual(failed["steps"][0]["state"], "FAILURE")
        self.assertIn("ZeroDivisionError", failed["error"])

    def test_a_sync_django_task_and_its_failure(self) -> None:
        ok = check_numbers.enqueue({"div": [4, 2], "mul": [3]})
        bad = check_numbers.enqueue({"div": ["four", 2]})
        self.assertEqual(run_in_loop(app.AsyncResult(ok.id).wait(timeout=30)), 3)
        run_in_loop(app.AsyncResult(bad.id).wait(timeout=30, propagate=False))
        ok.refresh()
        self.assertEqual((ok.status, ok.return_value), ("SUCCESSFUL", 3))
        bad.refresh()
        self.assertEqual(bad.status, "FAILED")
        self.assertIs(bad.errors[0].exception_class, ValueError)
        self.assertIn("not a number: 'four'", bad.errors[0].traceback)

    def test_bad_input_is_refused(self) -> None:
        response = self.client.post("/", {"testcase": "ESG-TC09", "job_data": "{}"})
        self.assertEqual(response.status_code, 400)
        self.assertFalse(Run.objects.exists())


class EnqueueOnCommit(TransactionTestCase):
    """A message leaves only when its transaction commits (queue "held": no worker)."""

    def held(self) -> int:
        async def size() -> int:
            await app.connect()
            return await app.broker.size("held")

        return run_in_loop(size())

    def tearDown(self) -> None:
        async def purge() -> int:
            await app.connect()
            return await app.broker.purge("held")

        run_in_loop(purge())

    def test_rollback_sends_nothing_and_commit_sends(self) -> None:
        held = start_workflow.using(queue_name="held")
        before = self.held()
        with self.assertRaises(RuntimeError), transaction.atomic():
            enqueue_on_commit(held, 1)
            self.assertEqual(self.held(), before)  # not before the commit
            raise RuntimeError("rolled back")
        self.assertEqual(self.held(), before)
        with transaction.atomic():
            result = enqueue_on_commit(held, 2)
            self.assertEqual(self.held(), before)
        self.assertEqual(self.held(), before + 1)
        self.assertEqual(result.status, "READY")

    def test_plain_enqueue_sends_at_once(self) -> None:
        held = start_workflow.using(queue_name="held", priority=100)
        with transaction.atomic():
            held.enqueue(3)
            self.assertEqual(self.held(), 1)
