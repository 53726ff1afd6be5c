"""Periodic tasks under killed workers: is every due run sent exactly once, and how late?

Not part of the test suite. It starts ``--workers`` ``manage.py runworker`` processes, each
running the scheduler, with ``--entries`` interval entries due every second and one crontab
entry due every minute (``DJANGO_TASKS_BEAT_SCHEDULE``), for ``--minutes``; every
``--kill-every`` seconds it SIGKILLs one worker's whole process group and starts it again at
once. Then it checks the task rows and the workers' logs:

* duplicate sends: a due time of an entry that two schedulers both logged as sent (the task
  id derived from the due time would make a second row impossible, so the logs are counted);
* missed due runs: due times between an entry's first and last run with no run (at least one
  worker was up all along, so every due time counts);
* lateness: the task row's creation after its due time, p50 / p95 / max, and the start
  after the due time.

The database is the one ``DATABASE_URL`` names (default: SQLite in a temporary directory);
its task and schedule rows are deleted first. ``DJANGO_TASKS_BROKER_URL`` picks the
transport. Exit status 1 when a run was sent twice or missed.

    .venv/bin/python bench/beat.py                                  # 10 minutes, SQLite
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dt_beat .venv/bin/python bench/beat.py
    .venv/bin/python bench/beat.py --minutes 2 --kill-every 10      # a short run
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASK = "testproject.demo.tasks.noop"
SENT = re.compile(r"Periodic task '([^']+)': sent its run due at (\S+ \S+) \(")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Worker:
    def __init__(self, index: int, env: dict[str, str], log_dir: Path) -> None:
        self.index = index
        self.env = env
        self.log_dir = log_dir
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = (self.log_dir / f"worker-{self.index}-{self.starts}.log").open("wb")
        self.starts += 1
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runworker", "-c", "1", "--loglevel", "info"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=30.0)
    parser.add_argument("--entries", type=int, default=3, help="interval entries, every 1 s")
    parser.add_argument("--seed", type=int, default=1130)
    args = parser.parse_args()
    random.seed(args.seed)

    run_dir = Path(tempfile.mkdtemp(prefix="beat-bench-"))
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", f"sqlite:///{run_dir / 'beat.sqlite3'}")
    env["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
    schedule = {f"every-second-{i}": {"task": TASK, "every": 1.0} for i in range(args.entries)}
    schedule["every-minute"] = {"task": TASK, "crontab": {"minute": "*"}}
    env["DJANGO_TASKS_BEAT_SCHEDULE"] = json.dumps(schedule)
    os.environ.update(env)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from django_tasks.models import PeriodicTask, TaskResult

    call_command("migrate", verbosity=0)
    TaskResult.objects.all().delete()
    PeriodicTask.objects.all().delete()
    connection.close()
    transport = env.get("DJANGO_TASKS_BROKER_URL", "django://")
    print(
        f"beat bench: {args.workers} workers, {args.entries} entries every 1 s + one every "
        f"minute, {args.minutes:g} min, SIGKILL one every {args.kill_every:g} s; "
        f"{connection.vendor}, {transport.split('://')[0]}://; logs in {run_dir}",
        flush=True,
    )

    workers = [Worker(i, env, run_dir) for i in range(args.workers)]
    started = time.monotonic()
    kills = 0
    try:
        next_kill = started + args.kill_every
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(0.2)
            if time.monotonic() >= next_kill:
                victim = random.choice(workers)
                victim.kill()
                victim.start()
                kills += 1
                next_kill += args.kill_every
    finally:
        for worker in workers:
            worker.stop()

    time.sleep(1.0)
    sent_logs: collections.Counter[tuple[str, str]] = collections.Counter()
    for log in run_dir.glob("worker-*.log"):
        for match in SENT.finditer(log.read_text(errors="replace")):
            sent_logs[match.groups()] += 1
    duplicates = sum(count - 1 for count in sent_logs.values() if count > 1)

    rows = list(
        TaskResult.objects.filter(options__headers__has_key="periodic_task_name").values_list(
            "options", "date_created", "date_started", "state"
        )
    )
    by_entry: dict[str, list[tuple[dt.datetime, dt.datetime, dt.datetime | None]]] = (
        collections.defaultdict(list)
    )
    for options, created, started_at, _state in rows:
        headers = options["headers"]
        due = dt.datetime.fromisoformat(headers["periodic_due"])
        by_entry[headers["periodic_task_name"]].append((due, created, started_at))
    if not rows:
        print(f"no run was sent: see the workers' logs in {run_dir}")
        return 2
    missed = 0
    sent_lateness: list[float] = []
    start_lateness: list[float] = []
    print(
        f"{'entry':<16} {'runs':>5} {'missed':>7} {'late p50 ms':>12} {'p95 ms':>8} {'max ms':>8}"
    )
    for name in sorted(by_entry):
        runs = sorted(by_entry[name])
        step = dt.timedelta(minutes=1) if name == "every-minute" else dt.timedelta(seconds=1)
        dues = [r[0] for r in runs]
        expected = round((dues[-1] - dues[0]) / step) + 1
        entry_missed = expected - len(set(dues))
        missed += entry_missed
        late = [(created - due).total_seconds() for due, created, _s in runs]
        sent_lateness.extend(late)
        start_lateness.extend((s - due).total_seconds() for due, _c, s in runs if s is not None)
        print(
            f"{name:<16} {len(runs):>5} {entry_missed:>7} {1000 * statistics.median(late):>12.1f} "
            f"{1000 * percentile(late, 0.95):>8.1f} {1000 * max(late):>8.1f}"
        )
    print(
        f"kills: {kills}; runs: {len(rows)}; logged sends: {sum(sent_logs.values())}; "
        f"duplicate sends: {duplicates}; missed due runs: {missed}"
    )
    print(
        f"sent after due: p50 {1000 * percentile(sent_lateness, 0.5):.1f} ms, p95 "
        f"{1000 * percentile(sent_lateness, 0.95):.1f} ms, max {1000 * max(sent_lateness):.1f} ms; "
        f"started after due: p50 {1000 * percentile(start_lateness, 0.5):.1f} ms, p95 "
        f"{1000 * percentile(start_lateness, 0.95):.1f} ms"
    )
    return 1 if duplicates or missed else 0


if __name__ == "__main__":
    sys.exit(main())
