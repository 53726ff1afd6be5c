"""``manage.py taskstatus``: queues and workers at a glance; ``--check`` for probes and cron."""

from __future__ import annotations

import json
import math
import socket
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError
from django.utils import timezone

from django_tasks.conf import tasks_settings
from django_tasks.models import TaskResult, WorkerRecord
from django_tasks.store import oldest_due, worker_rows


def _text(value: str, option: str) -> str:
    if not value or "\x00" in value or len(value) > 255:
        raise CommandError(
            f"{option} must be 1 to 255 characters without NUL bytes, not {value!r}", returncode=2
        )
    return value


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class Command(BaseCommand):
    help = (
        "Per queue: due, scheduled, running, failed and done in the last hour, and the oldest "
        "due task's age; then the workers. With --check: exit 0 when healthy, else 1 with one "
        "line saying what is wrong (for health probes and cron)."
    )
    #: A probe runs this often and must be quick: system checks are runworker's business.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON, for scripts.")
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit 1 with one line when unhealthy: no live worker serves a queue with due "
            "tasks (or --queue), a queue lags more than --max-lag, or this host's worker is "
            "stale or missing.",
        )
        parser.add_argument(
            "--queue",
            "-Q",
            action="append",
            default=None,
            metavar="QUEUE",
            help="--check these queues (repeat or comma-separate) instead of every queue with "
            "due tasks; each must be served by a live worker.",
        )
        parser.add_argument(
            "--max-lag",
            type=float,
            default=None,
            metavar="SECONDS",
            help="--check: unhealthy when a queue's oldest due task is older than this.",
        )
        host = parser.add_mutually_exclusive_group()
        host.add_argument(
            "--host",
            default=None,
            metavar="HOSTNAME",
            help="--check: the host whose worker must be live (default: this machine's "
            "hostname, as runworker records it).",
        )
        host.add_argument(
            "--any-host",
            action="store_true",
            help="--check: do not require a worker on this host (cron on another machine).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        queues = None
        if options["queue"]:
            queues = [
                _text(name.strip(), "--queue")
                for value in options["queue"]
                for name in value.split(",")
            ]
        max_lag = options["max_lag"]
        if max_lag is not None and not (max_lag >= 0 and math.isfinite(max_lag)):
            raise CommandError(
                f"--max-lag must be a number of seconds >= 0, not {max_lag}", returncode=2
            )
        host = (
            None
            if options["any_host"]
            else _text(options["host"] or socket.gethostname(), "--host")
        )
        if options["check"]:
            problem = self.health(queues, max_lag, host)
            if problem:
                self.stdout.write(f"UNHEALTHY: {problem}")
                sys.exit(1)
            self.stdout.write("OK")
            return
        now = timezone.now()
        lease = float(tasks_settings.WORKER_LEASE_SECONDS)
        rows = TaskResult.objects.queue_overview(now)
        if queues is not None:
            rows = [row for row in rows if row["queue"] in queues]
        for row in rows:
            oldest = row.pop("oldest_due")
            row["oldest_due_age"] = (now - oldest).total_seconds() if oldest else None
        workers = worker_rows(now, lease)
        if options["json"]:
            data = {"now": now, "queues": rows, "workers": workers}
            self.stdout.write(json.dumps(data, cls=DjangoJSONEncoder, indent=2))
            return
        self.stdout.write(self.table(rows, workers))

    def health(self, queues: list[str] | None, max_lag: float | None, host: str | None) -> str:
        """What is wrong, in one line; "" when nothing is."""
        now = timezone.now()
        lease = float(tasks_settings.WORKER_LEASE_SECONDS)
        try:
            live = list(WorkerRecord.objects.live(now, lease).values("hostname", "pid", "queues"))
            oldest = oldest_due(now, queues)
            mine = None
            if host is not None and not any(w["hostname"] == host for w in live):
                mine = (
                    WorkerRecord.objects.filter(hostname=host, stopped__isnull=True)
                    .order_by("-last_heartbeat")
                    .first()
                )
        except DatabaseError as exc:
            return f"cannot read the task database: {' '.join(str(exc).split())}"
        if host is not None and not any(w["hostname"] == host for w in live):
            if mine is not None:
                age = (now - mine.last_heartbeat).total_seconds()
                return (
                    f"this host's worker {mine} is stale: last heartbeat {age:.0f}s ago "
                    f"(lease {lease:g}s)"
                )
            return f"no worker is running on this host ({host})"
        served = {q for w in live for q in (w["queues"] or []) if isinstance(q, str)}
        for queue in queues if queues is not None else sorted(oldest):
            if queue not in served:
                return f"no live worker serves queue {queue!r}"
        if max_lag is not None:
            for queue, since in sorted(oldest.items()):
                age = (now - since).total_seconds()
                if age > max_lag:
                    return (
                        f"queue {queue!r} lags: its oldest due task is {age:.0f}s old "
                        f"(max lag {max_lag:g}s)"
                    )
        return ""

    def table(self, queues: list[dict[str, Any]], workers: list[dict[str, Any]]) -> str:
        lines = []
        head: tuple[str, ...] = (
            "QUEUE",
            "DUE",
            "SCHEDULED",
            "RUNNING",
            "FAILED 1H",
            "DONE 1H",
            "OLDEST DUE",
        )
        body: list[tuple[str, ...]] = [
            (
                str(row["queue"]),
                str(row["due"]),
                str(row["scheduled"]),
                str(row["running"]),
                str(row["failed"]),
                str(row["succeeded"] + row["failed"]),
                _age(row["oldest_due_age"]),
            )
            for row in queues
        ]
        lines.extend(
            _columns(head, body)
            if body
            else ["No queue has waiting, running or recently finished tasks."]
        )
        lines.append("")
        head = ("WORKER", "STATUS", "QUEUES", "POOL", "HEARTBEAT", "DONE", "FAILED", "RUNNING")
        body = [
            (
                f"{w['hostname']}:{w['pid']}",
                w["status"],
                ",".join(str(q) for q in w["queues"]),
                f"{w['pool']}x{w['concurrency']}",
                _age(w["heartbeat_age"]) + " ago",
                str(w["tasks_done"]),
                str(w["tasks_failed"]),
                " ".join(str(t.get("task_id")) for t in w["running"] if isinstance(t, dict)) or "-",
            )
            for w in workers
        ]
        lines.extend(_columns(head, body) if body else ["No worker is running."])
        return "\n".join(lines)


def _columns(head: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [head, *body]
    ]
