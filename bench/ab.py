"""A/B: ``bench/run.py`` of two checkouts, alternated in one run, medians and B/A ratios.

Machines drift (other load, disk caches, CPU frequency), so a change is judged against a
reference measured in the same run: rounds alternate A B B A A B …, each round one
``bench/run.py`` of that checkout with the same arguments, and the summary gives each
measure's median per side and B / A.

    .venv/bin/python bench/ab.py --a ../before --b . --rounds 3 -- --only postgresql --no-celery

Both checkouts run with this Python (its virtualenv must hold what both need); each imports
its own ``django_tasks`` (``bench/run.py`` puts its checkout first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROW = re.compile(r"^\|\s*(?P<label>[^|]+?)\s*\|(?P<cells>.*)\|\s*$")


def summary_rows(output: str) -> dict[str, list[float | None]]:
    """The summary table of a ``bench/run.py`` output: label -> a value per column."""
    tail = output.rsplit("## Summary", 1)[-1]
    rows: dict[str, list[float | None]] = {}
    for line in tail.splitlines():
        match = ROW.match(line)
        if not match or set(match["label"]) <= {"-", " "} or match["label"] == "measure":
            continue
        cells = [c.strip().replace(",", "") for c in match["cells"].split("|")]
        rows[match["label"]] = [_number(c) for c in cells]
    return rows


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, type=Path, help="checkout A (the reference)")
    parser.add_argument("--b", required=True, type=Path, help="checkout B (the change)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then bench/run.py's")
    args = parser.parse_args()
    run_args = [a for a in args.run_args if a != "--"]
    order = [("A", "B") if i % 2 == 0 else ("B", "A") for i in range(args.rounds)]
    runs: dict[str, list[dict[str, list[float | None]]]] = {"A": [], "B": []}
    for number, pair in enumerate(order, 1):
        for side in pair:
            checkout = (args.a if side == "A" else args.b).resolve()
            print(f"# round {number}: {side} ({checkout})", flush=True)
            done = subprocess.run(
                [sys.executable, str(checkout / "bench" / "run.py"), *run_args],
                cwd=checkout,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
                print(f"!!! {side} round {number} exited {done.returncode}", file=sys.stderr)
            runs[side].append(summary_rows(done.stdout))
    labels = [label for label in runs["A"][0] if any(label in r for r in runs["B"])]
    columns = max((len(v) for r in runs["A"] for v in r.values()), default=0)
    print("\n| measure | column | A runs | B runs | A median | B median | B/A |")
    print("|---|---|---|---|---|---|---|")
    for label in labels:
        for column in range(columns):
            a = [v for r in runs["A"] if (v := _cell(r, label, column)) is not None]
            b = [v for r in runs["B"] if (v := _cell(r, label, column)) is not None]
            if not a or not b:
                continue
            ma, mb = statistics.median(a), statistics.median(b)
            ratio = f"{mb / ma:.2f}" if ma else "n/a"
            print(
                f"| {label} | {column + 1} | {_list(a)} | {_list(b)} | {ma:,.1f} | {mb:,.1f} "
                f"| {ratio} |"
            )
    return 0


def _cell(run: dict[str, list[float | None]], label: str, column: int) -> float | None:
    values = run.get(label) or []
    return values[column] if column < len(values) else None


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
