"""Throughput and latency of django_tasks on SQLite and PostgreSQL, next to a raw-SQL floor.

Run ``make bench`` or ``.venv/bin/python bench/run.py [--n 5000] [--latency-samples 200]``.
The parent process prepares a scratch database per backend, then measures each one in a
child process of this script (Django is set up once per process, so one per database).
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/django_tasks"
SCRATCH_DB = "django_tasks_bench"
SETTINGS = "testproject.settings"
FLOOR_BATCH = 50
WORKER_TIMEOUT = 600.0

#: (key, label, format) of every measure, in table order.
MEASURES: tuple[tuple[str, str, str], ...] = (
    ("enqueue", "enqueue `noop.delay()` (tasks/s)", "{:,.0f}"),
    ("e2e_c1", "end-to-end, concurrency 1 (tasks/s)", "{:,.0f}"),
    ("e2e_c1_wall", "  worker wall time, c=1 (s)", "{:.2f}"),
    ("e2e_c2", "end-to-end, concurrency 2 (tasks/s)", "{:,.0f}"),
    ("e2e_c2_wall", "  worker wall time, c=2 (s)", "{:.2f}"),
    ("latency_p50", "round-trip latency p50 (ms)", "{:.1f}"),
    ("latency_p95", "round-trip latency p95 (ms)", "{:.1f}"),
    ("latency_samples", "  latency samples", "{:.0f}"),
    ("floor_insert", "floor: raw inserts (rows/s)", "{:,.0f}"),
    ("floor_claim", f"floor: claim {FLOOR_BATCH} + complete (rows/s)", "{:,.0f}"),
    ("ratio_enqueue", "ratio: enqueue / floor insert", "{:.2f}"),
    ("ratio_e2e", "ratio: end-to-end c=1 / floor claim+complete", "{:.2f}"),
)

Results = dict[str, float | None]
#: What went wrong in this process, repeated under the summary.
PROBLEMS: list[str] = []


# -- shared helpers ------------------------------------------------------------------------------


def django_env(database_url: str) -> dict[str, str]:
    """The environment of every Django process of the run (this one's children included)."""
    return {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": SETTINGS}


def manage(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "manage.py"), *args]


def fmt(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return next(f for k, _, f in MEASURES if k == key).format(value)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def loud(message: str) -> None:
    PROBLEMS.append(message)
    print(f"\n{'!' * 78}\n!!! {message}\n{'!' * 78}\n", file=sys.stderr, flush=True)


# -- the child: one database, Django set up ------------------------------------------------------


@contextlib.contextmanager
def worker(concurrency: int, *, burst: bool) -> Iterator[subprocess.Popen[bytes]]:
    """A ``runworker`` subprocess (prefork); stopped with SIGTERM on exit if still running.

    Its stderr is kept and shown only if it exits with an error.
    """
    cmd = manage("runworker", "--concurrency", str(concurrency), "--pool", "prefork")
    cmd += ["--loglevel", "warning", *(["--burst"] if burst else [])]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.returncode != 0:
                log.seek(0)
                output = log.read().decode(errors="replace")
                loud(f"worker exited with {proc.returncode}:\n{output}")


def clear_tasks() -> None:
    """Empty the task and history tables."""
    from django.db import connection

    from django_tasks.models import TaskResult, TaskStateChange

    tables = [connection.ops.quote_name(m._meta.db_table) for m in (TaskStateChange, TaskResult)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)}")
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")


def rate(n: int, send: Callable[[], object]) -> float:
    """Items per second of ``n`` calls of ``send``."""
    started = time.perf_counter()
    for _ in range(n):
        send()
    return n / (time.perf_counter() - started)


def measure_enqueue(n: int) -> float:
    from testproject.demo.tasks import noop

    noop.delay()  # connect, warm caches
    clear_tasks()
    result = rate(n, noop.delay)
    clear_tasks()
    return result


def measure_end_to_end(n: int, concurrency: int) -> tuple[float | None, float]:
    """(tasks/s from the stored timestamps, worker wall time) for ``n`` queued no-ops.

    The rate is None, and the run is reported, unless this worker ran all ``n`` to success.
    """
    from django.db import transaction
    from django.db.models import Count, Max, Min
    from django.utils import timezone

    from django_tasks import states
    from django_tasks.models import TaskResult
    from testproject.demo.tasks import noop

    clear_tasks()
    with transaction.atomic():
        for _ in range(n):
            noop.delay()
    launched, started = timezone.now(), time.perf_counter()
    with worker(concurrency, burst=True) as proc:
        proc.wait(timeout=WORKER_TIMEOUT)
    wall = time.perf_counter() - started
    by_state = dict(TaskResult.objects.values_list("state").annotate(Count("id")))
    span = TaskResult.objects.aggregate(start=Min("date_started"), end=Max("date_done"))
    clear_tasks()
    if by_state.get(states.SUCCESS) != n:
        loud(f"end-to-end c={concurrency}: expected {n} SUCCESS, found {by_state}")
    elif span["start"] < launched:
        loud(f"end-to-end c={concurrency}: a task started before the worker was launched")
    else:
        return n / (span["end"] - span["start"]).total_seconds(), wall
    return None, wall


def measure_latency(samples: int, budget: float) -> list[float]:
    """Round-trip seconds of ``delay()`` + ``get()`` against an idle worker.

    Stops early once ``budget`` seconds have passed, so a slow backend cannot stall the run.
    """
    from testproject.demo.tasks import noop

    clear_tasks()
    timings: list[float] = []
    with worker(1, burst=False):
        noop.delay().get(timeout=60)  # the worker is up and idle
        deadline = time.perf_counter() + budget
        while len(timings) < samples and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            noop.delay().get(timeout=10)
            timings.append(time.perf_counter() - t0)
    clear_tasks()
    return timings


@dataclass(frozen=True)
class FloorSQL:
    """The floor's statements in one database's dialect; ``complete`` takes one id list."""

    create: tuple[str, ...]
    insert: str
    claim: str
    complete: str
    ids: Callable[[list[int]], Any]


FLOOR_TABLE = "bench_floor"
FLOOR_PAYLOAD = json.dumps({"args": [], "kwargs": {}})
POSTGRES_FLOOR = FloorSQL(
    create=(
        f"DROP TABLE IF EXISTS {FLOOR_TABLE}",
        f"CREATE TABLE {FLOOR_TABLE} (id bigserial PRIMARY KEY, state text NOT NULL, "
        "payload text NOT NULL, lease text)",
        f"CREATE INDEX {FLOOR_TABLE}_pending ON {FLOOR_TABLE} (id) WHERE state = 'PENDING'",
    ),
    insert=f"INSERT INTO {FLOOR_TABLE} (state, payload) VALUES ('PENDING', %s)",
    claim=f"UPDATE {FLOOR_TABLE} SET state = 'STARTED', lease = %s WHERE id IN (SELECT id "
    f"FROM {FLOOR_TABLE} WHERE state = 'PENDING' ORDER BY id LIMIT {FLOOR_BATCH} "
    "FOR UPDATE SKIP LOCKED) RETURNING id",
    complete=f"UPDATE {FLOOR_TABLE} SET state = 'SUCCESS', lease = NULL WHERE id = ANY(%s)",
    ids=list,
)
SQLITE_FLOOR = FloorSQL(
    create=(
        f"DROP TABLE IF EXISTS {FLOOR_TABLE}",
        f"CREATE TABLE {FLOOR_TABLE} (id integer PRIMARY KEY, state text NOT NULL, "
        "payload text NOT NULL, lease text)",
        f"CREATE INDEX {FLOOR_TABLE}_pending ON {FLOOR_TABLE} (id) WHERE state = 'PENDING'",
    ),
    insert=f"INSERT INTO {FLOOR_TABLE} (state, payload) VALUES ('PENDING', ?)",
    claim=f"UPDATE {FLOOR_TABLE} SET state = 'STARTED', lease = ? WHERE id IN (SELECT id "
    f"FROM {FLOOR_TABLE} WHERE state = 'PENDING' ORDER BY id LIMIT {FLOOR_BATCH}) RETURNING id",
    complete=f"UPDATE {FLOOR_TABLE} SET state = 'SUCCESS', lease = NULL "
    "WHERE id IN (SELECT value FROM json_each(?))",
    ids=json.dumps,
)


def floor_connection() -> tuple[Any, FloorSQL]:
    """A raw autocommit connection to the scratch database (same file/DB as Django's)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        import psycopg

        return psycopg.connect(os.environ["DATABASE_URL"], autocommit=True), POSTGRES_FLOOR
    conn = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")  # as the project's settings do
    return conn, SQLITE_FLOOR


def measure_floor(n: int) -> tuple[float, float]:
    """(insert rows/s, claim+complete rows/s) of the least work per task, one process."""
    conn, sql = floor_connection()
    try:
        for statement in sql.create:
            conn.execute(statement)
        inserts = rate(n, lambda: conn.execute(sql.insert, (FLOOR_PAYLOAD,)))
        started = time.perf_counter()
        done = 0
        while ids := [row[0] for row in conn.execute(sql.claim, (uuid.uuid4().hex,)).fetchall()]:
            conn.execute(sql.complete, (sql.ids(ids),))
            done += len(ids)
        claims = done / (time.perf_counter() - started)
        conn.execute(sql.create[0])
    finally:
        conn.close()
    if done != n:
        loud(f"floor: claimed {done} rows, expected {n}")
    return inserts, claims


def measure(n: int, samples: int, latency_budget: float) -> Results:
    """Every measure on the database in ``DATABASE_URL``."""
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    results: Results = {"enqueue": measure_enqueue(n)}
    for concurrency in (1, 2):
        throughput, wall = measure_end_to_end(n, concurrency)
        results[f"e2e_c{concurrency}"] = throughput
        results[f"e2e_c{concurrency}_wall"] = wall
    timings = measure_latency(samples, latency_budget)
    if len(timings) >= 2:
        cuts = statistics.quantiles(timings, n=100, method="inclusive")
        results["latency_p50"], results["latency_p95"] = cuts[49] * 1000, cuts[94] * 1000
    results["latency_samples"] = len(timings)
    results["floor_insert"], results["floor_claim"] = measure_floor(n)
    results["ratio_enqueue"] = ratio(results["enqueue"], results["floor_insert"])
    results["ratio_e2e"] = ratio(results["e2e_c1"], results["floor_claim"])
    return results


def ratio(ours: float | None, floor: float | None) -> float | None:
    return ours / floor if ours and floor else None


# -- the parent: scratch databases, child runs, report --------------------------------------------


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


class Unreachable(Exception):
    """PostgreSQL cannot be used: no psycopg, or no server at the URL."""


def maintenance_connection(url: str) -> Any:
    """An autocommit psycopg connection to the server's ``postgres`` database."""
    try:
        import psycopg
    except ImportError as exc:
        raise Unreachable(f"psycopg is not installed ({exc})") from exc
    try:
        return psycopg.connect(with_database(url, "postgres"), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise Unreachable(f"{type(exc).__name__}: {str(exc).strip()}") from exc


def drop_scratch(conn: Any) -> None:
    from psycopg import sql

    name = sql.Identifier(SCRATCH_DB)
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def postgres_scratch(url: str) -> tuple[str, str]:
    """Drop and create the scratch database; return its URL and the server version."""
    from psycopg import sql

    with maintenance_connection(url) as conn:
        drop_scratch(conn)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH_DB)))
        version = conn.execute("SHOW server_version").fetchone()[0]
    return with_database(url, SCRATCH_DB), version


