"""``manage.py demo``: send sample tasks, run a worker until they finish, show the results."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from django_tasks import AsyncResult, states
from django_tasks.models import TaskResult
from testproject.demo.tasks import add, crunch, divide, flaky

#: Give up if the demo's tasks are not done by then (they need about five seconds).
DEADLINE_SECONDS = 120

#: Each example's calling code, printed next to its result.
CALLS = {
    "success": "add.delay(2, 2)",
    "failure": "divide.delay(1, 0)",
    "retry": "flaky.delay(3)",
    "countdown": "add.apply_async((40, 2), countdown=2)",
    "progress": "crunch.delay(10)",
    "link": "add.apply_async((2, 2), link=add.s(10))",
}
#: The row of the task the link sent: not called by the demo itself.
CALLBACK_CODE = "(sent by link=add.s(10): add(4, 10))"


class Command(BaseCommand):
    help = "Send the demo's sample tasks, run a worker until they finish, print the results."

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = {"add": add, "divide": divide, "flaky": flaky, "crunch": crunch}
        # The printed code is the code run: each call is evaluated from its text.
        results = {label: eval(code, namespace) for label, code in CALLS.items()}
        self.stdout.write(f"Sent {len(results)} tasks to {settings.DJANGO_TASKS['BROKER_URL']}.\n")
        self.run_worker_until_done(list(results.values()))
        callback = (
            TaskResult.objects.filter(task_name=add.name, args=[4, 10])
            .order_by("-date_created")
            .first()
        )
        if callback is not None:
            results["callback of link"] = AsyncResult(callback.task_id)
        self.print_table(results)
        self.stdout.write(
            "\nBrowse them in the admin:\n"
            "  .venv/bin/python manage.py createsuperuser\n"
            "  .venv/bin/python manage.py runserver\n"
            "  then open http://127.0.0.1:8000/admin/django_tasks/taskresult/\n"
            "For the live progress page, also run a worker (.venv/bin/python manage.py "
            "runworker)\n  and open http://127.0.0.1:8000/demo/\n"
        )

    def run_worker_until_done(self, results: list[AsyncResult]) -> None:
        """Run ``runworker --burst`` until every task is done, waiting for delayed ones."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        ids = [r.id for r in results]
        while TaskResult.objects.filter(task_id__in=ids).unready().exists():
            if time.monotonic() > deadline:
                raise SystemExit("demo: tasks did not finish in time")
            next_due = (
                TaskResult.objects.filter(task_id__in=ids)
                .unready()
                .order_by("run_after")
                .values_list("run_after", flat=True)
                .first()
            )
            wait = (next_due - timezone.now()).total_seconds() if next_due else 0
            if wait > 0:
                self.stdout.write(f"Waiting {wait:.1f}s for a delayed task to come due...")
                time.sleep(wait)
            self.stdout.write("Running: manage.py runworker --burst --concurrency 2")
            subprocess.run(
                [
                    sys.executable,
                    "manage.py",
                    "runworker",
                    "--burst",
                    "--concurrency",
                    "2",
                    "--loglevel",
                    "info",
                ],
                check=True,
                cwd=settings.BASE_DIR,
                env=os.environ.copy(),
            )

    def print_table(self, results: dict[str, AsyncResult]) -> None:
        rows = [("example", "code", "state", "retries", "result", "path")]
        for label, res in results.items():
            row = TaskResult.objects.get(task_id=res.id)
            outcome = res.get(propagate=False, timeout=1)
            shown = (
                f"{type(outcome).__name__}: {outcome}"
                if isinstance(outcome, BaseException)
                else repr(outcome)
            )
            path = " -> ".join(_squeeze([state for state, _ in row.state_history()]))
            code = CALLS.get(label, CALLBACK_CODE)
            rows.append((label, code, row.state, str(row.retries), shown, path))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        self.stdout.write("")
        for index, row in enumerate(rows):
            line = "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
            self.stdout.write(
                self.style.SUCCESS(line) if index and row[2] == states.SUCCESS else line
            )
            if index == 0:
                self.stdout.write("  ".join("-" * w for w in widths))


def _squeeze(path: list[str]) -> list[str]:
    """``[A, B, B, B, C]`` -> ``[A, "B x3", C]``."""
    squeezed: list[str] = []
    count = 0
    for index, state in enumerate(path):
        count += 1
        if index + 1 == len(path) or path[index + 1] != state:
            squeezed.append(f"{state} x{count}" if count > 1 else state)
            count = 0
    return squeezed
