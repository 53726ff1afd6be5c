"""Throughput and latency of django_tasks on SQLite, PostgreSQL, Redis and RabbitMQ.

The database transport is put next to a raw-SQL floor; the broker transports next to Celery 5
with django-celery-results on the same broker and PostgreSQL (in its own virtualenv).

Run ``make bench`` or ``.venv/bin/python bench/run.py [--n 5000] [--latency-samples 200]``.
The parent process prepares a scratch database per column, then measures each one in a
child process of this script (Django is set up once per process, so one per column).
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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

import streaming  # bench/streaming.py
from subprocesses import background  # bench/subprocesses.py

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/django_tasks"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
SCRATCH_DB = "django_tasks_bench"
BROKER_SCRATCH_DB = "django_tasks_bench_brokers"
CELERY_SCRATCH_DB = "django_tasks_bench_celery"
#: Our tasks travel in this queue (the Celery reference uses ``bench_celery``), so a bench
#: run neither takes nor purges messages of anything else using the same broker.
BENCH_QUEUE = "bench"
CELERY_DIR = REPO / "bench" / "celery_reference"
CELERY_VENV = REPO / "bench" / ".venv-celery"
CELERY_REQUIREMENTS = (
    "celery[redis]>=5.4,<6",
    "django-celery-results>=2.5",
    "django>=5.2",
    "psycopg[binary]>=3.1.8",
)
CELERY_VARIANTS = ("default", "reused")
SETTINGS = "testproject.settings"
FLOOR_BATCH = 50
#: Worker concurrencies of the streaming mode.
STREAM_CONCURRENCY = (1, 2, 4)
#: Claimer processes of the streaming floor.
FLOOR_STREAM_CLAIMERS = 2
WORKER_TIMEOUT = 600.0

#: (key, label, format) of every measure, in table order.
MEASURES: tuple[tuple[str, str, str], ...] = (
    ("enqueue", "enqueue `noop.delay()` (tasks/s)", "{:,.0f}"),
    ("send_insert", "  per send: INSERT of the PENDING row (µs)", "{:,.0f}"),
    ("send_publish", "  per send: publish to the broker (µs)", "{:,.0f}"),
    ("send_other", "  per send: the rest (message, validation) (µs)", "{:,.0f}"),
    ("e2e_c1", "end-to-end, concurrency 1 (tasks/s)", "{:,.0f}"),
    ("e2e_c1_wall", "  worker wall time, c=1 (s)", "{:.2f}"),
    ("e2e_c2", "end-to-end, concurrency 2 (tasks/s)", "{:,.0f}"),
    ("e2e_c2_wall", "  worker wall time, c=2 (s)", "{:.2f}"),
    ("latency_p50", "round-trip latency p50 (ms)", "{:.1f}"),
    ("latency_p95", "round-trip latency p95 (ms)", "{:.1f}"),
    ("latency_samples", "  latency samples", "{:.0f}"),
    *(
        (f"stream_{what}_c{c}", f"streaming c={c}: {label}", "{:,.0f}")
        for c in STREAM_CONCURRENCY
        for what, label in (
            ("e2e", "end-to-end (tasks/s)"),
            ("send", "  the producer's `delay()` meanwhile (tasks/s)"),
        )
    ),
    ("floor_insert", "floor: raw inserts (rows/s)", "{:,.0f}"),
    ("floor_claim", f"floor: claim {FLOOR_BATCH} + complete (rows/s)", "{:,.0f}"),
    (
        "floor_stream",
        "floor streaming: INSERT while 2 claimers claim + complete (rows/s)",
        "{:,.0f}",
    ),
    ("ratio_enqueue", "ratio: enqueue / floor insert", "{:.2f}"),
    ("ratio_e2e", "ratio: end-to-end c=1 / floor claim+complete", "{:.2f}"),
    ("ratio_stream_scaling", "ratio: streaming e2e c=2 / c=1", "{:.2f}"),
    ("ratio_stream_floor", "ratio: streaming e2e c=2 / floor streaming", "{:.2f}"),
    ("ratio_send_busy", "ratio: `delay()` while c=2 runs / idle", "{:.2f}"),
)

Results = dict[str, float | None]
#: What went wrong in this process, repeated under the summary.
PROBLEMS: list[str] = []


# -- shared helpers ------------------------------------------------------------------------------


def django_env(database_url: str, broker_url: str = "django://") -> dict[str, str]:
    """The environment of every Django process of the run (this one's children included)."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "DJANGO_TASKS_BROKER_URL": broker_url,
        "DJANGO_TASKS_TASK_DEFAULT_QUEUE": BENCH_QUEUE,
    }