def run_database(label: str, url: str, args: argparse.Namespace) -> Results | None:
    """Migrate the scratch database at ``url`` and measure it in a child process."""
    print(f"\n## {label}\n\nmigrating {urlsplit(url).scheme} scratch database ...", flush=True)
    env = django_env(url)
    subprocess.run(manage("migrate", "--noinput", "-v0"), cwd=REPO, env=env, check=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        child = [sys.executable, __file__, "--child-output", out.name]
        child += ["--n", str(args.n), "--latency-samples", str(args.latency_samples)]
        child += ["--latency-budget", str(args.latency_budget)]
        started = time.perf_counter()
        code = subprocess.run(child, cwd=REPO, env=env).returncode
        if code != 0:
            loud(f"{label}: the benchmark process exited with {code}")
            return None
        report = json.loads(Path(out.name).read_text())
    results: Results = report["results"]
    PROBLEMS.extend(f"{label}: {problem}" for problem in report["problems"])
    print(f"measured in {time.perf_counter() - started:.0f}s\n")
    rows = [[lbl, fmt(key, results.get(key))] for key, lbl, _ in MEASURES]
    print(markdown_table(["measure", label], rows), flush=True)
    return results


def machine(postgres_version: str | None) -> str:
    import django

    return (
        f"machine: nproc={os.cpu_count()}, {platform.machine()}, Python {platform.python_version()}"
        f", Django {django.get_version()}, PostgreSQL {postgres_version or 'n/a'}"
        f", SQLite {sqlite3.sqlite_version}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="tasks per throughput run")
    parser.add_argument("--latency-samples", type=int, default=200, help="round trips timed")
    parser.add_argument(
        "--latency-budget",
        type=float,
        default=30.0,
        help="stop timing round trips after this many seconds per database (default: 30)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="server to use (env POSTGRES_URL); the database in it is not touched",
    )
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.child_output:
        results = measure(args.n, args.latency_samples, args.latency_budget)
        Path(args.child_output).write_text(json.dumps({"results": results, "problems": PROBLEMS}))
        return 0

    print(f"# django_tasks benchmark: n={args.n}, latency samples={args.latency_samples}")
    columns: dict[str, Results | None] = {}
    with tempfile.TemporaryDirectory(prefix="django-tasks-bench-") as tmp:
        columns["SQLite"] = run_database("SQLite", f"sqlite:///{tmp}/bench.sqlite3", args)
    postgres_version = None
    try:
        url, postgres_version = postgres_scratch(args.postgres_url)
    except Unreachable as exc:
        print(f"\nPostgreSQL is unreachable at {args.postgres_url}: {exc}; SQLite only.")
    else:
        try:
            columns["PostgreSQL"] = run_database("PostgreSQL", url, args)
        finally:
            with maintenance_connection(args.postgres_url) as conn:
                drop_scratch(conn)

    print(f"\n## Summary\n\n{machine(postgres_version)}\n")
    rows = [
        [label, *(fmt(key, (r or {}).get(key)) for r in columns.values())]
        for key, label, _ in MEASURES
    ]
    print(markdown_table(["measure", *columns], rows))
    print(
        "\nratios: ours / raw-SQL floor on the same database (1.00 = as fast as the floor);"
        " enqueue vs floor inserts, end-to-end c=1 vs floor claim+complete."
    )
    for problem in PROBLEMS:
        print(f"\n!!! PROBLEM: {problem}")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
