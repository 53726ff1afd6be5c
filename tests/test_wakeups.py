"""Waking up for new tasks and changed results: an idle worker and a waiting ``get()`` react
within milliseconds (LISTEN/NOTIFY on PostgreSQL, ``PRAGMA data_version`` on SQLite), not
after a polling interval."""

import statistics
import threading
import time

import pytest
from django.db import connection

from django_tasks.store.notify import CommitWatcher
from tests.conftest import wait_until
from tests.taskapp import tasks
from tests.taskapp.models import Run

sqlite_only = pytest.mark.skipif(
    "connection.vendor != 'sqlite'", reason="PRAGMA data_version is SQLite's"
)
postgresql_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="LISTEN/NOTIFY is PostgreSQL's"
)


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_group_send_notifies_each_queue_once_from_a_statement_trigger():
    """The insert trigger runs once per statement (a group's COPY of 1,000 rows), not once
    per row, and still notifies every queue the statement put tasks in, at commit."""
    from django_tasks import group
    from django_tasks.store.notify import TASKS_CHANNEL, open_listen_connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT tgtype & 1 FROM pg_trigger WHERE tgname = 'django_tasks_enqueued'")
        assert cursor.fetchall() == [(0,)]  # the ROW bit is clear: FOR EACH STATEMENT
    listener = open_listen_connection(TASKS_CHANNEL)
    try:
        group(tasks.add.s(i, i).set(queue=f"q{i % 2}") for i in range(10)).apply_async()
        tasks.add.apply_async((1, 1), queue="single")
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=3)]
        assert sorted(got) == ["q0", "q1", "single"]
    finally:
        listener.close()


@sqlite_only
@pytest.mark.django_db(transaction=True)
def test_the_commit_watcher_wakes_at_another_connections_commit():
    watcher = CommitWatcher()
    started = time.monotonic()
    assert watcher.wait(0.05) is False  # nothing committed
    assert time.monotonic() - started >= 0.05
    Run.objects.create(label="mine")  # this connection's own commit does not count
    assert watcher.wait(0.05) is False

    def commit_later():
        time.sleep(0.1)
        Run.objects.create(label="theirs")  # this thread's own connection
        connection.close()

    writer = threading.Thread(target=commit_later)
    started = time.monotonic()
    writer.start()
    assert watcher.wait(5.0) is True
    assert 0.09 < time.monotonic() - started < 1.0
    writer.join()


@sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_task_committed_just_before_a_loop_waits_ends_the_wait_at_once():
    """A task another connection commits after the loop's last look but before its wait
    starts must not be slept on: the wait took its starting point after that commit and
    slept out the 0.1 s poll (about one round trip in twenty on a busy table)."""
    from django_tasks.models import TaskResult
    from django_tasks.transports import get_transport

    transport = get_transport()
    transport.wait_for_tasks(["nothing-here"], 0.01)  # this connection is open and idle

    def send():
        tasks.add.delay(1, 1)
        connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    sender.join()
    queue = TaskResult.objects.get().queue
    started = time.monotonic()
    transport.wait_for_tasks([queue], 2.0)
    assert time.monotonic() - started < 0.5


@sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_task_committed_between_an_empty_claim_and_the_wait_ends_the_wait_at_once():
    from django_tasks.store.leases import Claim
    from django_tasks.transports import get_transport

    transport = get_transport()
    transport.wait_for_tasks(["nothing-here"], 0.01)
    claim = Claim(queues=["celery"], limit=10, token="t", lease_seconds=60, worker="w")
    assert transport.claim(claim) == []

    def send():
        tasks.add.apply_async((1, 1), queue="celery")
        connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    sender.join()
    started = time.monotonic()
    transport.wait_for_tasks(["celery"], 2.0)
    assert time.monotonic() - started < 0.5


@pytest.mark.worker
def test_a_waiting_get_keeps_the_databases_files_alone(start_worker):
    """The SQLite waiter reads a pragma: it never opens and closes SQLite's files itself,
    which would drop the process's POSIX locks on them and let another process reset the
    ``-shm`` file under this one (a bus error when SQLite next touches it)."""
    start_worker("--concurrency", "2")
    for round_ in range(5):
        results = [tasks.add.delay(i, round_) for i in range(20)]
        assert [r.get(timeout=30) for r in results] == [i + round_ for i in range(20)]
        connection.close()  # as a web process does after each request


@pytest.mark.worker
def test_an_idle_worker_answers_round_trips_within_milliseconds(start_worker):
    """Before the wal-index watch, an idle SQLite worker slept out its 0.1 s poll and
    ``get()`` its backoff: a round trip took about 85 ms at the median."""
    start_worker("--concurrency", "1")
    tasks.add.delay(1, 1).get(timeout=60)  # the worker is up and idle
    timings = []
    for i in range(15):
        t0 = time.perf_counter()
        assert tasks.add.delay(i, 1).get(timeout=10) == i + 1
        timings.append(time.perf_counter() - t0)
        time.sleep(0.02)  # idle between round trips
    assert statistics.median(timings) < 0.05, timings


@pytest.mark.worker
def test_a_stream_of_tasks_is_run_by_two_loops(start_worker):
    """Tasks sent one by one while a two-loop worker runs all succeed (claims linger while
    tasks stream in; none is left behind when the stream stops)."""
    start_worker("--concurrency", "2")
    tasks.add.delay(0, 0).get(timeout=60)
    results = [tasks.add.delay(i, i) for i in range(300)]
    wait_until(lambda: all(r.ready() for r in results[-5:]), timeout=60, what="the last tasks")
    assert [r.get(timeout=30) for r in results] == [i + i for i in range(300)]


@pytest.mark.django_db(transaction=True)
def test_a_result_stored_between_gets_read_and_its_wait_ends_the_wait_at_once(monkeypatch):
    """``get()`` reads the row, then waits for a change. A finish committed in between must
    end the wait at once, not after the wait's pause (up to ``interval``, 0.5 s by default):
    the SQLite waiter took its starting point only when the wait began, and on PostgreSQL a
    get() subscribed to its task only when it first waited."""
    if connection.vendor not in ("sqlite", "postgresql"):
        pytest.skip("elsewhere get() polls: there is no wake-up to miss")
    from django_tasks import result as result_module
    from django_tasks.models import TaskResult
    from django_tasks.result import AsyncResult

    res = tasks.add.delay(2, 3)
    read = AsyncResult._fetch
    finished = []

    def fetch_then_finish(self):
        row = read(self)
        if not finished:  # the first read sees PENDING; the task finishes before the wait

            def finish():
                TaskResult.objects.filter(task_id=self.id).update(state="SUCCESS", result=5)
                connection.close()

            writer = threading.Thread(target=finish)
            writer.start()
            writer.join()
            finished.append(True)
        return row

    monkeypatch.setattr(AsyncResult, "_fetch", fetch_then_finish)
    monkeypatch.setattr(result_module, "FIRST_POLL_INTERVAL", 2.0)
    if connection.vendor == "postgresql":  # the process listens already, as after any wait
        from django_tasks.store.notify import state_listener, waiter

        waiter().wait(tasks.add.delay(0, 0).id, 0.01)
        wait_until(lambda: state_listener().listening, 10, "the LISTEN connection")
    started = time.monotonic()
    assert res.get(timeout=10, interval=2.0) == 5
    assert time.monotonic() - started < 1.0