def is_broker(url: str) -> bool:
    return urlsplit(url).scheme not in ("", "django")


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
    with background(cmd, REPO, report=loud) as proc:
        yield proc


def clear_tasks() -> None:
    """Empty the task and history tables, and the broker queue on a broker transport."""
    from django.db import connection

    from django_tasks.models import TaskResult, TaskStateChange

    purge_broker_queue()

    tables = [connection.ops.quote_name(m._meta.db_table) for m in (TaskStateChange, TaskResult)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)}")
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")


def purge_broker_queue() -> None:
    """Drop every message of the bench's queue (declared as the transport declares it)."""
    from django_tasks.conf import tasks_settings
    from django_tasks.transports import get_transport

    transport = get_transport()
    if not hasattr(transport, "kombu_queue"):
        return
    with transport._connection() as conn:
        queue = transport.kombu_queue(tasks_settings.TASK_DEFAULT_QUEUE)(conn.default_channel)
        queue.declare()
        queue.purge()


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


def measure_send_split(n: int) -> dict[str, float | None]:
    """Microseconds per ``delay()`` spent in the row's INSERT (its commit included), in the
    broker publish, and in the rest, from ``n`` more sends timed piece by piece."""
    from django_tasks import store
    from django_tasks.transports import get_transport
    from testproject.demo.tasks import noop

    transport = get_transport()
    # The INSERT is the store's (every transport calls ``store.insert_task``); the publish is
    # the broker transport's own method.
    targets: dict[str, Any] = {"insert": store}
    if hasattr(transport, "publish"):
        targets["publish"] = transport
    attribute = {"insert": "insert_task", "publish": "publish"}
    spent = dict.fromkeys(targets, 0.0)

    def timed(name: str) -> Callable[..., Any]:
        function = getattr(targets[name], attribute[name])

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return wrapper

    originals = {name: getattr(owner, attribute[name]) for name, owner in targets.items()}
    for name, owner in targets.items():
        setattr(owner, attribute[name], timed(name))
    clear_tasks()
    try:
        elapsed = n / rate(n, noop.delay)
    finally:
        for name, owner in targets.items():
            if owner is transport:
                delattr(owner, attribute[name])  # the instance attribute hid the method
            else:
                setattr(owner, attribute[name], originals[name])
    clear_tasks()
    per_send = {k: v / n * 1e6 for k, v in spent.items()}
    return {
        "send_insert": per_send["insert"],
        "send_publish": per_send.get("publish"),
        "send_other": elapsed / n * 1e6 - sum(per_send.values()),
    }


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


class OurSide:
    """django_tasks as bench/streaming.py measures it."""

    def start_worker(self, concurrency: int) -> contextlib.AbstractContextManager[Any]:
        return worker(concurrency, burst=False)

    def round_trip(self) -> None:
        from testproject.demo.tasks import noop

        noop.delay().get(timeout=60)

    def reset(self) -> None:
        clear_tasks()

    def done(self) -> tuple[int, int, float | None]:
        from django.db.models import Count, Max, Q

        from django_tasks import states
        from django_tasks.models import TaskResult

        row = TaskResult.objects.aggregate(
            ok=Count("pk", filter=Q(state=states.SUCCESS)), total=Count("pk"), end=Max("date_done")
        )
        return row["ok"], row["total"], row["end"] and row["end"].timestamp()


