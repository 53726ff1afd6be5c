"""Time limits: soft raises SoftTimeLimitExceeded in the task; hard stops it (prefork kills
and replaces the child; threads and solo raise TimeLimitExceeded in the task)."""

import os

import pytest

from django_tasks import states
from django_tasks.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django_tasks.models import TaskResult
from django_tasks.testing import run_until_empty
from tests.conftest import wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run


def started(label):
    return lambda: Run.objects.filter(label=f"start:{label}").first()


def details(res):
    return [
        (change.state, change.detail)
        for change in TaskResult.objects.get(task_id=res.id).history.all()
    ]


@pytest.mark.django_db
def test_soft_limit_above_hard_is_a_value_error_at_call_time():
    with pytest.raises(ValueError, match=r"soft_time_limit \(5\) is above time_limit \(1\)"):
        tasks.add.apply_async((1, 1), soft_time_limit=5, time_limit=1)
    assert not TaskResult.objects.exists()


@pytest.mark.django_db
def test_an_uncaught_soft_limit_fails_the_task_in_process():
    res = tasks.spin.apply_async((10,), soft_time_limit=0.2)
    run_until_empty()
    assert res.state == states.FAILURE
    assert isinstance(res.result, SoftTimeLimitExceeded)


@pytest.mark.django_db
def test_a_hard_limit_stops_the_task_in_process():
    res = tasks.spin.apply_async((10,), time_limit=0.3)
    run_until_empty()
    assert res.state == states.FAILURE
    assert isinstance(res.result, TimeLimitExceeded)
    assert tasks.add.delay(1, 1) and run_until_empty() == 1


@pytest.mark.worker
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_soft_limit_raises_inside_the_task_which_can_catch_it(start_worker, pool):
    res = tasks.soft_limited.delay("soft")
    start_worker("--pool", pool, "--concurrency", "1")
    assert res.get(timeout=30) == "soft limit caught"


@pytest.mark.worker
def test_prefork_hard_limit_kills_and_replaces_the_child(start_worker):
    res = tasks.hard_limited.apply_async(("hard",), link_error=tasks.on_error.s())
    worker = start_worker("--concurrency", "1")
    child = wait_until(started("hard"), what="the task to start").pid
    assert isinstance(res.get(timeout=30, propagate=False), TimeLimitExceeded)
    assert res.state == states.FAILURE
    assert (states.FAILURE, "time limit (1s) exceeded") in details(res)
    assert (
        f"Task tests.taskapp.tasks.hard_limited[{res.id}] exceeded its time limit (1s): "
        "killing worker process" in worker.output()
    )
    wait_until(lambda: Run.objects.filter(label__startswith="errback:").exists(), what="errback")
    assert Run.objects.get(label__startswith="errback:").label.startswith(
        "errback:TimeLimitExceeded"
    )
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert tasks.record_pid.delay().get(timeout=20) not in (child, worker.pid)


# Which tasks a child holds behind a running one is the database transport's batch claim;
# a broker hands them out one by one, as they arrive.
@pytest.mark.database_transport
@pytest.mark.worker
def test_prefork_hard_limit_queues_the_childs_unstarted_tasks_again(start_worker):
    """Tasks the killed child had claimed behind the limited one had not started: they run
    in the new child, acks_late or not, as Celery's parent hands them on."""
    before = tasks.add.delay(1, 1)
    limited = tasks.hard_limited.delay("first")
    behind = tasks.add.delay(2, 3)
    behind_late = tasks.sleep_acks_late.delay(0, "late")
    worker = start_worker("--concurrency", "1")
    assert isinstance(limited.get(timeout=30, propagate=False), TimeLimitExceeded)
    assert behind.get(timeout=20) == 5, worker.output()
    assert behind_late.get(timeout=20) == "late"
    assert before.get(timeout=1) == 2  # finished before the kill, and recorded once
    assert [state for state, _ in details(before)].count(states.SUCCESS) == 1
    assert "Queued again 2 task(s)" in worker.output()


@pytest.mark.worker
@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_threads_and_solo_raise_the_hard_limit_in_the_task(start_worker, pool):
    res = tasks.hard_limited.delay(pool)
    worker = start_worker("--pool", pool, "--concurrency", "1")
    assert isinstance(res.get(timeout=30, propagate=False), TimeLimitExceeded)
    assert tasks.record_pid.delay().get(timeout=20) == worker.pid  # same process goes on
