"""Streaming mode, shared by ``bench/run.py`` and the Celery reference (standard library only).

A site sends tasks while its workers run. Streaming mode measures that: the worker is started
and idle first, then a producer *process* sends N no-op tasks back to back, and the run ends
when the N results are stored. It reports the producer's own send rate (it competes with the
worker for the same CPU and database) and the end-to-end rate, N / (last result stored - first
send), so a worker that keeps up shows the producer's rate and one that falls behind its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

#: How often the waiting parent counts stored results once the producer is done.
POLL = 0.1


def produce(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the producer ``cmd`` (it gets ``--produce-output FILE`` appended) to the end; its
    report: ``sent``, ``first_send`` (``time.time()``), ``seconds``."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([*cmd, "--produce-output", out.name], cwd=cwd, env=env, check=True)
        return json.loads(Path(out.name).read_text())


def send_all(n: int, send: Callable[[], object], output: str) -> None:
    """The producer's side: ``send()`` ``n`` times as fast as it can, then write the report."""
    send()  # connect and warm caches; the caller's count expects n + 1 results
    first = time.time()
    started = time.perf_counter()
    for _ in range(n):
        send()
    seconds = time.perf_counter() - started
    Path(output).write_text(json.dumps({"sent": n, "first_send": first, "seconds": seconds}))


def wait_for(count: Callable[[], int], n: int, alive: Callable[[], bool], timeout: float) -> int:
    """Poll ``count()`` until it reaches ``n``, the worker dies, or ``timeout`` passes; the
    last count."""
    deadline = time.perf_counter() + timeout
    done = count()
    while done < n and alive() and time.perf_counter() < deadline:
        time.sleep(POLL)
        done = count()
    return done


class Side(Protocol):
    """What the streaming measure needs of a task system (ours, or the Celery reference)."""

    def start_worker(self, concurrency: int) -> AbstractContextManager[Any]:
        """A running worker process (a ``subprocess.Popen``) for the ``with`` block."""

    def round_trip(self) -> None:
        """Send one no-op and wait for its result."""

    def reset(self) -> None:
        """Empty the results and the queue."""

    def done(self) -> tuple[int, int, float | None]:
        """(results SUCCESS, results in all, the last one's ``date_done`` as a timestamp)."""


def measure(
    side: Side,
    n: int,
    concurrency: int,
    producer: list[str],
    cwd: Path,
    *,
    timeout: float,
    loud: Callable[[str], None],
) -> tuple[float | None, float]:
    """(end-to-end tasks/s, the producer's sends/s): the worker started and idle, then the
    ``producer`` command sends ``n`` tasks while it runs; None (said loudly) unless all end
    ``SUCCESS``."""
    side.reset()
    with side.start_worker(concurrency) as proc:
        side.round_trip()  # the worker is up and idle
        side.reset()
        report = produce(producer, cwd)
        wait_for(lambda: side.done()[0], n + 1, lambda: proc.poll() is None, timeout)
    succeeded, total, last_done = side.done()
    side.reset()
    send_rate = report["sent"] / report["seconds"]
    if succeeded != n + 1 or total != n + 1 or last_done is None:
        loud(f"streaming c={concurrency}: expected {n + 1} SUCCESS, found {succeeded} of {total}")
        return None, send_rate
    return n / (last_done - report["first_send"]), send_rate


def main_for_producer(argv: list[str], send: Callable[[], object]) -> bool:
    """If ``argv`` asks for the producer (``--produce N --produce-output FILE``), be it and
    return True."""
    if "--produce-output" not in argv:
        return False
    n = int(argv[argv.index("--produce") + 1])
    send_all(n, send, argv[argv.index("--produce-output") + 1])
    return True


if __name__ == "__main__":
    sys.exit("a helper module; see bench/run.py")
