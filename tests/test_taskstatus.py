"""``manage.py taskstatus``: the table, --json, and --check's exit codes and one-line reasons."""

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_tasks.models import TaskResult, WorkerRecord
from tests.conftest import REPO, database_url, wait_until
from tests.taskapp import tasks


def status(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("taskstatus", *args, stdout=out)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue()
    return 0, out.getvalue()


def run_cli(*args: str, lease: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJANGO_TASKS_WORKER_LEASE_SECONDS": str(lease),
    }
    return subprocess.run(
        [sys.executable, "manage.py", "taskstatus", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def fake_worker(hostname: str = "elsewhere", queues=("default",), age: float = 0.0, **kw):
    when = timezone.now() - dt.timedelta(seconds=age)
    return WorkerRecord.objects.create(
        hostname=hostname,
        pid=kw.pop("pid", 100),
        queues=list(queues),
        pool="prefork",
        concurrency=2,
        started=when,
        last_heartbeat=when,
        **kw,
    )


@pytest.mark.django_db
def test_table_and_json_show_queues_and_workers():
    tasks.add.delay(1, 1)
    tasks.add.apply_async((2, 2), queue="lopri", countdown=600)
    fake_worker(hostname="w1", queues=("default", "lopri"))
    code, out = status()
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "QUEUE", "DUE", "SCHEDULED", "RUNNING", "FAILED", "1H", "DONE", "1H", "OLDEST", "DUE"
    ]  # fmt: skip
    assert lines[1].split()[:4] == ["default", "1", "0", "0"]
    assert lines[2].split()[:4] == ["lopri", "0", "1", "0"]
    assert any(line.startswith("w1:100") and " live " in line for line in lines)
    code, out = status("--json")
    data = json.loads(out)
    assert {q["queue"]: q["due"] for q in data["queues"]} == {"default": 1, "lopri": 0}
    assert data["workers"][0]["status"] == "live"
    assert data["workers"][0]["queues"] == ["default", "lopri"]


@pytest.mark.django_db
def test_check_reasons_without_a_real_worker():
    here = socket.gethostname()
    assert status("--check") == (1, f"UNHEALTHY: no worker is running on this host ({here})\n")
    assert status("--check", "--any-host") == (0, "OK\n")  # nothing due anywhere
    tasks.add.delay(1, 1)
    assert status("--check", "--any-host") == (
        1,
        "UNHEALTHY: no live worker serves queue 'default'\n",
    )
    fake_worker(hostname="other", queues=("default",))
    assert status("--check", "--any-host") == (0, "OK\n")
    assert status("--check", "--host", "other") == (0, "OK\n")
    assert status("--check", "--host", "other", "-Q", "default,lopri")[1] == (
        "UNHEALTHY: no live worker serves queue 'lopri'\n"
    )
    TaskResult.objects.update(run_after=timezone.now() - dt.timedelta(seconds=300))
    code, out = status("--check", "--any-host", "--max-lag", "60")
    assert code == 1 and out.startswith("UNHEALTHY: queue 'default' lags: its oldest due task is 3")
    assert status("--check", "--any-host", "--max-lag", "600") == (0, "OK\n")
    fake_worker(hostname="old", age=120, pid=7)
    assert status("--check", "--host", "old")[1].startswith(
        "UNHEALTHY: this host's worker old:7 is stale: last heartbeat 120s ago"
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--queue", "a\x00b"], "--queue"),
        (["--queue", ""], "--queue"),
        (["--host", "h\x00"], "--host"),
        (["--max-lag", "nan"], "--max-lag"),
        (["--max-lag", "-1"], "--max-lag"),
        (["--max-lag", "inf"], "--max-lag"),
    ],
)
def test_bad_input_is_refused_naming_the_option(args, culprit):
    with pytest.raises(CommandError, match=culprit) as info:
        call_command("taskstatus", "--check", *args)
    assert info.value.returncode == 2


@pytest.mark.worker
def test_check_follows_a_real_worker_until_it_is_killed(start_worker, settings):
    lease = 2.0
    settings.DJANGO_TASKS = {**settings.DJANGO_TASKS, "WORKER_LEASE_SECONDS": lease}
    worker = start_worker("--pool", "threads", "-Q", "default,lopri", lease_seconds=lease)
    wait_until(lambda: WorkerRecord.objects.filter(pid=worker.pid).exists(), what="the row")
    started = time.monotonic()
    result = run_cli("--check", "-Q", "default", "--max-lag", "30", lease=lease)
    assert (result.returncode, result.stdout) == (0, "OK\n"), result.stderr
    assert time.monotonic() - started < 5
    result = run_cli("--check", "-Q", "nobody")
    assert (result.returncode, result.stdout) == (
        1,
        "UNHEALTHY: no live worker serves queue 'nobody'\n",
    )
    worker.signal(signal.SIGKILL)
    worker.wait(10)
    _code, out = wait_until(
        lambda: (lambda r: r if r[0] == 1 else None)(status("--check")),
        timeout=lease + 5,
        what="--check to fail",
    )
    assert "is stale: last heartbeat" in out, out
    assert f":{worker.pid} is stale" in out


@pytest.mark.django_db
def test_queue_option_limits_the_table():
    tasks.add.delay(1, 1)
    tasks.add.apply_async((2, 2), queue="lopri")
    code, out = status("--queue", "lopri")
    assert code == 0
    rows = [line.split()[0] for line in out.splitlines()[1:] if line and not line[0].isspace()]
    assert "lopri" in rows and "default" not in rows
