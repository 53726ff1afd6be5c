"""Worker rows: registered by ``runworker``, refreshed by its heartbeat, stopped or stale."""

import datetime as dt
import signal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_tasks import states, store
from django_tasks.models import TaskResult, WorkerRecord
from django_tasks.worker.supervisor import Worker
from django_tasks.worker.tally import Tally
from tests.conftest import wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run


def _row(**filters):
    return WorkerRecord.objects.filter(**filters).first()


@pytest.mark.worker
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_worker_is_a_row_with_counts_running_tasks_and_a_clean_stop(start_worker, pool):
    concurrency = "1" if pool == "solo" else "2"
    worker = start_worker(
        "--pool", pool, "--concurrency", concurrency, "-Q", "default,other", lease_seconds=1.5
    )
    row = wait_until(lambda: _row(pid=worker.pid), what="the worker's row")
    assert row.pool == pool and row.concurrency == int(concurrency)
    assert row.queues == ["default", "other"] and row.stopped is None
    for i in range(3):
        tasks.add.delay(i, i)
    tasks.fail.delay()
    wait_until(lambda: _row(pid=worker.pid, tasks_done=4, tasks_failed=1), what="4 done, 1 failed")
    sleeper = tasks.sleep_then_record.delay(3, "held")
    wait_until(lambda: Run.objects.filter(label="start:held").exists(), what="the task to start")
    running = wait_until(
        lambda: [t for t in _running(worker.pid) if t["task_id"] == sleeper.id],
        what="the running task in the worker's row",
    )
    assert running[0]["task_name"] == tasks.sleep_then_record.name
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    row = WorkerRecord.objects.get(pid=worker.pid)
    assert row.stopped is not None and row.running == []
    assert row.tasks_done == 5 and row.tasks_failed == 1
    assert row.status(timezone.now(), 1.5) == WorkerRecord.STOPPED


def _running(pid):
    row = _row(pid=pid)
    return row.running if row else []


@pytest.mark.worker
def test_a_killed_worker_turns_stale_within_the_lease_plus_5_seconds(start_worker):
    lease = 2.0
    worker = start_worker("--concurrency", "1", lease_seconds=lease)
    wait_until(lambda: _row(pid=worker.pid), what="the worker's row")
    live = WorkerRecord.objects.live(timezone.now(), lease)
    assert live.filter(pid=worker.pid).exists()
    worker.kill_group()  # SIGKILL: no clean stop
    row = wait_until(
        lambda: WorkerRecord.objects.stale(timezone.now(), lease).filter(pid=worker.pid).first(),
        timeout=lease + 5,
        what="the killed worker to turn stale",
    )
    assert row.stopped is None
    assert row.status(timezone.now(), lease) == WorkerRecord.STALE


@pytest.mark.worker
def test_sigkill_of_the_main_process_alone_leaves_a_stale_row(start_worker):
    worker = start_worker("--pool", "threads", "--concurrency", "1", lease_seconds=1.5)
    wait_until(lambda: _row(pid=worker.pid), what="the worker's row")
    worker.signal(signal.SIGKILL)
    worker.wait(10)
    wait_until(
        lambda: WorkerRecord.objects.stale(timezone.now(), 1.5).filter(pid=worker.pid).exists(),
        timeout=1.5 + 5,
        what="stale",
    )


@pytest.mark.django_db
@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_heartbeat_is_one_write_whatever_the_concurrency(concurrency, monkeypatch):
    worker = Worker(queues=["default"], concurrency=concurrency, pool="threads", burst=False)
    worker.record_pk = store.register_worker(
        hostname="h", pid=1, queues=["default"], pool="threads", concurrency=concurrency
    )
    tokens = []
    for i in range(concurrency):
        result = tasks.add.delay(i, i)
        token = f"token{i}"
        tally: Tally = worker.pool.tallies.new(token)
        tally.begin(TaskResult.objects.get(task_id=result.id).pk)
        tally.end(states.SUCCESS)
        tally.begin(TaskResult.objects.get(task_id=result.id).pk)
        tokens.append(token)
    monkeypatch.setattr(worker.pool, "lease_tokens", lambda: tokens)
    with CaptureQueriesContext(connection) as queries:
        worker._heartbeat()
    sql = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert sql == ["SELECT", "UPDATE"]
    row = WorkerRecord.objects.get()
    assert row.tasks_done == concurrency and row.tasks_failed == 0
    assert len(row.running) == concurrency


@pytest.mark.django_db
def test_purge_results_deletes_old_stopped_and_stale_worker_rows():
    now = timezone.now()
    old = now - dt.timedelta(days=10)
    common = {"hostname": "h", "queues": ["default"], "pool": "threads", "concurrency": 1}
    WorkerRecord.objects.create(pid=1, started=old, last_heartbeat=old, stopped=old, **common)
    WorkerRecord.objects.create(pid=2, started=old, last_heartbeat=old, **common)  # stale
    WorkerRecord.objects.create(pid=3, started=old, last_heartbeat=now, **common)  # live
    WorkerRecord.objects.create(pid=4, started=now, last_heartbeat=now, stopped=now, **common)
    out = StringIO()
    call_command("purge_results", "--older-than", "7", "--dry-run", stdout=out)
    assert "2 stopped or stale worker row(s)" in out.getvalue()
    out = StringIO()
    call_command("purge_results", "--older-than", "7", stdout=out)
    assert "2 stopped or stale worker row(s)" in out.getvalue()
    assert sorted(WorkerRecord.objects.values_list("pid", flat=True)) == [3, 4]


@pytest.mark.django_db
def test_the_queue_overview_lists_live_and_stale_workers_with_links_to_running_tasks(
    client, django_user_model
):
    from django.urls import reverse

    client.force_login(django_user_model.objects.create_superuser("boss", "b@example.com", "pw"))
    result = tasks.add.delay(1, 2)
    task = TaskResult.objects.get(task_id=result.id)
    now = timezone.now()
    common = {"queues": ["default", "lopri"], "pool": "prefork", "concurrency": 4}
    WorkerRecord.objects.create(
        hostname="alive",
        pid=10,
        started=now,
        last_heartbeat=now,
        tasks_done=7,
        tasks_failed=2,
        running=[{"id": task.pk, "task_id": task.task_id, "task_name": task.task_name}],
        **common,
    )
    old = now - dt.timedelta(minutes=5)
    WorkerRecord.objects.create(hostname="gone", pid=11, started=old, last_heartbeat=old, **common)
    WorkerRecord.objects.create(
        hostname="done", pid=12, started=old, last_heartbeat=old, stopped=old, **common
    )
    page = client.get(reverse("admin:django_tasks_taskresult_queues")).content.decode()
    assert 'data-worker="alive:10" data-status="live"' in page
    assert 'data-worker="gone:11" data-status="stale"' in page
    assert "done:12" not in page
    change = reverse("admin:django_tasks_taskresult_change", args=[task.pk])
    assert f'<a href="{change}">{task.task_name}[{task.task_id}]</a>' in page
    assert 'data-col="done">7<' in page and 'data-col="failed">2<' in page


@pytest.mark.worker
def test_a_burst_worker_leaves_a_stopped_row_with_its_counts(start_worker):
    for i in range(6):
        tasks.add.delay(i, i)
    tasks.fail.delay()
    worker = start_worker("--burst", "--concurrency", "2")
    assert worker.wait(60) == 0
    row = WorkerRecord.objects.get(pid=worker.pid)
    assert row.stopped is not None and row.pool == "prefork"
    assert (row.tasks_done, row.tasks_failed) == (7, 1)
