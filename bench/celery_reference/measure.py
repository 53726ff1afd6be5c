"""Celery 5 + django-celery-results, measured as ``bench/run.py`` measures django_tasks.

Run by ``bench/run.py`` with the Python of its own virtualenv (``bench/.venv-celery``),
never the project's: ``python measure.py --n 5000 --output out.json`` with
``BENCH_DATABASE_URL``, ``BENCH_BROKER_URL`` and ``BENCH_CELERY_VARIANT`` set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # bench/subprocesses.py (standard library only)

import django  # noqa: E402
from celery_app import app, noop  # noqa: E402

django.setup()

import streaming  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count, Max, Min, Q  # noqa: E402
from django_celery_results.models import TaskResult  # noqa: E402
from subprocesses import background  # noqa: E402

WORKER_TIMEOUT = 600.0
#: AsyncResult.get() polls the database backend; its default interval is 0.5 s, which
#: would make every round trip about 500 ms. 1 ms gives Celery its best latency.
GET_INTERVAL = 0.001
PROBLEMS: list[str] = []
#: As in bench/run.py.
STREAM_CONCURRENCY = (1, 2, 4)


def loud(message: str) -> None:
    PROBLEMS.append(message)
    print(f"\n!!! celery reference: {message}\n", file=sys.stderr, flush=True)


def reset() -> None:
    """Empty the results table and the broker queue."""
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {TaskResult._meta.db_table}")
    app.control.purge()


@contextlib.contextmanager
def worker(concurrency: int) -> Iterator[subprocess.Popen[bytes]]:
    """``celery worker --pool prefork`` with Celery's defaults otherwise; SIGTERM on exit."""
    cmd = [str(Path(sys.executable).with_name("celery")), "-A", "celery_app", "worker"]
    cmd += ["--concurrency", str(concurrency), "--pool", "prefork", "--loglevel", "warning"]
    cmd += ["--hostname", f"bench-{time.monotonic_ns()}@%h"]
    with background(cmd, HERE, report=loud, clean_exits=(0, -signal.SIGTERM)) as proc:
        yield proc


def measure_enqueue(n: int) -> float:
    noop.delay()  # connect
    reset()
    started = time.perf_counter()
    for _ in range(n):
        noop.delay()
    elapsed = time.perf_counter() - started
    reset()
    return n / elapsed


def measure_end_to_end(n: int, concurrency: int) -> tuple[float | None, float]:
    """(tasks/s between the first and the last stored result, worker wall time)."""
    reset()
    for _ in range(n):
        noop.delay()
    started = time.perf_counter()
    deadline = started + WORKER_TIMEOUT
    with worker(concurrency) as proc:
        while TaskResult.objects.filter(status="SUCCESS").count() < n:
            if proc.poll() is not None or time.perf_counter() > deadline:
                break
            time.sleep(0.1)
        wall = time.perf_counter() - started
    done = TaskResult.objects.filter(status="SUCCESS").count()
    total = TaskResult.objects.count()
    span = TaskResult.objects.aggregate(start=Min("date_done"), end=Max("date_done"))
    reset()
    if done != n or total != n:
        loud(f"end-to-end c={concurrency}: expected {n} SUCCESS, found {done} of {total}")
        return None, wall
    return (n - 1) / (span["end"] - span["start"]).total_seconds(), wall


class CelerySide:
    """The Celery reference as bench/streaming.py measures it."""

    def start_worker(self, concurrency: int) -> contextlib.AbstractContextManager[Any]:
        return worker(concurrency)

    def round_trip(self) -> None:
        noop.delay().get(timeout=60, interval=GET_INTERVAL)

    def reset(self) -> None:
        reset()

    def done(self) -> tuple[int, int, float | None]:
        row = TaskResult.objects.aggregate(
            ok=Count("pk", filter=Q(status="SUCCESS")), total=Count("pk"), end=Max("date_done")
        )
        return row["ok"], row["total"], row["end"] and row["end"].timestamp()


def measure_streaming(n: int, concurrency: int) -> tuple[float | None, float]:
    """(end-to-end tasks/s, the producer's sends/s), measured as ours is."""
    producer = [sys.executable, __file__, "--produce", str(n)]
    return streaming.measure(
        CelerySide(), n, concurrency, producer, HERE, timeout=WORKER_TIMEOUT, loud=loud
    )


def measure_latency(samples: int, budget: float) -> list[float]:
    reset()
    timings: list[float] = []
    with worker(1):
        noop.delay().get(timeout=60, interval=GET_INTERVAL)
        deadline = time.perf_counter() + budget
        while len(timings) < samples and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            noop.delay().get(timeout=10, interval=GET_INTERVAL)
            timings.append(time.perf_counter() - t0)
    reset()
    return timings


def main() -> int:
    if streaming.main_for_producer(sys.argv, noop.delay):
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--latency-budget", type=float, default=30.0)
    parser.add_argument("--modes", default="backlog,streaming")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    call_command("migrate", "--noinput", verbosity=0)
    results: dict[str, float | None] = {"enqueue": measure_enqueue(args.n)}
    if "backlog" in args.modes:
        for concurrency in (1, 2):
            rate, wall = measure_end_to_end(args.n, concurrency)
            results[f"e2e_c{concurrency}"] = rate
            results[f"e2e_c{concurrency}_wall"] = wall
    if "streaming" in args.modes:
        for concurrency in STREAM_CONCURRENCY:
            rate, sends = measure_streaming(args.n, concurrency)
            results[f"stream_e2e_c{concurrency}"] = rate
            results[f"stream_send_c{concurrency}"] = sends
    timings = measure_latency(args.latency_samples, args.latency_budget)
    if len(timings) >= 2:
        cuts = statistics.quantiles(timings, n=100, method="inclusive")
        results["latency_p50"], results["latency_p95"] = cuts[49] * 1000, cuts[94] * 1000
    results["latency_samples"] = len(timings)
    connection.close()
    import celery
    import django_celery_results
    import kombu

    versions = {
        "celery": celery.__version__,
        "django-celery-results": django_celery_results.__version__,
        "kombu": kombu.__version__,
    }
    output = {"results": results, "problems": PROBLEMS, "versions": versions}
    Path(args.output).write_text(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
