"""Tasks written against Django 6's ``django.tasks``, run by this app's worker (Django 6 only:
nothing imports this module on Django 5.2)."""

import asyncio
import os

from django.dispatch import receiver
from django.tasks import task
from django.tasks.signals import task_finished, task_started

from tests.taskapp.models import Run


@task
def add(x, y):
    return x + y


@task
def fail(message="boom"):
    raise ValueError(message)


@task(takes_context=True)
def attempt_and_id(context, label=""):
    return {"attempt": context.attempt, "id": context.task_result.id, "label": label}


@task
async def async_add(x, y):
    await asyncio.sleep(0)
    return x + y


@task(priority=50, queue_name="default")
def record(label=""):
    Run.objects.create(task_id=label, label=label, pid=os.getpid())
    return label


@task
def not_json():
    return {1, 2}


@task
def exits():
    raise SystemExit("This Task failed due to SystemExit")


@receiver(task_started)
def _started(sender, task_result, **kwargs):
    Run.objects.create(task_id=task_result.id, label=f"started:{task_result.status}")


@receiver(task_finished)
def _finished(sender, task_result, **kwargs):
    Run.objects.create(task_id=task_result.id, label=f"finished:{task_result.status}")
