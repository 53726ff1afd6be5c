"""What progress reports cost: a task calling ``update_state`` N times vs the same loop without.

Run ``.venv/bin/python bench/progress.py [--updates 1000] [--repeat 5]``. As ``bench/run.py``
does, the parent prepares a scratch database per backend (a temporary SQLite file; on
PostgreSQL its own scratch database, dropped at the end) and measures each in a child
process. The task runs through the worker's own loop in the child (``run_until_empty``), so
each update is exactly what a worker does: one guarded ``UPDATE`` of the task row and one
history row, in one transaction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import run as bench  # bench/run.py: scratch databases, tables, Django environment

SCRATCH_DB = "django_tasks_bench_progress"

MEASURES: tuple[tuple[str, str, str], ...] = (
    ("with_updates", "task with N update_state calls (s, median)", "{:.3f}"),
    ("without_updates", "the same loop without them (s, median)", "{:.4f}"),
    ("updates_per_s", "update_state calls per second", "{:,.0f}"),
    ("ms_per_update", "  ms per update", "{:.2f}"),
    ("slowdown", "ratio: task time with / without", "{:,.0f}x"),
    ("floor_per_s", "floor: bare one-row UPDATEs (autocommit, /s)", "{:,.0f}"),
    ("ratio_floor", "ratio: update_state / floor UPDATE", "{:.2f}"),
)


def measure(updates: int, repeat: int) -> dict[str, float]:
    """In the child: time the task both ways, and a bare UPDATE floor."""
    sys.path.insert(0, str(bench.REPO))
    import django

    django.setup()
    from django.db import connection

    from django_tasks import task
    from django_tasks.models import TaskResult
    from django_tasks.testing import run_until_empty

    @task(name="bench.progress.report", bind=True)
    def report(self: Any, n: int, store: bool) -> int:
        for i in range(1, n + 1):
            if store:
                self.update_state(state="PROGRESS", meta={"current": i, "total": n})
        return n

    def run_once(store: bool) -> float:
        bench.clear_tasks()
        res = report.delay(updates, store)
        started = time.perf_counter()
        run_until_empty()
        elapsed = time.perf_counter() - started
        if res.get(timeout=1) != updates:
            raise RuntimeError(f"the benchmark task did not succeed: {res.state}")
        return elapsed

    run_once(True)  # warm up
    with_updates = statistics.median(run_once(True) for _ in range(repeat))
    without_updates = statistics.median(run_once(False) for _ in range(repeat))

    res = report.delay(0, False)
    pk = TaskResult.objects.get(task_id=res.id).pk
    table = connection.ops.quote_name(TaskResult._meta.db_table)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for i in range(updates):
            cursor.execute(f"UPDATE {table} SET meta = %s WHERE id = %s", [json.dumps(i), pk])
    floor = updates / (time.perf_counter() - started)
    bench.clear_tasks()

    per_update = (with_updates - without_updates) / updates
    return {
        "with_updates": with_updates,
        "without_updates": without_updates,
        "updates_per_s": 1 / per_update,
        "ms_per_update": per_update * 1000,
        "slowdown": with_updates / without_updates,
        "floor_per_s": floor,
        "ratio_floor": (1 / per_update) / floor,
    }


def run_database(label: str, url: str, args: argparse.Namespace) -> dict[str, float] | None:
    print(f"measuring {label} ...", flush=True)
    env = bench.django_env(url)
    subprocess.run(bench.manage("migrate", "--noinput", "-v0"), cwd=bench.REPO, env=env, check=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        child = [sys.executable, __file__, "--child-output", out.name]
        child += ["--updates", str(args.updates), "--repeat", str(args.repeat)]
        if subprocess.run(child, cwd=bench.REPO, env=env).returncode != 0:
            bench.loud(f"{label}: the benchmark process failed")
            return None
        return json.loads(Path(out.name).read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1000, help="update_state calls per task")
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant (median)")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("POSTGRES_URL", bench.DEFAULT_POSTGRES_URL)
    )
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_output:
        results = measure(args.updates, args.repeat)
        Path(args.child_output).write_text(json.dumps(results))
        return 0

    bench.SCRATCH_DB = SCRATCH_DB  # not run.py's, so both can run at once
    columns: dict[str, dict[str, float] | None] = {}
    with tempfile.TemporaryDirectory(prefix="django-tasks-progress-") as tmp:
        columns["SQLite"] = run_database("SQLite", f"sqlite:///{tmp}/bench.sqlite3", args)
    postgres_version = None
    try:
        url, postgres_version = bench.postgres_scratch(args.postgres_url)
    except bench.Unreachable as exc:
        print(f"PostgreSQL is unreachable at {args.postgres_url}: {exc}; SQLite only.")
    else:
        try:
            columns["PostgreSQL"] = run_database("PostgreSQL", url, args)
        finally:
            with bench.maintenance_connection(args.postgres_url) as conn:
                bench.drop_scratch(conn)

    print(f"\n## Progress updates: N={args.updates}, median of {args.repeat}\n")
    print(f"{bench.machine(postgres_version)}\n")
    rows = [
        [label, *("n/a" if r is None else fmt.format(r[key]) for r in columns.values())]
        for key, label, fmt in MEASURES
    ]
    print(bench.markdown_table(["measure", *columns], rows))
    return 1 if bench.PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
