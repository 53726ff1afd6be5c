"""Canvas on PostgreSQL: a group's send rate, a group end to end, and a chord's body latency.

    .venv/bin/python bench/canvas.py [--n 5000] [--chord-size 1000] [--chords 5] [--rounds 3]

Each figure has its reference measured in the same run (a ``delay()`` loop of the same
tasks; the send rates are medians of ``--rounds`` alternating sends), on a scratch database
(dropped and created) of the PostgreSQL server in ``POSTGRES_URL``. See bench/README.md, "Canvas".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the project: testproject's settings and tasks

import run  # noqa: E402  (bench/run.py: scratch databases, workers, helpers)

SCRATCH = "django_tasks_bench_canvas"


def wait_all(n: int, timeout: float = 600.0) -> float:
    """Wait until ``n`` rows are SUCCESS; the last ``date_done`` as a timestamp."""
    from django.db.models import Max

    from django_tasks import states
    from django_tasks.models import TaskResult

    deadline = time.monotonic() + timeout
    done = TaskResult.objects.filter(state=states.SUCCESS)
    while done.count() < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {done.count()} of {n} done")
        time.sleep(0.05)
    return done.aggregate(end=Max("date_done"))["end"].timestamp()


def measure(n: int, chord_size: int, chords: int, rounds: int) -> dict[str, float]:
    import django

    django.setup()
    from django.db.models import Max

    from django_tasks import chord, group
    from django_tasks.models import TaskResult
    from testproject.demo.tasks import add, total

    out: dict[str, float] = {}
    add.delay(0, 0)  # connect
    run.clear_tasks()
    # Send rates: the median of `rounds` sends of each, alternating, on an emptied table.
    loop_rates, group_rates = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(n):
            add.delay(i, i)
        loop_rates.append(n / (time.perf_counter() - t0))
        run.clear_tasks()
        t0 = time.perf_counter()
        group(add.s(i, i) for i in range(n)).apply_async()
        group_rates.append(n / (time.perf_counter() - t0))
        run.clear_tasks()
    out["delay_rate"] = statistics.median(loop_rates)
    out["group_rate"] = statistics.median(group_rates)
    out["group_rate_min"], out["group_rate_max"] = min(group_rates), max(group_rates)

    with run.worker(2, burst=False):
        add.delay(0, 0).get(timeout=60)  # the worker is up and idle
        run.clear_tasks()
        first = time.time()
        for i in range(n):
            add.delay(i, i)
        out["delay_e2e_c2"] = n / (wait_all(n) - first)
        run.clear_tasks()
        first = time.time()
        group(add.s(i, i) for i in range(n)).apply_async()
        out["group_e2e_c2"] = n / (wait_all(n) - first)
        run.clear_tasks()
        gaps = []
        for _ in range(chords):
            result = chord(add.s(i, i) for i in range(chord_size))(total.s())
            assert result.get(timeout=120) == sum(2 * i for i in range(chord_size))
            body = TaskResult.objects.get(task_id=result.id)
            last_header = (
                TaskResult.objects.exclude(task_id=result.id).aggregate(end=Max("date_done"))
            )["end"]
            gaps.append((body.date_started - last_header).total_seconds() * 1000)
            run.clear_tasks()
    out["chord_gap_p50_ms"] = statistics.median(gaps)
    out["chord_gap_max_ms"] = max(gaps)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--chord-size", type=int, default=1000)
    parser.add_argument("--chords", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="sends of each kind (medians)")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("POSTGRES_URL", run.DEFAULT_POSTGRES_URL)
    )
    args = parser.parse_args()
    if os.environ.get("BENCH_CANVAS_CHILD"):
        results = measure(args.n, args.chord_size, args.chords, args.rounds)
        rows = [
            [
                "`group(...).apply_async()` send rate (tasks/s)",
                f"{results['group_rate']:,.0f}",
                ">= 20,000",
            ],
            [
                "  the same, slowest / fastest of the rounds",
                f"{results['group_rate_min']:,.0f} / {results['group_rate_max']:,.0f}",
                "",
            ],
            ["`delay()` loop send rate (tasks/s)", f"{results['delay_rate']:,.0f}", ""],
            [
                "group send / `delay()` loop",
                f"{results['group_rate'] / results['delay_rate']:.1f}x",
                ">= 10x",
            ],
            ["group end to end, c=2 (tasks/s)", f"{results['group_e2e_c2']:,.0f}", ""],
            ["`delay()` loop end to end, c=2 (tasks/s)", f"{results['delay_e2e_c2']:,.0f}", ""],
            [
                "group e2e / `delay()` loop e2e",
                f"{results['group_e2e_c2'] / results['delay_e2e_c2']:.2f}x",
                ">= 1",
            ],
            [
                f"chord of {args.chord_size}: last header done -> body started, p50 (ms)",
                f"{results['chord_gap_p50_ms']:.1f}",
                "<= 20",
            ],
            ["  the same, max (ms)", f"{results['chord_gap_max_ms']:.1f}", ""],
        ]
        print(run.markdown_table(["measure", "PostgreSQL", "target"], rows))
        return 0
    import subprocess

    with run.scratch_database(args.postgres_url, SCRATCH) as url:
        env = {**run.django_env(url), "BENCH_CANVAS_CHILD": "1"}
        subprocess.run(run.manage("migrate", "--noinput", "-v0"), cwd=run.REPO, env=env, check=True)
        child = [sys.executable, __file__, *sys.argv[1:]]
        return subprocess.run(child, cwd=run.REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
