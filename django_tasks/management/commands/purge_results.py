"""``manage.py purge_results``: delete finished results older than N days (for cron/timers)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_tasks.conf import tasks_settings
from django_tasks.models import WorkerRecord
from django_tasks.store import finished_before, purge_finished, purge_workers

#: The longest age --older-than takes: 100 years (the admin's purge page takes the same).
MAX_DAYS = 36_500


class Command(BaseCommand):
    help = (
        "Delete finished results (SUCCESS, FAILURE, REVOKED) and their history, done more "
        "than --older-than days ago (default: RESULT_EXPIRES), and the rows of workers stopped or "
        "silent since then. Unfinished tasks are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=float,
            default=None,
            metavar="DAYS",
            help="Age in days (fractions allowed); default: DJANGO_TASKS['RESULT_EXPIRES'].",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )

    def handle(self, *args: Any, older_than: float | None, dry_run: bool, **options: Any) -> None:
        if older_than is None:
            expires = tasks_settings.RESULT_EXPIRES
            if expires is None:
                raise CommandError(
                    "RESULT_EXPIRES is None (keep results forever): give --older-than DAYS"
                )
            age = dt.timedelta(seconds=expires)
        elif not 0 <= older_than <= MAX_DAYS:  # NaN fails both comparisons
            raise CommandError(
                f"--older-than must be a number of days >= 0 and <= {MAX_DAYS}, not {older_than}"
            )
        else:
            age = dt.timedelta(days=older_than)
        cutoff = timezone.now() - age
        if dry_run:
            count = finished_before(cutoff).count()
            workers = WorkerRecord.objects.purgeable(cutoff).count()
            self.stdout.write(
                f"Would delete {count} finished result(s) older than {age}, "
                f"and {workers} stopped or stale worker row(s)."
            )
            return
        deleted = purge_finished(age)
        workers = purge_workers(cutoff)
        self.stdout.write(
            f"Deleted {deleted} finished result(s) older than {age}, "
            f"and {workers} stopped or stale worker row(s)."
        )
