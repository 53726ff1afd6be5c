"""Server time of the admin's result changelist over 100,000 results, SQLite and PostgreSQL.

Run ``.venv/bin/python bench/admin_changelist.py [--rows 100000] [--runs 7] [--sqlite-only]``.
For each database, a child process of this script builds a scratch database (a temporary
SQLite file; on PostgreSQL its own database ``django_tasks_bench_admin``, dropped at the
end), fills it with ``--rows`` results (and two history rows each), then times the
changelist through Django's test client, signed in as a superuser: the whole request,
middleware and template rendering included. It prints the median and the worst of
``--runs`` requests per page, after one warm-up request, with the query count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/django_tasks"
SCRATCH_DB = "django_tasks_bench_admin"
TASK_NAMES = [f"shop.tasks.job_{i:02d}" for i in range(20)]
QUEUES = ["default", "lopri", "mail", "reports"]
STATES = ["SUCCESS"] * 85 + ["FAILURE"] * 5 + ["PENDING"] * 5 + ["RETRY"] * 3 + ["REVOKED"] * 2


def child(rows: int, runs: int) -> None:
    """Fill the database that DATABASE_URL names, then time the pages."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from django_tasks.models import TaskResult, TaskStateChange

    call_command("migrate", verbosity=0)
    rng = random.Random(5)
    now = timezone.now()
    started = time.perf_counter()
    batch, history = [], []
    for i in range(rows):
        created = now - dt.timedelta(seconds=rng.uniform(0, 30 * 86400))
        state = rng.choice(STATES)
        done = (
            created + dt.timedelta(seconds=rng.uniform(0.01, 5))
            if state
            in (
                "SUCCESS",
                "FAILURE",
                "REVOKED",
            )
            else None
        )
        batch.append(
            TaskResult(
                task_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                task_name=rng.choice(TASK_NAMES),
                state=state,
                queue=rng.choice(QUEUES),
                args=[rng.randrange(10**6), f"order-{i}"],
                kwargs={"notify": bool(i % 2)},
                result={"ok": True, "n": i} if state == "SUCCESS" else None,
                traceback="Traceback (most recent call last):\n  ...\nValueError: no\n"
                if state == "FAILURE"
                else None,
                retries=1 if state == "RETRY" else 0,
                date_created=created,
                run_after=created,
                date_started=created if done else None,
                date_done=done,
            )
        )
        if len(batch) == 5000 or i == rows - 1:
            saved = TaskResult.objects.bulk_create(batch)
            for task in saved:
                history.append(TaskStateChange(task=task, state="STARTED", at=task.date_created))
                if task.date_done:
                    history.append(TaskStateChange(task=task, state=task.state, at=task.date_done))
            TaskStateChange.objects.bulk_create(history, batch_size=5000)
            batch, history = [], []
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"filled {rows:,} results in {time.perf_counter() - started:.1f} s", flush=True)

    admin = get_user_model().objects.create_superuser("bench", "bench@example.com", "pw")
    client = Client()
    client.force_login(admin)
    url = "/admin/django_tasks/taskresult/"
    month = timezone.localtime(now)
    sample = TaskResult.objects.order_by("?").values("task_id", "args").first()
    pages = {
        "changelist": {},
        "state=FAILURE": {"state__exact": "FAILURE"},
        "task name": {"task_name__exact": TASK_NAMES[3]},
        "queue": {"queue__exact": "mail"},
        "date hierarchy (month)": {
            "date_created__year": month.year,
            "date_created__month": month.month,
        },
        "search: whole id": {"q": sample["task_id"]},
        "search: short id": {"q": sample["task_id"][:8]},
        "search: argument": {"q": str(sample["args"][0])},
        "page 50": {"p": 50},
    }
    print("\n| page | median ms | max ms | queries | rows shown |\n|---|---:|---:|---:|---:|")
    for label, params in pages.items():
        warm_up = client.get(url, params)
        assert warm_up.status_code == 200, (label, warm_up.status_code)
        times = []
        for _ in range(runs):
            with CaptureQueriesContext(connection) as queries:
                t0 = time.perf_counter()
                response = client.get(url, params)
                times.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200, response.status_code
        shown = response.content.decode().count('class="action-select"')
        print(
            f"| {label} | {statistics.median(times):.0f} | {max(times):.0f} "
            f"| {len(queries)} | {shown} |",
            flush=True,
        )


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def run_child(label: str, url: str, args: argparse.Namespace) -> int:
    print(f"\n## {label}\n", flush=True)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DJANGO_ALLOWED_HOSTS": "testserver",
    }
    command = [sys.executable, __file__, "--child", "--rows", str(args.rows)]
    return subprocess.run([*command, "--runs", str(args.runs)], cwd=REPO, env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("POSTGRES_URL", DEFAULT_POSTGRES_URL)
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.rows, args.runs)
        return 0
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        status |= run_child("SQLite", f"sqlite:///{tmp}/bench.sqlite3", args)
    if args.sqlite_only:
        return status
    import psycopg
    from psycopg import sql

    admin_url = with_database(args.postgres_url, "postgres")
    try:
        conn = psycopg.connect(admin_url, autocommit=True)
    except psycopg.OperationalError as exc:
        print(f"\nPostgreSQL unreachable ({exc}); measured SQLite only")
        return status
    name = sql.Identifier(SCRATCH_DB)
    with conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        version = conn.execute("SHOW server_version").fetchone()[0]
        try:
            url = with_database(args.postgres_url, SCRATCH_DB)
            status |= run_child(f"PostgreSQL {version}", url, args)
        finally:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
    return status


if __name__ == "__main__":
    sys.exit(main())
