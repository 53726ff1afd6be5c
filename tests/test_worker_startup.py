"""What a starting worker says: the database and broker it reached, one line per attempt
while either is unreachable (with growing delays), and one line when the database is not
migrated."""

import datetime as dt
import itertools
import os
import re

import pytest

from django_tasks.worker.startup import database_label
from tests.conftest import WorkerProcess, broker_url, on_broker, wait_until
from tests.taskapp import tasks

pytestmark = pytest.mark.worker

RETRY_LINE = re.compile(
    r"^\[(?P<at>[\d-]+ [\d:,]+): WARNING/\d+\] Cannot connect to (?P<what>.+?): .+; "
    r"trying again in (?P<delay>\d+) s$",
    re.M,
)


def retries(worker):
    return [
        (dt.datetime.strptime(m["at"], "%Y-%m-%d %H:%M:%S,%f"), m["what"], int(m["delay"]))
        for m in RETRY_LINE.finditer(worker.output())
    ]


def bare_worker(tmp_path, *args, **env):
    """A worker with the test settings and ``env`` over them (no test database needed)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **env}
    return WorkerProcess(list(args), env, tmp_path / "worker.log")


def test_the_banner_names_the_database_and_broker_reached(start_worker):
    result = tasks.add.delay(1, 2)
    worker = start_worker("--burst", "--concurrency", "1")
    assert worker.wait(60) == 0
    assert result.get(timeout=1) == 3
    out = worker.output()
    assert f"  database:    {database_label()}\n" in out
    if on_broker():
        assert f"  broker:      {broker_url().split('://')[0]}://" in out
    else:
        assert "  broker:      none (the database is the queue)\n" in out


def test_an_unreachable_broker_is_retried_with_one_line_per_attempt(start_worker):
    worker = start_worker(
        "--concurrency", "1", env={"DJANGO_TASKS_BROKER_URL": "redis://:s3cret@127.0.0.1:1/0"}
    )
    try:
        wait_until(lambda: len(retries(worker)) >= 3, timeout=30, what="three attempts")
        out = worker.output()
        seen = retries(worker)
        assert [delay for _, _, delay in seen[:3]] == [2, 4, 6]
        assert {what for _, what, _ in seen} == {"redis://:**@127.0.0.1:1/0"}
        gaps = [(b[0] - a[0]).total_seconds() for a, b in itertools.pairwise(seen)]
        assert gaps[0] >= 1.9 and gaps[1] >= 3.9, gaps
        assert "s3cret" not in out
        assert "django_tasks worker" not in out  # started nothing
        assert len(out.strip().splitlines()) == len(seen), out
        assert worker.proc.poll() is None
    finally:
        worker.kill_group()


def test_an_unreachable_database_is_retried_with_one_line_per_attempt(tmp_path):
    worker = bare_worker(
        tmp_path,
        "--concurrency",
        "1",
        DATABASE_URL="postgres://postgres:s3cret@127.0.0.1:1/nowhere",
    )
    try:
        wait_until(lambda: len(retries(worker)) >= 2, timeout=30, what="two attempts")
        seen = retries(worker)
        assert [delay for _, _, delay in seen[:2]] == [2, 4]
        assert seen[0][1] == "the database (postgresql postgres@127.0.0.1:1/nowhere)"
        assert (seen[1][0] - seen[0][0]).total_seconds() >= 1.9
        out = worker.output()
        assert "s3cret" not in out
        assert "Traceback" not in out
        assert "django_tasks worker" not in out
    finally:
        worker.kill_group()
        worker.close()


def test_an_unmigrated_database_says_to_migrate_and_exits_1(tmp_path):
    empty = tmp_path / "fresh.sqlite3"
    worker = bare_worker(tmp_path, "--concurrency", "1", DATABASE_URL=f"sqlite:///{empty}")
    try:
        assert worker.wait(60) == 1
    finally:
        worker.close()
    lines = worker.output().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"CommandError: The database (sqlite {empty}) has no table ")
    assert "django_tasks_taskresult" in lines[0]
    assert lines[0].endswith("run `manage.py migrate` first")
