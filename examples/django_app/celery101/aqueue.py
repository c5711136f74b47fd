"""The aqueue app of the project (Celery's ``proj/celery.py``).

Run a worker with ``aqueue worker celery101.aqueue:app --django`` (DJANGO_SETTINGS_MODULE
set): Django is set up before this module is imported, so tasks may use the ORM.
"""

from aqueue import App
from aqueue.django import install

app = App("celery101", include=["workflows.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
install(app)  # aqueue.django.run: the task that runs Django's @task functions
