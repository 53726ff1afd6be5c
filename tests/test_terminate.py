"""revoke(terminate=True): a prefork worker stops the running task and replaces the child."""

import os
import signal

import pytest

from django_tasks import AsyncResult, states
from django_tasks.exceptions import TaskRevokedError
from django_tasks.models import TaskResult
from django_tasks.testing import run_until_empty
from tests.conftest import wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run


def started(label):
    return lambda: Run.objects.filter(label=f"start:{label}").first()


@pytest.mark.parametrize("value", ["SIGNOPE", "", -3, 10_000, 1.5, True], ids=lambda v: repr(v))
def test_an_unknown_signal_is_an_error_naming_it(value):
    with pytest.raises(ValueError, match=rf"unknown signal {value!r}"):
        AsyncResult("some-id").revoke(terminate=True, signal=value)


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["KILL", "sigkill", signal.SIGKILL, 9])
def test_signal_names_and_numbers_are_accepted(value):
    res = tasks.record.delay("waiting")
    assert res.revoke(terminate=True, signal=value)
    run_until_empty()
    assert res.state == states.REVOKED
    assert not Run.objects.exists()


@pytest.mark.worker
@pytest.mark.parametrize(
    ("value", "name"), [(None, "SIGTERM"), ("KILL", "SIGKILL"), (signal.SIGINT, "SIGINT")]
)
def test_terminate_stops_the_running_task_under_prefork(start_worker, value, name):
    res = tasks.sleep_then_record.delay(60, "term")
    worker = start_worker("--concurrency", "1")
    child = wait_until(started("term"), what="the task to start").pid
    assert res.revoke(terminate=True, signal=value)
    wait_until(res.ready, timeout=20, what="the task to be terminated")
    assert res.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        res.get(timeout=1)
    row = TaskResult.objects.get(task_id=res.id)
    assert row.meta == {"reason": "terminated", "signal": name}
    assert row.history.last().detail == f"terminated by {name}"
    assert not Run.objects.filter(label="end:term").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert tasks.record_pid.delay().get(timeout=20) not in (child, worker.pid)
    assert worker.proc.poll() is None


@pytest.mark.worker
def test_threads_pool_cannot_terminate_so_the_task_finishes(start_worker):
    res = tasks.sleep_then_record.delay(1.5, "threaded")
    start_worker("--pool", "threads", "--concurrency", "1")
    wait_until(started("threaded"), what="the task to start")
    assert res.revoke(terminate=True)
    assert res.get(timeout=20) == "threaded"
