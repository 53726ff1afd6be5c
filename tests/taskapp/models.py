from django.db import models


class Run(models.Model):
    """One execution of a test task, so tests can count how often a task really ran."""

    task_id = models.CharField(max_length=255)
    label = models.CharField(max_length=100, blank=True, default="")
    pid = models.IntegerField(default=0)
