"""What ``taskstatus --check`` and a metrics scrape cost at a million task rows.

Not part of the test suite. It fills the task table of the database ``DATABASE_URL`` names
(its task rows are deleted first; default: SQLite in a temporary directory) with ``--rows``
rows by SQL: finished ones spread evenly over the last 30 days (so ~1/720 of them finished in
the last hour), ``--due`` due ones across 4 queues, 1,000 scheduled ones and 20 running ones.
Then it times, ``--repeat`` times each (best and median):

* ``manage.py taskstatus --check --any-host --max-lag 1e9`` as a subprocess (wall time:
  interpreter and Django start-up included), and
* the check's queries in this process, and
* one scrape rendered in this process (server time: the queries and the text format).

    .venv/bin/python bench/ops_status.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dt_ops_bench \\
        .venv/bin/python bench/ops_status.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def fill(rows: int, due: int) -> None:
    from django.db import connection

    from django_tasks.models import TaskResult, WorkerRecord

    table = connection.ops.quote_name(TaskResult._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")
        finished = rows - due - 1020
        if connection.vendor == "postgresql":
            series = "SELECT generate_series(1, %s) AS i"
            ago = "now() - make_interval(secs => {})"
            bool_false = "false"
        else:
            series = (
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < %s) "
                "SELECT i FROM s"
            )
            ago = "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', (-({})) || ' seconds')"
            bool_false = "0"
        columns = (
            "task_id, task_name, state, queue, priority, content_type, retries, worker, "
            "date_created, run_after, date_started, date_done, revoked, dispatched, "
            "lease_token, lease_expires"
        )

        def insert(
            count: int,
            state: str,
            created: str,
            run_after: str,
            started: str,
            done: str,
            lease: str,
            lease_expires: str,
            prefix: str,
        ) -> None:
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT '{prefix}-' || i, "
                f"'shop.tasks.task' || (i %% 20), {state}, 'q' || (i %% 4), 0, '', 0, '', "
                f"{created}, {run_after}, {started}, {done}, {bool_false}, {bool_false}, "
                f"{lease}, {lease_expires} FROM ({series}) AS s",
                [count],
            )

        # Finished: done i * (30 days / finished) seconds ago, ran for up to 2 s.
        step = 30 * 86400 / finished
        done_at = ago.format(f"i * {step}")
        insert(
            finished,
            "CASE WHEN i %% 50 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END",
            ago.format(f"i * {step} + 3"),
            ago.format(f"i * {step} + 3"),
            ago.format(f"i * {step} + (i %% 20) / 10.0"),
            done_at,
            "NULL",
            "NULL",
            "done",
        )
        insert(
            due,
            "'PENDING'",
            ago.format("i %% 600"),
            ago.format("i %% 600"),
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "due",
        )
        insert(
            1000,
            "'PENDING'",
            ago.format("0"),
            ago.format("-3600 - i"),
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "sched",
        )
        insert(
            20,
            "'STARTED'",
            ago.format("5"),
            ago.format("5"),
            ago.format("4"),
            "NULL",
            "'token' || (i %% 4)",
            ago.format("-30"),
            "run",
        )
        if connection.vendor == "postgresql":
            cursor.execute(f"VACUUM ANALYZE {table}")
        else:
            cursor.execute("ANALYZE")
    WorkerRecord.objects.all().delete()


def timed(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-fill", action="store_true", help="Keep the rows already there.")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="dt-ops-bench-")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tmp}/bench.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from django_tasks.api.metrics import render_metrics
    from django_tasks.models import TaskResult

    call_command("migrate", verbosity=0)
    if not args.no_fill:
        started = time.perf_counter()
        fill(args.rows, args.due)
        print(f"filled in {time.perf_counter() - started:.1f}s")
    print(f"{connection.vendor}: {TaskResult.objects.count():,} task rows")
    check = [sys.executable, "manage.py", "taskstatus", "--check", "--any-host", "--max-lag", "1e9"]

    def run_check() -> None:
        subprocess.run(check, cwd=REPO, env=os.environ, capture_output=True, check=False)

    best, median = timed(run_check, args.repeat)
    print(f"taskstatus --check (subprocess wall time): best {best:.3f}s, median {median:.3f}s")
    baseline = [sys.executable, "manage.py", "help"]
    best_h, median_h = timed(
        lambda: subprocess.run(baseline, cwd=REPO, env=os.environ, capture_output=True),
        args.repeat,
    )
    print(f"  (manage.py help, start-up alone: best {best_h:.3f}s, median {median_h:.3f}s)")
    from django_tasks.management.commands.taskstatus import Command

    best, median = timed(lambda: Command().health(None, 1e9, None), args.repeat)
    print(
        f"taskstatus --check queries (in process): best {best * 1000:.1f}ms, "
        f"median {median * 1000:.1f}ms"
    )
    render_metrics()  # warm
    best, median = timed(render_metrics, args.repeat)
    print(f"metrics scrape (server time): best {best * 1000:.0f}ms, median {median * 1000:.0f}ms")
    print(f"metrics size: {len(render_metrics()):,} bytes")


if __name__ == "__main__":
    main()
