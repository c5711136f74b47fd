from django.db import models


class Run(models.Model):
    """One run of a celery101 test case: what was asked, and the ids of its workflow."""

    testcase = models.CharField(max_length=20)
    job_data = models.JSONField()
    #: the aqueue task ids of the workflow's steps, first step first (set by start_workflow)
    task_ids = models.JSONField(default=list)
    #: the Django TaskResult id of start_workflow
    start_id = models.CharField(max_length=64, blank=True)
