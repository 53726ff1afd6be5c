"""Worker rows (:class:`~django_tasks.models.WorkerRecord`): register, heartbeat, stop, purge."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from ..models import TaskResult, WorkerRecord


def register_worker(
    *, hostname: str, pid: int, queues: list[str], pool: str, concurrency: int
) -> int:
    """Insert the row of a starting worker; returns its pk."""
    now = timezone.now()
    record = WorkerRecord.objects.create(
        hostname=hostname,
        pid=pid,
        queues=queues,
        pool=pool,
        concurrency=concurrency,
        started=now,
        last_heartbeat=now,
    )
    return record.pk


def running_tasks(pks: list[int]) -> list[dict[str, object]]:
    """``[{"id", "task_id", "task_name"}, ...]`` of the task rows ``pks`` (by primary key)."""
    if not pks:
        return []
    rows = TaskResult.objects.filter(pk__in=pks).order_by("pk").values("pk", "task_id", "task_name")
    return [{"id": r["pk"], "task_id": r["task_id"], "task_name": r["task_name"]} for r in rows]


def heartbeat_worker(
    pk: int, *, done: int, failed: int, running: list[dict[str, object]], stopped: bool = False
) -> int:
    """The worker's one write per heartbeat (or, with ``stopped``, its last one)."""
    now = timezone.now()
    fields: dict[str, object] = {
        "last_heartbeat": now,
        "tasks_done": done,
        "tasks_failed": failed,
        "running": running,
    }
    if stopped:
        fields["stopped"] = now
    return WorkerRecord.objects.filter(pk=pk).update(**fields)


def purge_workers(cutoff: dt.datetime) -> int:
    """Delete rows of workers stopped, or silent (stale), since before ``cutoff``."""
    return WorkerRecord.objects.purgeable(cutoff).delete()[0]
