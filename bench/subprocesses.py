"""Worker processes for the benchmarks (standard library only: the Celery reference imports
this from its own virtualenv)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def background(
    cmd: list[str],
    cwd: Path,
    *,
    report: Callable[[str], None],
    clean_exits: tuple[int, ...] = (0,),
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` for the ``with`` block; SIGTERM it on exit if still running (SIGKILL after
    30 s). Its stderr is kept and passed to ``report`` only if it exits otherwise than
    ``clean_exits``."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
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
            if proc.returncode not in clean_exits:
                log.seek(0)
                output = log.read().decode(errors="replace")
                report(f"worker exited with {proc.returncode}:\n{output}")
