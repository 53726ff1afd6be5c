"""Read-only status queries for ``taskstatus``, the metrics view and the admin.

Each is one query over an index: unfinished and due rows through the partial claim index,
recent ones through ``date_done``'s, workers through ``last_heartbeat``'s.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import BooleanField, Count, Min, Q
from django.db.models.expressions import RawSQL

from .. import states
from ..models import CLAIMABLE_STATES, TaskResult, WorkerRecord, unindexed

#: ``state IN ('PENDING', 'RETRY')`` with the states written out, not bound parameters:
#: SQLite uses a partial index (the claim index) only when it can see that the query's terms
#: imply the index's condition, which it cannot with parameters (a whole-table scan instead).
CLAIMABLE_LITERAL = RawSQL(
    "state IN ({})".format(", ".join(f"'{state}'" for state in CLAIMABLE_STATES)),
    [],
    output_field=BooleanField(),
)


def _due(now: dt.datetime) -> Q:
    return Q(CLAIMABLE_LITERAL, lease_token__isnull=True, run_after__lte=now)


def oldest_due(now: dt.datetime, queues: list[str] | None = None) -> dict[str, dt.datetime]:
    """``{queue: earliest run_after of its due tasks}`` for queues with due tasks (of
    ``queues``, when given); reads only due rows (the claim index)."""
    rows = TaskResult.objects.filter(_due(now))
    if queues is not None:
        rows = rows.filter(queue__in=queues)
    grouped = rows.order_by().values("queue").annotate(oldest=Min("run_after"))
    return {row["queue"]: row["oldest"] for row in grouped}


def worker_rows(now: dt.datetime, lease_seconds: float) -> list[dict[str, Any]]:
    """Every worker not stopped cleanly, with its ``status`` (live or stale)."""
    rows = []
    for record in WorkerRecord.objects.filter(stopped__isnull=True):
        rows.append(
            {
                "hostname": record.hostname,
                "pid": record.pid,
                "status": record.status(now, lease_seconds),
                "queues": record.queues,
                "pool": record.pool,
                "concurrency": record.concurrency,
                "started": record.started,
                "last_heartbeat": record.last_heartbeat,
                "heartbeat_age": (now - record.last_heartbeat).total_seconds(),
                "tasks_done": record.tasks_done,
                "tasks_failed": record.tasks_failed,
                "running": record.running,
            }
        )
    return rows


def finished_by_name(since: dt.datetime) -> list[dict[str, Any]]:
    """``[{"task_name", "state", "count"}, ...]`` of tasks finished since ``since``."""
    rows = (
        TaskResult.objects.filter(date_done__gte=since, state__in=states.READY_STATES)
        .order_by()
        .values(name=unindexed("task_name"), final=unindexed("state"))
        .annotate(count=Count("pk"))
        .order_by("name", "final")
    )
    return [{"task_name": r["name"], "state": r["final"], "count": r["count"]} for r in rows]


def recent_runtimes(since: dt.datetime, limit: int) -> list[tuple[str, float]]:
    """``[(task_name, seconds), ...]`` of at most ``limit`` tasks finished since ``since``
    (the latest first) that have a start time."""
    rows = (
        TaskResult.objects.filter(date_done__gte=since, date_started__isnull=False)
        .order_by("-date_done")
        .values_list("task_name", "date_started", "date_done")[:limit]
    )
    return [
        (name, (done - started).total_seconds())
        for name, started, done in rows
        if started is not None and done is not None
    ]
