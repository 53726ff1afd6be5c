"""``rate_limit="50/s"`` under two workers of two processes each, with 2,000 tasks queued.

Not part of the test suite. It sends ``--n`` tasks of ``tests.taskapp.tasks.limited_fifty``
(``rate_limit="50/s"``), starts ``--workers`` ``manage.py runworker --concurrency 2``, and
reads when each task started (the task records ``time.time()``). It reports the most starts
in any one-second window (sliding, from each start) and the time from the first start to the
last, against the ``n / 50`` seconds the limit allows. As a reference, measured in the same
run, the same number of tasks of the same body without a limit (``unlimited``) under the same
workers: what the workers do when the limit does not hold them back.

The database is the one ``DATABASE_URL`` names (default: SQLite in a temporary directory);
its task rows are deleted first. ``DJANGO_TASKS_BROKER_URL`` picks the transport.

    .venv/bin/python bench/rate_limit.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dt_rate .venv/bin/python bench/rate_limit.py
"""

from __future__ import annotations

import argparse
import bisect
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIMIT = 50.0


def run(name: str, n: int, workers: int, run_dir: Path, env: dict[str, str]) -> list[float]:
    from django.db import connection

    from django_tasks.models import RateLimitBucket, TaskResult
    from tests.taskapp import tasks
    from tests.taskapp.models import Run

    TaskResult.objects.all().delete()
    Run.objects.all().delete()
    RateLimitBucket.objects.all().delete()
    if connection.vendor == "postgresql":
        # Rows held back are written again at each turn: without autovacuum, dead rows of
        # earlier runs would slow this one down.
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM {TaskResult._meta.db_table}")
    task = getattr(tasks, name)
    for _ in range(n):
        task.delay()
    connection.close()
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "runworker", "-c", "2", "--without-beat"],
            cwd=REPO,
            env=env,
            stdout=(run_dir / f"{name}-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i in range(workers)
    ]
    try:
        deadline = time.monotonic() + 10 * n / LIMIT + 60
        while Run.objects.count() < n and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    return sorted(float(label) for label in Run.objects.values_list("label", flat=True))


def busiest_second(starts: list[float]) -> int:
    return max(bisect.bisect_left(starts, s + 1.0) - i for i, s in enumerate(starts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="rate-bench-"))
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", f"sqlite:///{run_dir / 'rate.sqlite3'}")
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ.update(env)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    transport = env.get("DJANGO_TASKS_BROKER_URL", "django://").split("://")[0]
    print(
        f"rate_limit bench: {args.n} tasks, rate_limit='50/s', {args.workers} workers x 2 "
        f"processes; {connection.vendor}, {transport}://; logs in {run_dir}",
        flush=True,
    )
    limited = run("limited_fifty", args.n, args.workers, run_dir, env)
    reference = run("unlimited", args.n, args.workers, run_dir, env)
    ideal = (args.n - 1) / LIMIT
    span = limited[-1] - limited[0]
    print(f"{'':<22} {'ran':>6} {'first to last start s':>22} {'busiest second':>15}")
    print(f"{'limited (50/s)':<22} {len(limited):>6} {span:>22.2f} {busiest_second(limited):>15}")
    ref_span = reference[-1] - reference[0]
    ref_busiest = busiest_second(reference)
    print(f"{'reference, no limit':<22} {len(reference):>6} {ref_span:>22.2f} {ref_busiest:>15}")
    print(
        f"limited time / the limit's {ideal:.2f} s: {span / ideal:.3f}; busiest second: "
        f"{busiest_second(limited)} starts (limit 50); the workers without a limit run "
        f"{args.n / ref_span:.0f} tasks/s, {args.n / ref_span / LIMIT:.1f}x the limit"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