def measure_streaming(n: int, concurrency: int) -> tuple[float | None, float | None]:
    """(end-to-end tasks/s, the producer's sends/s) of ``n`` no-ops sent by another process
    while an idle ``runworker --concurrency C`` runs (see bench/streaming.py)."""
    producer = [sys.executable, __file__, "--produce", str(n)]
    return streaming.measure(
        OurSide(), n, concurrency, producer, REPO, timeout=WORKER_TIMEOUT, loud=loud
    )


def produce_noops() -> None:
    """The streaming producer process: Django set up, then ``noop.delay()`` back to back."""
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from testproject.demo.tasks import noop

    streaming.main_for_producer(sys.argv, noop.delay)


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


def _floor_claimer(done: Any, n: int, finished_at: Any) -> None:
    """A streaming-floor claimer process: claim and complete until ``n`` rows are done."""
    conn, sql = floor_connection()
    try:
        while done.value < n:
            ids = [row[0] for row in conn.execute(sql.claim, (uuid.uuid4().hex,)).fetchall()]
            if not ids:
                time.sleep(0.0005)  # a generous floor: a real queue would wait for a wake-up
                continue
            conn.execute(sql.complete, (sql.ids(ids),))
            with done.get_lock():
                done.value += len(ids)
                finished_at.value = time.time()
    finally:
        conn.close()


def measure_floor_streaming(n: int) -> float | None:
    """Rows/s of raw ``INSERT``s by this process while ``FLOOR_STREAM_CLAIMERS`` processes
    claim (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and complete them."""
    import multiprocessing

    conn, sql = floor_connection()
    for statement in sql.create:
        conn.execute(statement)
    context = multiprocessing.get_context("fork")  # the children open their own connections
    done, finished_at = context.Value("q", 0), context.Value("d", 0.0)
    claimers = [
        context.Process(target=_floor_claimer, args=(done, n, finished_at))
        for _ in range(FLOOR_STREAM_CLAIMERS)
    ]
    for claimer in claimers:
        claimer.start()
    try:
        first = time.time()
        for _ in range(n):
            conn.execute(sql.insert, (FLOOR_PAYLOAD,))
        for claimer in claimers:
            claimer.join(timeout=WORKER_TIMEOUT)
    finally:
        for claimer in claimers:
            if claimer.is_alive():
                claimer.kill()
        conn.execute(sql.create[0])
        conn.close()
    if done.value != n:
        loud(f"floor streaming: completed {done.value} rows, expected {n}")
        return None
    return n / (finished_at.value - first)


def measure(n: int, samples: int, latency_budget: float, modes: list[str]) -> Results:
    """Every measure on the database in ``DATABASE_URL``."""
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    results: Results = {"enqueue": measure_enqueue(n)}
    results.update(measure_send_split(n))
    if "backlog" in modes:
        for concurrency in (1, 2):
            throughput, wall = measure_end_to_end(n, concurrency)
            results[f"e2e_c{concurrency}"] = throughput
            results[f"e2e_c{concurrency}_wall"] = wall
    if "streaming" in modes:
        for concurrency in STREAM_CONCURRENCY:
            e2e, sends = measure_streaming(n, concurrency)
            results[f"stream_e2e_c{concurrency}"] = e2e
            results[f"stream_send_c{concurrency}"] = sends
        results["ratio_stream_scaling"] = ratio(results["stream_e2e_c2"], results["stream_e2e_c1"])
        results["ratio_send_busy"] = ratio(results["stream_send_c2"], results["enqueue"])
    timings = measure_latency(samples, latency_budget)
    if len(timings) >= 2:
        cuts = statistics.quantiles(timings, n=100, method="inclusive")
        results["latency_p50"], results["latency_p95"] = cuts[49] * 1000, cuts[94] * 1000
    results["latency_samples"] = len(timings)
    if is_broker(os.environ["DJANGO_TASKS_BROKER_URL"]):
        return results  # the floor is the database transport's; see the Celery reference
    results["floor_insert"], results["floor_claim"] = measure_floor(n)
    results["ratio_enqueue"] = ratio(results["enqueue"], results["floor_insert"])
    results["ratio_e2e"] = ratio(results.get("e2e_c1"), results["floor_claim"])
    if "streaming" in modes:
        results["floor_stream"] = measure_floor_streaming(n)
        results["ratio_stream_floor"] = ratio(results["stream_e2e_c2"], results["floor_stream"])
    return results


