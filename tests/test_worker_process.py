"""The real ``runworker`` in subprocesses: burst, signals, crashes, concurrency, bad rows."""

import signal

import pytest

from django_tasks import states
from django_tasks.exceptions import NotRegistered, WorkerLostError
from django_tasks.models import TaskResult
from tests.conftest import broker_url, wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = pytest.mark.worker


def started(label):
    return lambda: Run.objects.filter(label=f"start:{label}").first()


def test_burst_drains_the_queue_and_exits_0(start_worker):
    results = [tasks.add.delay(i, i) for i in range(20)]
    worker = start_worker("--burst", "--concurrency", "2")
    assert worker.wait(60) == 0
    assert [r.get(timeout=1) for r in results] == [i + i for i in range(20)]
    out = worker.output()
    assert f"transport:   {broker_url().split('://')[0]}://" in out
    assert "queues:      default" in out
    assert "concurrency: 2 (prefork)" in out
    assert ". tests.taskapp.tasks.add" in out
    assert out.count("SUCCESS in") == 20


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_other_pools_run_tasks_too(start_worker, pool):
    results = [tasks.record.delay(str(i)) for i in range(10)]
    concurrency = "1" if pool == "solo" else "2"
    assert start_worker("--burst", "--pool", pool, "--concurrency", concurrency).wait(60) == 0
    assert all(r.successful() for r in results)
    assert Run.objects.count() == 10


def test_sigterm_finishes_the_running_task_and_gives_back_the_rest(start_worker):
    running = tasks.sleep_then_record.delay(1.5, "warm")
    waiting = tasks.record.delay("never started")
    worker = start_worker("--concurrency", "1")
    wait_until(started("warm"), what="the task to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert running.get(timeout=1) == "warm"
    assert Run.objects.filter(label="end:warm").exists()
    row = TaskResult.objects.get(task_id=waiting.id)
    assert (row.state, row.lease_token) == (states.PENDING, None)
    assert "Warm shutdown" in worker.output()


def test_a_second_signal_stops_at_once_and_recovers_the_running_task(start_worker):
    res = tasks.sleep_then_record.delay(60, "cold")
    worker = start_worker("--concurrency", "1")
    wait_until(started("cold"), what="the task to start")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "Warm shutdown" in worker.output(), what="the warm shutdown")
    worker.signal(signal.SIGINT)
    assert worker.wait(10) == 1
    assert res.state == states.FAILURE
    assert isinstance(res.result, WorkerLostError)


@pytest.mark.parametrize("acks_late", [True, False], ids=["acks_late", "acks_early"])
def test_after_sigkill_the_task_is_recovered_per_acks_late(start_worker, acks_late):
    task = tasks.sleep_acks_late if acks_late else tasks.sleep_then_record
    res = task.delay(2, "killed")
    first = start_worker("--concurrency", "1", lease_seconds=1.5)
    wait_until(started("killed"), what="the task to start")
    first.kill_group()  # the whole worker, as a power cut would
    second = start_worker("--concurrency", "1", lease_seconds=1.5)
    try:
        wait_until(lambda: res.ready(), timeout=30, what="recovery")
    except AssertionError:
        raise AssertionError(f"no recovery; the second worker said:\n{second.output()}") from None
    if acks_late:
        assert res.get(timeout=1) == "killed"
        assert Run.objects.filter(label="start:killed").count() == 2
    else:
        assert res.state == states.FAILURE
        assert isinstance(res.result, WorkerLostError)
        assert Run.objects.filter(label="start:killed").count() == 1


def test_a_killed_child_is_recovered_at_once_and_replaced(start_worker):
    res = tasks.sleep_then_record.delay(60, "child")
    worker = start_worker("--concurrency", "1")  # default 30 s lease: recovery must not wait
    child_pid = wait_until(started("child"), what="the task to start").pid
    assert child_pid != worker.pid
    import os

    os.kill(child_pid, signal.SIGKILL)
    wait_until(lambda: res.ready(), timeout=10, what="the parent to recover the task")
    assert isinstance(res.result, WorkerLostError)
    wait_until(
        lambda: (
            f"Recovered task tests.taskapp.tasks.sleep_then_record[{res.id}] from lost "
            "worker" in worker.output()
        ),
        what="the log line naming the task",
    )
    after = tasks.add.delay(1, 1)
    assert after.get(timeout=20) == 2  # a replacement child took over


def test_two_workers_run_2000_tasks_each_exactly_once(start_worker):
    results = [tasks.record.delay(str(i)) for i in range(2000)]
    workers = [start_worker("--burst", "--concurrency", "2") for _ in range(2)]
    for worker in workers:
        assert worker.wait(300) == 0
    assert TaskResult.objects.filter(state=states.SUCCESS).count() == 2000
    assert Run.objects.count() == 2000
    assert Run.objects.values("task_id").distinct().count() == 2000
    assert {r.id for r in results} == set(Run.objects.values_list("task_id", flat=True))
    assert Run.objects.values("pid").distinct().count() >= 2


def test_bad_rows_are_recorded_as_failures_and_the_worker_goes_on(start_worker):
    unknown = tasks.add.delay(1, 1)
    TaskResult.objects.filter(task_id=unknown.id).update(task_name="gone.task")
    malformed = tasks.add.delay(1, 1)
    TaskResult.objects.filter(task_id=malformed.id).update(
        args=None, body=b"{not json", content_type="application/json"
    )
    good = tasks.add.delay(2, 3)
    assert start_worker("--burst", "--concurrency", "1").wait(60) == 0
    assert unknown.state == states.FAILURE
    assert "gone.task" in str(unknown.result)
    assert isinstance(unknown.result, NotRegistered)
    assert "if the task is newer than the worker, restart the workers" in str(unknown.result)
    assert malformed.state == states.FAILURE
    assert good.get(timeout=1) == 5


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_the_worker_rides_out_lost_database_connections(start_worker, pool):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs a database server whose connections can be killed (PostgreSQL)")
    concurrency = "1" if pool == "solo" else "2"
    worker = start_worker("--pool", pool, "--concurrency", concurrency)
    assert tasks.add.delay(1, 1).get(timeout=20) == 2
    with connection.cursor() as cursor:  # what a database restart does to idle workers
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert tasks.add.delay(2, 2).get(timeout=30) == 4
    assert worker.proc.poll() is None


def test_on_message_sees_progress_while_waiting(start_worker):
    res = tasks.slow_progress.delay(4, 0.3)
    start_worker("--concurrency", "1")
    seen = []
    assert res.get(timeout=30, on_message=seen.append) == 4
    statuses = [m["status"] for m in seen]
    assert statuses[-1] == "SUCCESS"
    progress = [m["result"]["current"] for m in seen if m["status"] == "PROGRESS"]
    assert len(progress) >= 2
    assert progress == sorted(progress)