def ratio(ours: float | None, floor: float | None) -> float | None:
    return ours / floor if ours and floor else None


# -- the parent: scratch databases, child runs, report --------------------------------------------


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


class Unreachable(Exception):
    """A server cannot be used: no client library, or nothing answering at the URL."""


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


def drop_scratch(url: str, name: str) -> None:
    from psycopg import sql

    with maintenance_connection(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def postgres_scratch(url: str, name: str) -> tuple[str, str]:
    """Drop and create the scratch database ``name``; return its URL and the server version."""
    from psycopg import sql

    drop_scratch(url, name)
    with maintenance_connection(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        version = conn.execute("SHOW server_version").fetchone()[0]
    return with_database(url, name), version


@contextlib.contextmanager
def scratch_database(url: str, name: str) -> Iterator[str]:
    """A fresh scratch database on the server at ``url``, dropped afterwards."""
    scratch, _ = postgres_scratch(url, name)
    try:
        yield scratch
    finally:
        drop_scratch(url, name)


def check_broker(url: str) -> None:
    """Raise :class:`Unreachable` unless a broker answers at ``url`` within a few seconds."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=0)
    except Exception as exc:
        raise Unreachable(f"{type(exc).__name__}: {str(exc).strip()}") from exc


def run_database(
    label: str, url: str, args: argparse.Namespace, broker: str = "django://"
) -> Results | None:
    """Migrate the scratch database at ``url`` and measure it in a child process."""
    where = f"{urlsplit(url).scheme} scratch database"
    if is_broker(broker):
        where += f", broker {redact(broker)}, queue {BENCH_QUEUE!r}"
    print(f"\n## {label}\n\nmigrating {where} ...", flush=True)
    env = django_env(url, broker)
    subprocess.run(manage("migrate", "--noinput", "-v0"), cwd=REPO, env=env, check=True)
    report = measure_in_child([sys.executable, __file__, "--child-output"], REPO, env, label, args)
    if report is None:
        return None
    results: Results = report["results"]
    rows = [[lbl, fmt(key, results.get(key))] for key, lbl, _ in MEASURES]
    print(markdown_table(["measure", label], rows), flush=True)
    return results


def measure_in_child(
    cmd: list[str], cwd: Path, env: dict[str, str], label: str, args: argparse.Namespace
) -> dict[str, Any] | None:
    """Run a measuring process (``cmd`` + an output file + the sizes); its JSON report, or
    None (said loudly) if it failed. Its problems are kept under ``label``."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [*cmd, out.name, "--n", str(args.n), "--latency-samples", str(args.latency_samples)]
        cmd += ["--latency-budget", str(args.latency_budget), "--modes", ",".join(args.modes)]
        started = time.perf_counter()
        code = subprocess.run(cmd, cwd=cwd, env=env).returncode
        if code != 0:
            loud(f"{label}: the measuring process exited with {code}")
            return None
        report = json.loads(Path(out.name).read_text())
    PROBLEMS.extend(f"{label}: {problem}" for problem in report["problems"])
    print(f"measured in {time.perf_counter() - started:.0f}s\n")
    return report


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


# -- the Celery reference ------------------------------------------------------------------------


def celery_python() -> Path:
    """The Python of the Celery reference's own virtualenv, created on first use.

    Celery is never installed into the project's environment; the requirements are written
    into a marker file, so changing them rebuilds the virtualenv.
    """
    python = CELERY_VENV / "bin" / "python"
    marker = CELERY_VENV / ".installed"
    wanted = "\n".join(CELERY_REQUIREMENTS)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"\ncreating {CELERY_VENV.relative_to(REPO)} for the Celery reference ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        subprocess.run([base, "-m", "venv", "--clear", str(CELERY_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *CELERY_REQUIREMENTS], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise Unreachable(f"could not create {CELERY_VENV}: {exc}") from exc
    marker.write_text(wanted)
    return python


def run_celery(
    label: str, database_url: str, broker: str, variant: str, args: argparse.Namespace
) -> Results | None:
    """Measure the Celery reference (``variant``: default or reused connections)."""
    python = celery_python()
    print(f"\n## {label}: Celery + django-celery-results, {variant} connections\n", flush=True)
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "BENCH_DATABASE_URL": database_url,
        "BENCH_BROKER_URL": broker,
        "BENCH_CELERY_VARIANT": variant,
    }
    cmd = [str(python), str(CELERY_DIR / "measure.py"), "--output"]
    report = measure_in_child(cmd, CELERY_DIR, env, f"{label} Celery {variant}", args)
    if report is None:
        return None
    results: Results = report["results"]
    CELERY_VERSIONS.update(report["versions"])
    rows = [[lbl, fmt(key, results.get(key))] for key, lbl, _ in MEASURES if key in results]
    print(markdown_table(["measure", f"Celery {variant}"], rows), flush=True)
    return results


CELERY_VERSIONS: dict[str, str] = {}
#: (key, label, higher is better) of the rows compared with Celery.
COMPARED: tuple[tuple[str, str, bool], ...] = (
    ("enqueue", "enqueue (tasks/s)", True),
    ("e2e_c1", "end-to-end c=1 (tasks/s)", True),
    ("e2e_c2", "end-to-end c=2 (tasks/s)", True),
    *(
        (f"stream_e2e_c{c}", f"streaming end-to-end c={c} (tasks/s)", True)
        for c in STREAM_CONCURRENCY
    ),
    ("stream_send_c2", "streaming: sends while c=2 runs (tasks/s)", True),
    ("latency_p50", "latency p50 (ms)", False),
    ("latency_p95", "latency p95 (ms)", False),
)


def comparison_table(ours: Results, celery: dict[str, Results | None]) -> str:
    """Ours, each Celery variant, and ours/Celery (for latency, Celery/ours: >1 is better)."""
    headers = ["measure", "ours"]
    for variant in celery:
        headers += [f"Celery {variant}", f"ratio vs {variant}"]
    rows = []
    for key, label, higher in COMPARED:
        row = [label, fmt(key, ours.get(key))]
        for theirs in celery.values():
            value = (theirs or {}).get(key)
            mine = ours.get(key)
            factor = (ratio(mine, value) if higher else ratio(value, mine)) if value else None
            row += [fmt(key, value), "n/a" if factor is None else f"{factor:.2f}x"]
        rows.append(row)
    return markdown_table(headers, rows)


#: The performance targets (the streaming issue's table): (column, what, our measure, the
#: reference's measure or None for an absolute bound, the bound, True if at least).
TARGETS: tuple[tuple[str, str, str, str | None, float, bool], ...] = (
    ("PostgreSQL", "streaming e2e c=2 / c=1", "ratio_stream_scaling", None, 1.5, True),
    ("PostgreSQL", "streaming e2e c=2 / floor streaming", "ratio_stream_floor", None, 0.6, True),
    ("PostgreSQL", "`delay()` / raw INSERT", "ratio_enqueue", None, 0.6, True),
    ("PostgreSQL", "`delay()` while c=2 runs / idle", "ratio_send_busy", None, 0.8, True),
    ("PostgreSQL", "round trip p50 (ms)", "latency_p50", None, 2.5, False),
    ("SQLite", "round trip p95 (ms)", "latency_p95", None, 30.0, False),
    ("Redis", "streaming e2e c=2 / Celery's", "stream_e2e_c2", "stream_e2e_c2", 2.0, True),
    ("Redis", "`delay()` / Celery's", "enqueue", "enqueue", 0.8, True),
    ("Redis", "round trip p50 (ms)", "latency_p50", None, 3.5, False),
    ("RabbitMQ", "streaming e2e c=2 / Celery's", "stream_e2e_c2", "stream_e2e_c2", 2.0, True),
    ("RabbitMQ", "`delay()` / Celery's (with confirms)", "enqueue", "enqueue", 0.5, True),
    ("RabbitMQ", "round trip p50 (ms)", "latency_p50", None, 3.5, False),
)


def targets_table(
    columns: dict[str, Results | None], references: dict[str, dict[str, Results | None]]
) -> str:
    """Each target with what this run measured; against Celery, its best variant."""
    rows = []
    for column, what, key, theirs, bound, at_least in TARGETS:
        ours = (columns.get(column) or {}).get(key)
        if theirs is not None:
            best = [(r or {}).get(theirs) for r in references.get(column, {}).values()]
            best_value = max((v for v in best if v), default=None)
            ours = ratio(ours, best_value)
        if ours is None:
            verdict = "n/a"
        else:
            verdict = "met" if (ours >= bound if at_least else ours <= bound) else "NOT met"
        measured = "n/a" if ours is None else f"{ours:,.2f}"
        rows.append([column, what, f"{'>=' if at_least else '<='} {bound:g}", measured, verdict])
    return markdown_table(["column", "target", "bound", "measured", "verdict"], rows)


# -- main ----------------------------------------------------------------------------------------


def machine(postgres_version: str | None) -> str:
    import django
    import kombu

    line = (
        f"machine: nproc={os.cpu_count()}, {platform.machine()}, Python {platform.python_version()}"
        f", Django {django.get_version()}, kombu {kombu.__version__}"
        f", PostgreSQL {postgres_version or 'n/a'}, SQLite {sqlite3.sqlite_version}"
    )
    if CELERY_VERSIONS:
        line += ", reference: " + ", ".join(f"{k} {v}" for k, v in CELERY_VERSIONS.items())
    return line


COLUMNS = ("sqlite", "postgresql", "redis", "rabbitmq")
MODES = ("backlog", "streaming")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="tasks per throughput run")
    parser.add_argument("--latency-samples", type=int, default=200, help="round trips timed")
    parser.add_argument(
        "--latency-budget",
        type=float,
        default=30.0,
        help="stop timing round trips after this many seconds per column (default: 30)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="server to use (env POSTGRES_URL); the database in it is not touched",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help=f"Redis for the broker column (env BENCH_REDIS_URL; default {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--rabbitmq-url",
        default=os.environ.get("BENCH_RABBITMQ_URL", DEFAULT_RABBITMQ_URL),
        help="RabbitMQ for the broker column (env BENCH_RABBITMQ_URL)",
    )
    parser.add_argument(
        "--only",
        default=",".join(COLUMNS),
        help=f"comma-separated columns to measure, of {', '.join(COLUMNS)} (default: all)",
    )
    parser.add_argument(
        "--no-celery", action="store_true", help="skip the Celery reference on brokers"
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated: backlog (the tasks queued before the worker starts), streaming"
        " (a producer process sends while the worker runs); default: both",
    )
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    parser.add_argument("--produce", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--produce-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown_modes := set(args.modes) - set(MODES):
        parser.error(f"unknown mode(s) in --modes: {', '.join(sorted(unknown_modes))}")
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := set(args.only) - set(COLUMNS):
        parser.error(f"unknown column(s) in --only: {', '.join(sorted(unknown))}")
    return args


def main() -> int:
    args = parse_args()
    if args.produce:
        produce_noops()
        return 0
    if args.child_output:
        results = measure(args.n, args.latency_samples, args.latency_budget, args.modes)
        Path(args.child_output).write_text(json.dumps({"results": results, "problems": PROBLEMS}))
        return 0

    print(f"# django_tasks benchmark: n={args.n}, latency samples={args.latency_samples}")
    columns: dict[str, Results | None] = {}
    references: dict[str, dict[str, Results | None]] = {}
    if "sqlite" in args.only:
        with tempfile.TemporaryDirectory(prefix="django-tasks-bench-") as tmp:
            columns["SQLite"] = run_database("SQLite", f"sqlite:///{tmp}/bench.sqlite3", args)
    postgres_version = None
    try:
        with maintenance_connection(args.postgres_url) as conn:
            postgres_version = conn.execute("SHOW server_version").fetchone()[0]
    except Unreachable as exc:
        print(f"\nPostgreSQL is unreachable at {args.postgres_url}: {exc}; SQLite only.")
    if postgres_version and "postgresql" in args.only:
        with scratch_database(args.postgres_url, SCRATCH_DB) as url:
            columns["PostgreSQL"] = run_database("PostgreSQL", url, args)
    brokers = {"Redis": ("redis", args.redis_url), "RabbitMQ": ("rabbitmq", args.rabbitmq_url)}
    for label, (key, broker) in brokers.items():
        if key not in args.only:
            continue
        if not postgres_version:
            print(f"\nSkipping {label}: its results database is PostgreSQL, unreachable.")
            continue
        try:
            check_broker(broker)
        except Unreachable as exc:
            print(f"\nSkipping {label}: no broker at {redact(broker)} ({exc}).", flush=True)
            continue
        with scratch_database(args.postgres_url, BROKER_SCRATCH_DB) as url:
            columns[label] = run_database(label, url, args, broker)
        if args.no_celery:
            continue
        references[label] = {}
        with scratch_database(args.postgres_url, CELERY_SCRATCH_DB) as url:
            for variant in CELERY_VARIANTS:
                try:
                    references[label][variant] = run_celery(label, url, broker, variant, args)
                except Unreachable as exc:
                    print(f"\nSkipping the Celery reference: {exc}", flush=True)
                    references.pop(label)
                    break

    print(f"\n## Summary\n\n{machine(postgres_version)}\n")
    if not columns:
        print("Nothing was measured (see the messages above).")
        return 1 if PROBLEMS else 0
    rows = [
        [label, *(fmt(key, (r or {}).get(key)) for r in columns.values())]
        for key, label, _ in MEASURES
    ]
    print(markdown_table(["measure", *columns], rows))
    print(
        "\nratios: ours / raw-SQL floor on the same database (1.00 = as fast as the floor);"
        " enqueue vs floor inserts, end-to-end c=1 vs floor claim+complete."
    )
    for label in brokers:
        ours = columns.get(label)
        if ours is None:
            continue
        if label in references:
            print(
                f"\n### {label}: ours vs Celery 5 + django-celery-results"
                " (same broker, same PostgreSQL)\n"
            )
            print(comparison_table(ours, references[label]))

    if references:
        print(
            "\nratio: ours / Celery for rates, Celery / ours for latency (above 1x: ours is"
            " better). Celery 'default': as installed, the Django fixup closes the database"
            " connection around every task; 'reused': CELERY_DB_REUSE_MAX=100000."
            " Celery's get() polls every 1 ms (its default, 0.5 s, would add ~500 ms)."
        )
    print(f"\n### Targets\n\n{targets_table(columns, references)}")
    for problem in PROBLEMS:
        print(f"\n!!! PROBLEM: {problem}")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
